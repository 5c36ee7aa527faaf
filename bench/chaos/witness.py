"""What reached the broker: a subscriber that records every device message, and a broker to kill.

`Witness` is a bare paho client in a persistent MQTT 5 session (clean start off, a session
that outlives an hour's disconnection), so that the broker keeps queueing QoS 1 messages for it
while it is away, and, with `PersistentBroker`, even across a broker crash: a message the
broker acknowledged to a device is never missed by the witness because it reconnected a moment
after the device did. It records each message's device, kind and sequence number; the
scenarios compare those with what the device numbered (the outbox) or what the control plane
stored (the database).

`PersistentBroker` is `MosquittoBroker` with persistence saved every second, and `kill()`:
SIGKILL, as a crash, which keeps only what the last save held.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from bench import BenchError
from shared.mqtt.broker import MosquittoBroker
from shared.mqtt.envelope import decode
from shared.mqtt.errors import EnvelopeError, TopicError
from shared.mqtt.topics import parse_topic

SESSION_EXPIRY_S = 3600
CONNECT_DEADLINE_S = 10.0
POLL_S = 0.02


class PersistentBroker(MosquittoBroker):
    """Mosquitto saving its sessions and queues every second; `kill()` crashes it."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, persistence=True)

    @property
    def database(self) -> Path:
        """The persistence file Mosquitto writes."""
        return self.directory / "mosquitto.db"

    def config(self) -> str:
        """The usual persistent configuration, saved every second rather than on exit only."""
        return super().config() + "autosave_interval 1\n"

    def kill(self) -> None:
        """SIGKILL the broker (a crash: no final save, no last wills sent) and reap it."""
        pid = self.pid
        if pid is None:
            raise BenchError("the broker is not running")
        os.kill(pid, signal.SIGKILL)
        self.stop()  # reaps the process and closes the log


@dataclass(frozen=True, slots=True)
class Seen:
    """One message the witness received."""

    device: str
    kind: str  # status, telemetry, events
    seq: int
    retained: bool
    at: float  # time.monotonic() on arrival
    state: str = ""  # an event's lifecycle state (`downloading` ... `active`), if it has one


class Witness:
    """A persistent-session subscriber recording every message on `topic_filter`."""

    def __init__(self, port: int, topic_filter: str, client_id: str) -> None:
        self.port = port
        self.topic_filter = topic_filter
        self.malformed = 0
        self.fresh_sessions = 0  # connections after the first that found no session
        self._seen: list[Seen] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self._connections = 0
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        # Paho's hint says int; any number of seconds works (as in shared.mqtt.client).
        self._client.reconnect_delay_set(min_delay=0.2, max_delay=0.5)  # type: ignore[arg-type]

    def start(self) -> None:
        """Connect and subscribe; BenchError if that takes longer than `CONNECT_DEADLINE_S`."""
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async("127.0.0.1", self.port, clean_start=False, properties=properties)
        self._client.loop_start()
        if not self._subscribed.wait(CONNECT_DEADLINE_S):
            self.stop()
            raise BenchError(f"the witness could not subscribe on port {self.port}")

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def seen(self) -> list[Seen]:
        """Every message received so far, in order of arrival."""
        with self._lock:
            return list(self._seen)

    def wait_for(
        self, enough: Callable[[list[Seen]], bool], deadline_s: float, what: str
    ) -> list[Seen]:
        """Poll until `enough(seen)` holds; return the messages then; BenchError at the deadline."""
        deadline = time.monotonic() + deadline_s
        while True:
            seen = self.seen()
            if enough(seen):
                return seen
            if time.monotonic() > deadline:
                raise BenchError(f"waited {deadline_s:.0f} s for {what}")
            time.sleep(POLL_S)

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            return
        self._connections += 1
        if flags.session_present:
            return  # the broker kept the subscription, and queued what came meanwhile
        if self._connections > 1:
            self.fresh_sessions += 1
        result, _ = client.subscribe(self.topic_filter, qos=1)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            client.disconnect()  # and paho connects again

    def _on_subscribe(self, *args: Any) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            kind = parse_topic(message.topic).kind
            envelope = decode(bytes(message.payload))
        except (EnvelopeError, TopicError):
            self.malformed += 1
            return
        state = envelope.payload.get("state") if kind == "events" else None
        seen = Seen(
            envelope.device_id,
            kind,
            envelope.seq,
            bool(message.retain),
            time.monotonic(),
            state if isinstance(state, str) else "",
        )
        with self._lock:
            self._seen.append(seen)


def duplicates(seen: list[Seen]) -> int:
    """Deliveries beyond the first of each (device, seq), retained replays and seq 0 left out."""
    counts = Counter((s.device, s.seq) for s in seen if s.seq > 0 and not s.retained)
    return sum(count - 1 for count in counts.values())
