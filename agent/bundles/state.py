"""What the agent must remember across restarts and crashes, in one atomically written file.

`<state_dir>/state.json` holds, per model, the committed version (what to serve after a
restart), the previously committed versions (for instant revert, newest first), and the
activation under way if any (with how many times it was attempted, so a version that crashes
the agent is given up after a few tries instead of crash-looping). It also holds the serial of
the last assignment accepted and the document itself (in the same atomic write, so they always
agree), so a replayed document is refused even after a restart.

Every change rewrites the whole file through `write_atomic` (temporary file, fsync, rename, fsync
of the directory): after a `kill -9` or a power cut the file is the old state or the new one.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from shared.atomic import PRIVATE, interrupted_writes, write_atomic

log = logging.getLogger(__name__)

STATE_FILE = "state.json"
FORMAT = 1


@dataclass(frozen=True, slots=True)
class InstalledVersion:
    """A verified bundle of one model version in the store."""

    version: int
    digest: str

    def as_json(self) -> dict[str, Any]:
        """A JSON object."""
        return {"version": self.version, "digest": self.digest}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> InstalledVersion:
        """Read what `as_json` wrote."""
        return cls(int(data["version"]), str(data["digest"]))


@dataclass(frozen=True, slots=True)
class Activation:
    """An activation under way: which bundle, how far it got, how often it was tried."""

    version: int
    digest: str
    phase: str
    attempts: int = 1

    def as_json(self) -> dict[str, Any]:
        """A JSON object."""
        return {
            "version": self.version,
            "digest": self.digest,
            "phase": self.phase,
            "attempts": self.attempts,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Activation:
        """Read what `as_json` wrote."""
        return cls(
            int(data["version"]),
            str(data["digest"]),
            str(data["phase"]),
            int(data.get("attempts", 1)),
        )


@dataclass(frozen=True, slots=True)
class ModelRecord:
    """The durable facts about one model."""

    active: InstalledVersion | None = None
    history: tuple[InstalledVersion, ...] = ()  # earlier committed versions, newest first
    activation: Activation | None = None
    failed: tuple[str, ...] = ()  # digests given up on, until a new assignment names them again

    def as_json(self) -> dict[str, Any]:
        """A JSON object."""
        return {
            "active": self.active.as_json() if self.active else None,
            "history": [v.as_json() for v in self.history],
            "activation": self.activation.as_json() if self.activation else None,
            "failed": list(self.failed),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelRecord:
        """Read what `as_json` wrote."""
        return cls(
            active=InstalledVersion.from_json(data["active"]) if data.get("active") else None,
            history=tuple(InstalledVersion.from_json(v) for v in data.get("history", [])),
            activation=(
                Activation.from_json(data["activation"]) if data.get("activation") else None
            ),
            failed=tuple(data.get("failed", [])),
        )

    def committed(self, version: InstalledVersion, keep: int) -> ModelRecord:
        """The record after `version` was committed; the old active joins the history."""
        history = [self.active, *self.history] if self.active else list(self.history)
        history = [v for v in history if v != version][: max(0, keep - 1)]
        return replace(self, active=version, history=tuple(history), activation=None)


@dataclass(frozen=True, slots=True)
class AgentState:
    """Everything in `state.json`."""

    assignment_serial: int = 0
    assignment_document: str = ""  # the accepted signed document, as received
    models: dict[str, ModelRecord] = field(default_factory=dict)

    def model(self, name: str) -> ModelRecord:
        """The record of a model (empty if the model was never installed)."""
        return self.models.get(name, ModelRecord())

    def with_model(self, name: str, record: ModelRecord) -> AgentState:
        """A copy with one model's record replaced."""
        return replace(self, models={**self.models, name: record})

    def as_json(self) -> dict[str, Any]:
        """A JSON object."""
        return {
            "format": FORMAT,
            "assignment_serial": self.assignment_serial,
            "assignment_document": self.assignment_document,
            "models": {name: record.as_json() for name, record in sorted(self.models.items())},
        }

    def referenced_digests(self) -> set[str]:
        """Bundles the state still needs: active, history and the activation under way."""
        digests: set[str] = set()
        for record in self.models.values():
            versions = [record.active, *record.history]
            digests.update(v.digest for v in versions if v is not None)
            if record.activation is not None:
                digests.add(record.activation.digest)
        return digests


class StateFile:
    """Loads and saves `AgentState` durably (blocking: use from a worker thread)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    def load(self) -> AgentState:
        """The saved state, or an empty one on first start."""
        if not self.path.exists():
            return AgentState()
        try:
            data = json.loads(self.path.read_bytes())
            if data.get("format") != FORMAT:
                raise ValueError(f"unknown state format {data.get('format')!r}")
            return AgentState(
                assignment_serial=int(data.get("assignment_serial", 0)),
                assignment_document=str(data.get("assignment_document", "")),
                models={k: ModelRecord.from_json(v) for k, v in data.get("models", {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            # Atomic writes make this a disk or operator problem, not a crash artefact; keep the
            # evidence and start empty rather than refuse to start.
            broken = self.path.with_suffix(".corrupt")
            self.path.replace(broken)
            log.error("state file unreadable (%s); moved to %s and starting empty", error, broken)
            return AgentState()

    def discard_interrupted_writes(self) -> int:
        """Delete the temporary files of saves a crash interrupted (at start, before any save).

        Each `kill -9` or power cut during a save leaves one; nothing else would ever remove
        them. Returns how many there were.
        """
        leftovers = interrupted_writes(self.path)
        for path in leftovers:
            path.unlink(missing_ok=True)
        if leftovers:
            log.info("removed %d temporary file(s) of interrupted state saves", len(leftovers))
        return len(leftovers)

    def save(self, state: AgentState) -> None:
        """Replace the state file atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(state.as_json(), indent=1).encode(), PRIVATE)
