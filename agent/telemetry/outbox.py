"""The durable outbox: what the agent has to say survives restarts and broker outages.

Messages wait in a SQLite file under the state directory until the broker acknowledges them
(QoS 1). Each gets the device's next sequence number when it is queued, so receivers can drop
duplicates by (device, sequence number) when a message is sent again after a lost PUBACK. The
queue is drained by priority (events, then status, then telemetry) and in order within one;
a newer status replaces one still waiting (only the latest presence matters). The queue is
bounded in messages and bytes: past the bound the least important, oldest messages are dropped,
and the drops are counted per kind and reported in the next telemetry.

Every method blocks (SQLite with fsync): call them from a worker thread.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

EVENT, STATUS, TELEMETRY = 0, 1, 2
KINDS = {EVENT: "events", STATUS: "status", TELEMETRY: "telemetry"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    priority INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    retain INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_order ON messages (priority, id);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """A queued message."""

    id: int
    priority: int
    seq: int
    topic: str
    payload: bytes
    retain: bool


@dataclass(frozen=True, slots=True)
class OutboxStats:
    """How full the outbox is and what it had to drop (cumulative, since the file was made)."""

    queued: int
    queued_bytes: int
    dropped: dict[str, int]


class Outbox:
    """A bounded, prioritised, persistent message queue."""

    def __init__(self, path: Path, max_messages: int = 10_000, max_bytes: int = 16 << 20) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a queued message survives a power cut
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def add(self, priority: int, topic: str, retain: bool, build: Callable[[int], bytes]) -> int:
        """Queue a message built for the next sequence number; return that number."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            seq = self._counter("seq") + 1
            self._set_counter("seq", seq)
            payload = build(seq)
            if priority == STATUS:  # only the newest presence matters
                self._db.execute(
                    "DELETE FROM messages WHERE priority = ? AND topic = ?", (STATUS, topic)
                )
            self._db.execute(
                "INSERT INTO messages (priority, seq, topic, payload, retain) VALUES (?,?,?,?,?)",
                (priority, seq, topic, payload, int(retain)),
            )
            self._enforce_bounds()
        return seq

    def peek(self, limit: int = 100) -> list[Outgoing]:
        """The next messages to send, most important and oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, priority, seq, topic, payload, retain FROM messages "
                "ORDER BY priority, id LIMIT ?",
                (limit,),
            ).fetchall()
        return [Outgoing(r[0], r[1], r[2], r[3], bytes(r[4]), bool(r[5])) for r in rows]

    def ack(self, *message_ids: int) -> None:
        """Forget messages the broker acknowledged (one transaction, so one fsync)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in message_ids])

    def refuse(self, message_id: int) -> None:
        """Drop a message the broker keeps refusing (say an ACL or size refusal), counting it."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
            self._set_counter("dropped_refused", self._counter("dropped_refused") + 1)

    def stats(self) -> OutboxStats:
        """Queue size and drop counters."""
        with self._lock:
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages"
            ).fetchone()
            dropped = {kind: self._counter(f"dropped_{kind}") for kind in KINDS.values()}
            dropped["refused"] = self._counter("dropped_refused")
        return OutboxStats(int(count), int(size), dropped)

    def _enforce_bounds(self) -> None:
        """Drop the least important, oldest messages until the queue fits its bounds."""
        while True:
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages"
            ).fetchone()
            if count <= self.max_messages and size <= self.max_bytes:
                return
            victim = self._db.execute(
                "SELECT id, priority FROM messages ORDER BY priority DESC, id LIMIT 1"
            ).fetchone()
            self._db.execute("DELETE FROM messages WHERE id = ?", (victim[0],))
            name = f"dropped_{KINDS.get(victim[1], 'other')}"
            self._set_counter(name, self._counter(name) + 1)

    def _counter(self, name: str) -> int:
        row = self._db.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    def _set_counter(self, name: str, value: int) -> None:
        self._db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value",
            (name, value),
        )
