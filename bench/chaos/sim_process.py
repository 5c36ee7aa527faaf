"""`python -m bench.chaos.sim_process SIM-ARGS`: `edgefleet sim` that logs its devices' errors.

The simulator logs a failed assignment poll (a refused connection, an HTTP 5xx) at DEBUG,
which `edgefleet --log-level DEBUG` would bury under paho's packet traces. This runs the very
same command with the simulator's own logger at DEBUG and everything else at INFO, so the
cp-restart scenario can count the errors the devices saw while the control plane or its
database was down (`POLL_FAILED` lines in the log).
"""

from __future__ import annotations

import logging
import sys

from shared.cli import main

POLL_FAILED = "assignment poll failed"  # control_plane.sim's message for a failed poll
NOT_PUBLISHED = "not published"  # ... and for a message the broker did not take


def run(argv: list[str]) -> int:
    """Configure logging, then run `edgefleet sim ARGV`."""
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("control_plane.sim").setLevel(logging.DEBUG)
    return main(["sim", *argv])  # its basicConfig does nothing: the root has a handler now


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
