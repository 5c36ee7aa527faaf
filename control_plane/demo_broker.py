"""`python -m control_plane.demo_broker --port N`: the embedded amqtt broker as a process.

The demo uses it when Mosquitto is not installed. A process of its own (not a thread of the
demo) so that the demo stops it like every other child, in order, and it dies with the demo.
It listens on 127.0.0.1 only and speaks MQTT 3.1.1 (see `shared.mqtt.broker.EmbeddedBroker`).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys

from shared.mqtt.broker import EmbeddedBroker
from shared.mqtt.errors import BrokerError


def main() -> int:
    """Serve until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(message)s")
    # Blocked before the broker's thread starts, which inherits the mask: only sigwait sees them.
    stop_signals = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signals)
    broker = EmbeddedBroker(args.port)
    try:
        broker.start()
    except BrokerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    received = signal.sigwait(stop_signals)
    logging.info("stopping on %s", signal.Signals(received).name)
    broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
