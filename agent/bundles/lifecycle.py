"""The life of one model version on a device, and the log of every step it takes.

An activation attempt of a bundle moves through these states; the arrows are the only
transitions allowed (`ALLOWED`), and each one is appended to the event log:

    DOWNLOADING -> VERIFYING -> STAGED -> VALIDATING -> WARMING -> PROBATION -> ACTIVE
         |             |           |           |            |           |          |
         +-------------+-----------+-----------+------------+-> FAILED  +-> REVERTED
                                                                                   +-> RETIRED

- DOWNLOADING: fetching the archive into the content-addressed store (skipped when present).
- VERIFYING: checking the release signature and every file's hash; extracting safely.
- STAGED: extracted and verified on disk, not loaded.
- VALIDATING: loaded on the backend the selection chose; the golden vectors must match.
- WARMING: running every batch size the manifest declares, so the first real request is fast.
- PROBATION: serving; a local gate compares its errors and latency with the previous version.
- ACTIVE: committed; survives restarts. RETIRED: a newer version was committed (kept for revert).
- FAILED: the attempt stopped with a reason; the previous version kept serving.
- REVERTED: probation failed (or an operator asked), and the previous version serves again.

The terminal states (ACTIVE, RETIRED, FAILED, REVERTED) may start a new attempt (DOWNLOADING),
which is how a failed version is retried after a new assignment or an operator rollback
re-activates a retired one.
"""

from __future__ import annotations

import enum
import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from shared.atomic import append_durably


class VersionState(enum.Enum):
    """Where an activation attempt of a model version stands."""

    DOWNLOADING = "downloading"
    VERIFYING = "verifying"
    STAGED = "staged"
    VALIDATING = "validating"
    WARMING = "warming"
    PROBATION = "probation"
    ACTIVE = "active"
    RETIRED = "retired"
    FAILED = "failed"
    REVERTED = "reverted"


S = VersionState
TERMINAL = frozenset({S.ACTIVE, S.RETIRED, S.FAILED, S.REVERTED})
ALLOWED: dict[VersionState | None, frozenset[VersionState]] = {
    None: frozenset({S.DOWNLOADING}),
    S.DOWNLOADING: frozenset({S.VERIFYING, S.FAILED}),
    S.VERIFYING: frozenset({S.STAGED, S.FAILED}),
    S.STAGED: frozenset({S.VALIDATING, S.FAILED}),
    S.VALIDATING: frozenset({S.WARMING, S.FAILED}),
    S.WARMING: frozenset({S.PROBATION, S.FAILED}),
    S.PROBATION: frozenset({S.ACTIVE, S.REVERTED}),
    S.ACTIVE: frozenset({S.RETIRED, S.REVERTED, S.DOWNLOADING}),
    S.RETIRED: frozenset({S.DOWNLOADING}),
    S.FAILED: frozenset({S.DOWNLOADING}),
    S.REVERTED: frozenset({S.DOWNLOADING}),
}


class IllegalTransition(AssertionError):
    """A programming error: a transition the state machine does not allow."""


@dataclass(frozen=True, slots=True)
class LifecycleEvent:
    """One transition of one model version, as kept in the event log."""

    time: float
    model: str
    version: int
    digest: str
    previous: str | None
    state: str
    reason: str = ""
    details: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        """A JSON object (what the MQTT reporter will publish)."""
        return asdict(self)


class EventLog:
    """An append-only JSON-lines file of lifecycle events, fsynced per event."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, event: LifecycleEvent) -> None:
        """Record one event durably (blocking: call from a worker thread)."""
        line = json.dumps(event.as_json(), sort_keys=True).encode()
        # A crash (or a full disk) mid-append leaves a torn last line: end it first, or the next
        # event, such as the one saying what the restart did, would be glued to it and lost.
        if _torn(self.path):
            line = b"\n" + line
        append_durably(self.path, line)

    def read(self) -> Iterator[LifecycleEvent]:
        """Every complete event in order; a line torn by a crash is skipped."""
        if not self.path.exists():
            return
        with self.path.open("rb") as handle:
            for line in handle:
                try:
                    yield LifecycleEvent(**json.loads(line))
                except (ValueError, TypeError):
                    continue


def _torn(path: Path) -> bool:
    """True when the file's last line has no newline (a missing or empty file is not torn)."""
    try:
        with path.open("rb") as handle:
            handle.seek(-1, os.SEEK_END)
            return handle.read(1) != b"\n"
    except OSError:
        return False


def check_transition(previous: VersionState | None, state: VersionState) -> None:
    """Raise IllegalTransition unless `previous -> state` is allowed."""
    if state not in ALLOWED[previous]:
        name = previous.value if previous else "(none)"
        raise IllegalTransition(f"transition {name} -> {state.value} is not allowed")


def make_event(
    model: str,
    version: int,
    digest: str,
    previous: VersionState | None,
    state: VersionState,
    reason: str = "",
    details: dict[str, Any] | None = None,
) -> LifecycleEvent:
    """Validate a transition and describe it as an event."""
    check_transition(previous, state)
    return LifecycleEvent(
        time=time.time(),
        model=model,
        version=version,
        digest=digest,
        previous=previous.value if previous else None,
        state=state.value,
        reason=reason,
        details=details,
    )
