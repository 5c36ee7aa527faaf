"""Envelopes: encoding, strict decoding with the field at fault, and receivers' counters."""

from __future__ import annotations

import json
import logging

import pytest

from shared.mqtt.envelope import (
    MAX_ENVELOPE_BYTES,
    SCHEMA_COMMAND,
    SCHEMA_EVENT,
    SCHEMA_STATUS,
    SCHEMA_TELEMETRY,
    Envelope,
    EnvelopeStats,
    check_topic,
    decode,
    encode,
)
from shared.mqtt.errors import EnvelopeError
from shared.mqtt.topics import device_topic, group_command_topic

VALID = {
    "schema": SCHEMA_TELEMETRY,
    "device_id": "edge-042",
    "seq": 17,
    "time": 1767225600.25,
    "payload": {"models": {"mlp": {"p50_ms": 1.5}}, "note": "héllo"},
}


def raw(**changes: object) -> bytes:
    """The valid envelope's JSON with some fields replaced (None value: field removed)."""
    fields = {k: v for k, v in (VALID | changes).items() if v is not None}
    return json.dumps(fields).encode()


def test_round_trip_is_compact_json() -> None:
    envelope = Envelope(**VALID)  # type: ignore[arg-type]
    data = encode(envelope)
    assert data == json.dumps(VALID, separators=(",", ":"), ensure_ascii=False).encode()
    assert decode(data) == envelope


def test_integral_time_is_a_float() -> None:
    assert decode(raw(time=1700000000)).time == 1700000000.0


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"not json", "json"),
        (b"\xff\xfe", "json"),
        (b'{"schema": 1, "schema": 2}', "json"),  # duplicate keys
        (raw(time=float("nan")), "json"),  # NaN is not JSON
        (b"[1, 2]", "envelope"),
        (raw(schema="edgefleet.telemetry/2"), "schema"),
        (raw(schema=None), "schema"),
        (raw(device_id="a/b"), "device_id"),
        (raw(device_id=42), "device_id"),
        (raw(seq=-1), "seq"),
        (raw(seq=True), "seq"),
        (raw(seq=1.5), "seq"),
        (raw(seq="1"), "seq"),
        (raw(time=-1), "time"),
        (raw(time="now"), "time"),
        (raw(payload=[1, 2]), "payload"),
        (raw(payload=None), "payload"),
        (raw(extra=1), "extra"),
        (b"{" + b" " * MAX_ENVELOPE_BYTES + b"}", "size"),
    ],
)
def test_malformed_envelopes_name_the_field(data: bytes, field: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        decode(data)
    assert caught.value.field == field


def test_encode_refuses_what_decode_would() -> None:
    with pytest.raises(EnvelopeError) as caught:
        Envelope(SCHEMA_STATUS, "d", -1, 0.0, {})
    assert caught.value.field == "seq"
    too_big = Envelope(SCHEMA_EVENT, "d", 0, 0.0, {"blob": "x" * MAX_ENVELOPE_BYTES})
    with pytest.raises(EnvelopeError, match="size"):
        encode(too_big)
    with pytest.raises(EnvelopeError, match="payload"):
        encode(Envelope(SCHEMA_EVENT, "d", 0, 0.0, {"nan": float("nan")}))


def test_check_topic_ties_schema_and_publisher_to_the_topic() -> None:
    telemetry = decode(raw())
    check_topic(telemetry, device_topic("edge-042", "telemetry"))
    with pytest.raises(EnvelopeError, match="published on the topic of 'edge-007'"):
        check_topic(telemetry, device_topic("edge-007", "telemetry"))
    with pytest.raises(EnvelopeError) as caught:
        check_topic(telemetry, device_topic("edge-042", "status"))
    assert caught.value.field == "schema"
    with pytest.raises(EnvelopeError) as caught:
        check_topic(telemetry, "some/other/topic")
    assert caught.value.field == "topic"
    # Commands come from the control plane: the envelope names it, not the addressee.
    command = Envelope(SCHEMA_COMMAND, "control-plane", 3, 1.0, {})
    check_topic(command, device_topic("edge-042", "cmd"))
    check_topic(command, group_command_topic("line-1"))


def test_stats_count_and_log_rejections_without_raising(caplog: pytest.LogCaptureFixture) -> None:
    stats = EnvelopeStats()
    topic = device_topic("edge-042", "telemetry")
    assert stats.accept(topic, raw()) == decode(raw())
    with caplog.at_level(logging.DEBUG, logger="shared.mqtt.envelope"):
        for data in (b"garbage", b"\x00" * 10, raw(seq=-5), raw(seq=-6), raw(device_id="other")):
            assert stats.accept(topic, data) is None
    assert stats.accepted == 1
    assert stats.rejected == {"json": 2, "seq": 2, "device_id": 1}
    assert stats.rejected_total == 5
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3  # the first of each reason; repeats go to DEBUG
