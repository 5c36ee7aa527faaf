"""The agent's outbox, watched from outside: read-only samples of its SQLite file, in a thread.

The outbox (`agent.telemetry.outbox`) numbers every message when it is queued and deletes it
when the broker acknowledged it, so its file says, at any moment, how many messages wait, how
big they are on disk, the last sequence number handed out and what the bound dropped. The
probe keeps every sample, so a scenario can tell when the backlog built up and when it was
gone, and which numbers belonged to status messages (a newer status replaces one still
waiting: a gap in the numbers that is not a loss).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from agent.telemetry.outbox import KINDS, STATUS

POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class OutboxSample:
    """One look at the outbox file."""

    at: float  # time.monotonic()
    queued: int
    queued_bytes: int  # payload bytes waiting
    disk_bytes: int  # the database file and its write-ahead log
    last_seq: int  # the last sequence number handed out
    dropped: int  # messages the bound dropped or the broker refused, ever


@dataclass
class OutboxProbe:
    """Samples the outbox at `path` every `POLL_S` until stopped."""

    path: Path
    samples: list[OutboxSample] = field(default_factory=list)
    status_seqs: set[int] = field(default_factory=set)  # every status number seen waiting
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def read(self) -> OutboxSample | None:
        """One sample now; None while the agent has not created the file yet."""
        if not self.path.exists():
            return None
        connect = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5.0)
        with contextlib.closing(connect) as db:
            queued, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM messages"
            ).fetchone()
            counters = dict(db.execute("SELECT name, value FROM counters").fetchall())
            statuses = db.execute("SELECT seq FROM messages WHERE priority = ?", (STATUS,))
            self.status_seqs.update(seq for (seq,) in statuses.fetchall())
        dropped = sum(int(counters.get(f"dropped_{kind}", 0)) for kind in KINDS.values())
        dropped += int(counters.get("dropped_refused", 0))
        disk = sum(
            part.stat().st_size
            for part in (self.path, self.path.with_name(self.path.name + "-wal"))
            if part.exists()
        )
        return OutboxSample(
            time.monotonic(), int(queued), int(size), disk, int(counters.get("seq", 0)), dropped
        )

    def start(self) -> None:
        """Sample in a background thread."""
        self._thread = threading.Thread(target=self._run, name="outbox-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling (after one last sample)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._sample()

    def latest(self) -> OutboxSample | None:
        """The newest sample."""
        return self.samples[-1] if self.samples else None

    def peak(self, since: float) -> OutboxSample | None:
        """The sample with the most messages waiting at or after `since`."""
        later = [s for s in self.samples if s.at >= since]
        return max(later, key=lambda s: (s.queued, s.disk_bytes), default=None)

    def wait_empty(self, since: float, deadline_s: float) -> float | None:
        """Poll until a sample at or after `since` saw the outbox empty; when (or None)."""
        deadline = time.monotonic() + deadline_s
        while (empty := self.empty_after(since)) is None and time.monotonic() < deadline:
            time.sleep(POLL_S)
        return empty

    def empty_after(self, since: float) -> float | None:
        """When the outbox was first seen empty at or after `since` (time.monotonic())."""
        return next((s.at for s in self.samples if s.at >= since and s.queued == 0), None)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._sample()

    def _sample(self) -> None:
        try:
            sample = self.read()
        except (sqlite3.Error, OSError):
            return  # busy, or a file of the database mid-change: the next poll reads it
        if sample is not None:
            self.samples.append(sample)
