"""The versioned JSON envelope every EdgeFleet MQTT message travels in.

    {"schema": "edgefleet.telemetry/1", "device_id": "edge-042", "seq": 17,
     "time": 1767225600.25, "payload": {...}}

`schema` names the payload's format and version; a receiver refuses schemas it does not know,
so a format change is a new schema name, never a silent reinterpretation. `device_id` is the
publisher: the device for status, telemetry and events, the control plane's id for commands.
`seq` increases by one per message of a publisher (the ingest deduplicates on it, since QoS 1
may deliver twice). `time` is the publisher's Unix time. The payload is an object.

`decode` refuses, with an `EnvelopeError` naming the field: more than 256 KiB, bytes that are not
strict JSON (duplicate keys, NaN), a missing, extra or mistyped field, an unknown schema, a
negative sequence number, a payload that is not an object. `EnvelopeStats.accept` is what
receivers call: it decodes, checks the envelope against its topic, and counts and logs a
rejected message instead of raising, so one bad publisher cannot crash a subscriber.
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shared.canonical import parse_json
from shared.mqtt.errors import EnvelopeError, TopicError
from shared.mqtt.topics import check_id, parse_topic

log = logging.getLogger(__name__)

SCHEMA_STATUS = "edgefleet.status/1"
SCHEMA_TELEMETRY = "edgefleet.telemetry/1"
SCHEMA_EVENT = "edgefleet.event/1"
SCHEMA_COMMAND = "edgefleet.command/1"
SCHEMAS = (SCHEMA_STATUS, SCHEMA_TELEMETRY, SCHEMA_EVENT, SCHEMA_COMMAND)
# The schema each topic kind carries.
SCHEMA_BY_KIND = {
    "status": SCHEMA_STATUS,
    "telemetry": SCHEMA_TELEMETRY,
    "events": SCHEMA_EVENT,
    "cmd": SCHEMA_COMMAND,
}
MAX_ENVELOPE_BYTES = 256 * 1024
_FIELDS = ("schema", "device_id", "seq", "time", "payload")


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message: schema name, publisher id, sequence number, Unix time and payload."""

    schema: str
    device_id: str
    seq: int
    time: float
    payload: dict[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.schema, str) or self.schema not in SCHEMAS:
            raise EnvelopeError("schema", f"unknown schema {_show(self.schema)}")
        if not isinstance(self.device_id, str):
            raise EnvelopeError("device_id", f"expected a string, found {_show(self.device_id)}")
        try:
            check_id(self.device_id)
        except TopicError as exc:
            raise EnvelopeError("device_id", str(exc)) from None
        if isinstance(self.seq, bool) or not isinstance(self.seq, int) or self.seq < 0:
            raise EnvelopeError("seq", f"expected an integer >= 0, found {_show(self.seq)}")
        if (
            isinstance(self.time, bool)
            or not isinstance(self.time, int | float)
            or not math.isfinite(self.time)
            or self.time < 0
        ):
            raise EnvelopeError("time", f"expected a finite number >= 0, found {_show(self.time)}")
        if not isinstance(self.payload, dict):
            raise EnvelopeError("payload", f"expected an object, found {_show(self.payload)}")


def encode(envelope: Envelope) -> bytes:
    """Compact JSON of an envelope; raise `EnvelopeError` if the payload is not JSON or too big."""
    fields = {name: getattr(envelope, name) for name in _FIELDS}
    try:
        text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise EnvelopeError("payload", f"not JSON: {exc}") from None
    data = text.encode("utf-8")
    if len(data) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError("size", f"{len(data)} bytes, more than {MAX_ENVELOPE_BYTES}")
    return data


def decode(data: bytes) -> Envelope:
    """Parse and validate an envelope; raise `EnvelopeError` naming the field at fault."""
    if len(data) > MAX_ENVELOPE_BYTES:
        raise EnvelopeError("size", f"{len(data)} bytes, more than {MAX_ENVELOPE_BYTES}")
    try:
        value = parse_json(data)
    except ValueError as exc:
        raise EnvelopeError("json", str(exc)) from None
    if not isinstance(value, dict):
        raise EnvelopeError("envelope", f"expected an object, found {_show(value)}")
    for name in _FIELDS:
        if name not in value:
            raise EnvelopeError(name, "missing")
    extra = sorted(set(value) - set(_FIELDS))
    if extra:
        raise EnvelopeError(extra[0], "unknown field")
    time = value["time"]
    return Envelope(
        schema=value["schema"],
        device_id=value["device_id"],
        seq=value["seq"],
        # An integral time arrives as an int; the dataclass type says float.
        time=float(time) if isinstance(time, int) and not isinstance(time, bool) else time,
        payload=value["payload"],
    )


def check_topic(envelope: Envelope, topic: str) -> None:
    """Raise `EnvelopeError` unless the envelope belongs on `topic` (schema and publisher)."""
    try:
        parsed = parse_topic(topic)
    except TopicError as exc:
        raise EnvelopeError("topic", str(exc)) from None
    expected = SCHEMA_BY_KIND[parsed.kind]
    if envelope.schema != expected:
        raise EnvelopeError("schema", f"{envelope.schema!r} on a {parsed.kind!r} topic")
    # What a device publishes must name that device: the broker's ACL vouches for the topic,
    # not for what the publisher wrote inside the message.
    if parsed.kind != "cmd" and envelope.device_id != parsed.ident:
        raise EnvelopeError(
            "device_id", f"{envelope.device_id!r} published on the topic of {parsed.ident!r}"
        )


@dataclass
class EnvelopeStats:
    """Counts of accepted and rejected messages (rejected by the field at fault)."""

    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    @property
    def rejected_total(self) -> int:
        """How many messages were rejected, for any reason."""
        return sum(self.rejected.values())

    def accept(self, topic: str, data: bytes) -> Envelope | None:
        """Decode and check a received message; count and log it and return None if invalid."""
        try:
            envelope = decode(data)
            check_topic(envelope, topic)
        except EnvelopeError as exc:
            self.rejected[exc.field] += 1
            count = self.rejected[exc.field]
            # The first of each kind is worth a warning; a flood of them is not worth a log flood.
            level = logging.WARNING if count == 1 or count % 1000 == 0 else logging.DEBUG
            log.log(
                level,
                "rejected a message on %s (%d so far for %s): %s",
                topic,
                count,
                exc.field,
                exc,
            )
            return None
        self.accepted += 1
        return envelope


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
