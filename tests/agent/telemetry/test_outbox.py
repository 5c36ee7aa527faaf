"""The durable outbox: order, priorities, persistence, bounds and counted drops."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from agent.telemetry.outbox import EVENT, STATUS, TELEMETRY, Outbox


def payload(text: str) -> Callable[[int], bytes]:
    """A message body that shows the sequence number it was given."""
    return lambda seq: f"{text}#{seq}".encode()


def fixed(text: str) -> Callable[[int], bytes]:
    """A message body that ignores its sequence number."""
    return lambda seq: text.encode()


def test_drains_by_priority_then_in_order(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.add(TELEMETRY, "t", False, payload("t1"))
    outbox.add(EVENT, "e", False, payload("e1"))
    outbox.add(STATUS, "s", True, payload("s1"))
    outbox.add(EVENT, "e", False, payload("e2"))
    outbox.add(TELEMETRY, "t", False, payload("t2"))
    sent = [m.payload.decode() for m in outbox.peek()]
    assert sent == ["e1#2", "e2#4", "s1#3", "t1#1", "t2#5"]
    assert [m.retain for m in outbox.peek()][2] is True


def test_a_newer_status_replaces_a_waiting_one(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.add(STATUS, "s", True, lambda seq: b"online")
    outbox.add(STATUS, "s", True, lambda seq: b"online, v2")
    assert [m.payload for m in outbox.peek()] == [b"online, v2"]


def test_messages_and_sequence_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "outbox.sqlite3"
    first = Outbox(path)
    for i in range(3):
        first.add(EVENT, "e", False, fixed(str(i)))
    first.ack(first.peek(1)[0].id)
    first.close()
    again = Outbox(path)
    assert [m.payload for m in again.peek()] == [b"1", b"2"]
    assert again.add(EVENT, "e", False, lambda seq: b"x") == 4, "sequence numbers never repeat"


def test_bound_drops_least_important_oldest_first_and_counts(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_messages=3)
    outbox.add(EVENT, "e", False, lambda seq: b"event")
    for i in range(4):
        outbox.add(TELEMETRY, "t", False, fixed(f"t{i}"))
    assert [m.payload for m in outbox.peek()] == [b"event", b"t2", b"t3"]
    stats = outbox.stats()
    assert stats.queued == 3
    assert stats.dropped == {"events": 0, "status": 0, "telemetry": 2, "refused": 0}


def test_byte_bound(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3", max_bytes=250)
    for _ in range(5):
        outbox.add(TELEMETRY, "t", False, lambda seq: b"x" * 100)
    stats = outbox.stats()
    assert stats.queued_bytes <= 250
    assert stats.dropped["telemetry"] == 3


def test_a_refused_message_is_dropped_and_counted(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite3")
    outbox.add(EVENT, "e", False, fixed("refused"))
    outbox.add(EVENT, "e", False, fixed("fine"))
    outbox.refuse(outbox.peek(1)[0].id)
    assert [m.payload for m in outbox.peek()] == [b"fine"]
    assert outbox.stats().dropped["refused"] == 1
