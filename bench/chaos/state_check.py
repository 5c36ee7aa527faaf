"""Is what a crash left in an agent's state directory consistent? Read-only checks.

`inspect_state` reads `state.json` without the agent's side effects (`StateFile.load` moves an
unreadable file aside; this only reports it), checks that every installed version's archive is
in the store, hashes to its digest and carries a valid release signature, that an activation
under way names a known bundle and phase, and counts what is left over: partial downloads,
archives and extractions no version refers to, temporary files of interrupted atomic writes,
and event-log lines torn by a crash (which `agent.bundles.lifecycle.EventLog` documents and
skips). The scenario decides which leftovers are within bounds at which moment.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.bundles.lifecycle import LifecycleEvent, VersionState
from agent.bundles.state import FORMAT, STATE_FILE, ModelRecord
from agent.bundles.store import sha256_file
from agent.runner import EVENTS_FILE
from shared.atomic import interrupted_writes
from shared.bundle import verify_bundle
from shared.errors import EdgeFleetError
from shared.keylist import TrustStore

# The phases an activation record may be in (it is cleared on commit, failure or revert).
UNDER_WAY = frozenset(s.value for s in VersionState) - {"active", "retired", "failed", "reverted"}


@dataclass
class Inspection:
    """What a state directory holds, and what is wrong with it."""

    record: ModelRecord | None = None
    problems: list[str] = field(default_factory=list)
    partial: dict[str, int] = field(default_factory=dict)  # digest -> bytes downloaded
    stray_blobs: list[str] = field(default_factory=list)  # archives nothing refers to
    stray_extractions: list[str] = field(default_factory=list)  # incl. temporary ones
    temporary_files: list[str] = field(default_factory=list)  # of interrupted state saves
    other_temporary_files: list[str] = field(default_factory=list)  # of other atomic writes
    torn_lines: int = 0
    events: list[LifecycleEvent] = field(default_factory=list)

    @property
    def consistent(self) -> bool:
        """True when nothing is wrong (leftovers are judged by the caller)."""
        return not self.problems


def inspect_state(
    state_dir: Path, model: str, trust: TrustStore, versions: Mapping[str, int]
) -> Inspection:
    """Check `state_dir` of an agent serving `model`; `versions` maps known digests to versions."""
    found = Inspection()
    if (state_dir / "state.corrupt").exists():
        found.problems.append("a state file was found unreadable and moved aside (state.corrupt)")
    try:
        data = json.loads((state_dir / STATE_FILE).read_bytes())
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}")
        found.record = ModelRecord.from_json(data["models"][model])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        found.problems.append(f"state.json is unreadable or has no {model}: {error!r}")
        return found
    _check_record(found, found.record, state_dir / "bundles", trust, versions)
    _count_leftovers(found, found.record, state_dir)
    _read_events(found, state_dir / EVENTS_FILE)
    return found


def _check_record(
    found: Inspection,
    record: ModelRecord,
    store: Path,
    trust: TrustStore,
    versions: Mapping[str, int],
) -> None:
    if record.active is None:
        found.problems.append("no committed version")
    for installed in (record.active, *record.history):
        if installed is None:
            continue
        name = f"v{installed.version} ({installed.digest[:12]})"
        if versions.get(installed.digest) != installed.version:
            found.problems.append(f"{name} is not one of the releases")
            continue
        blob = store / "blobs" / f"{installed.digest}.bundle"
        if not blob.is_file():
            found.problems.append(f"{name} is installed but its archive is not in the store")
        elif sha256_file(blob) != installed.digest:
            found.problems.append(f"{name}: the archive in the store does not hash to its digest")
        else:
            try:
                verify_bundle(blob, trust)
            except EdgeFleetError as error:
                found.problems.append(f"{name}: the archive does not verify: {error}")
    activation = record.activation
    if activation is not None:
        if versions.get(activation.digest) != activation.version:
            found.problems.append(f"the activation under way names an unknown bundle {activation}")
        if activation.phase not in UNDER_WAY or activation.attempts < 1:
            found.problems.append(f"the activation under way is malformed: {activation}")


def _count_leftovers(found: Inspection, record: ModelRecord, state_dir: Path) -> None:
    store = state_dir / "bundles"
    referenced = {v.digest for v in (record.active, *record.history) if v is not None}
    if record.activation is not None:
        referenced.add(record.activation.digest)
    for part in sorted((store / "partial").glob("*.part")):
        found.partial[part.stem] = part.stat().st_size
    found.stray_blobs = sorted(
        p.stem for p in (store / "blobs").glob("*.bundle") if p.stem not in referenced
    )
    models = store / "models"
    found.stray_extractions = sorted(
        p.name for p in (models.iterdir() if models.is_dir() else ()) if p.name not in referenced
    )
    found.temporary_files = [p.name for p in interrupted_writes(state_dir / STATE_FILE)]
    others = {p.name for p in state_dir.glob(".*.tmp")} - set(found.temporary_files)
    found.other_temporary_files = sorted(others)


def _read_events(found: Inspection, path: Path) -> None:
    if not path.exists():
        return
    for line in path.read_bytes().splitlines():
        try:
            found.events.append(LifecycleEvent(**json.loads(line)))
        except (ValueError, TypeError):
            found.torn_lines += 1
