"""What the control plane's database holds after the faults: duplicates, losses, desired state.

Duplicates are counted by each table's natural key (the keys the ingest and the rollout code
rely on to keep a redelivery or a replayed step single): telemetry samples by (device, seq,
model, version), events by (device, seq), rollout members by (rollout, device), waves by
(rollout, index), and `rollout.create` audit entries per rollout. Losses compare what the
witness saw the devices publish with what was stored: every event (device, seq) and every
telemetry message that carried a model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from bench.chaos.witness import Seen
from control_plane.db.engine import create_engine_for, open_session

DUPLICATES = {
    "telemetry samples": "SELECT device_id, seq, model, version FROM telemetry_samples "
    "GROUP BY device_id, seq, model, version HAVING COUNT(*) > 1",
    "events": "SELECT device_id, seq FROM device_events GROUP BY device_id, seq "
    "HAVING COUNT(*) > 1",
    "rollout members": "SELECT rollout_id, device_id FROM rollout_devices "
    "GROUP BY rollout_id, device_id HAVING COUNT(*) > 1",
    "rollout waves": 'SELECT rollout_id, "index" FROM rollout_waves '
    'GROUP BY rollout_id, "index" HAVING COUNT(*) > 1',
    "rollout.create audit entries": "SELECT target FROM audit_log "
    "WHERE action = 'rollout.create' GROUP BY target HAVING COUNT(*) > 1",
}


@dataclass(frozen=True)
class StoreCheck:
    """The database against what the devices published."""

    duplicates: dict[str, int]  # natural keys stored more than once, per table
    events_published: int
    events_lost: tuple[Seen, ...]  # published (the witness saw them), never stored
    telemetry_published: int
    telemetry_lost: tuple[Seen, ...]
    repeated_activations: int  # (device, version) pairs with more than one `active` event
    wrong_desired: tuple[str, ...]  # devices whose desired MLP is not the last version

    @property
    def duplicate_rows(self) -> int:
        """All duplicated keys together."""
        return sum(self.duplicates.values())


async def check_store(
    url: str, seen: Sequence[Seen], prefix: str, model: str, digest: str
) -> StoreCheck:
    """Query the database at `url`; `seen` is the witness's record of the devices' messages."""
    ours = [s for s in seen if s.device.startswith(f"{prefix}-") and s.seq > 0]
    events = _first(s for s in ours if s.kind == "events")
    telemetry = _first(s for s in ours if s.kind == "telemetry")
    engine = create_engine_for(url)
    try:
        async with open_session(engine) as session:
            duplicates = {}
            for name, query in DUPLICATES.items():
                duplicates[name] = len((await session.execute(text(query))).all())
            stored_events = await _keys(session, "SELECT device_id, seq FROM device_events")
            stored_telemetry = await _keys(
                session, "SELECT DISTINCT device_id, seq FROM telemetry_samples"
            )
            repeated = (
                await session.execute(
                    text(
                        "SELECT device_id, version FROM device_events WHERE name = 'active' "
                        "GROUP BY device_id, version HAVING COUNT(*) > 1"
                    )
                )
            ).all()
            desired: dict[str, str] = dict(
                (
                    await session.execute(
                        text("SELECT device_id, digest FROM desired_models WHERE model = :m"),
                        {"m": model},
                    )
                ).all()
            )
            devices = [
                row[0]
                for row in await session.execute(
                    text("SELECT id FROM devices WHERE id LIKE :p"), {"p": f"{prefix}-%"}
                )
            ]
    finally:
        await engine.dispose()
    return StoreCheck(
        duplicates=duplicates,
        events_published=len(events),
        events_lost=tuple(s for key, s in events.items() if key not in stored_events),
        telemetry_published=len(telemetry),
        telemetry_lost=tuple(s for key, s in telemetry.items() if key not in stored_telemetry),
        repeated_activations=len(repeated),
        wrong_desired=tuple(sorted(d for d in devices if desired.get(d) != digest)),
    )


def _first(seen: Iterable[Seen]) -> dict[tuple[str, int], Seen]:
    """Each (device, seq) with its first delivery."""
    first: dict[tuple[str, int], Seen] = {}
    for s in seen:
        first.setdefault((s.device, s.seq), s)
    return first


async def _keys(session: AsyncSession, query: str) -> set[tuple[str, int]]:
    """The (device, seq) pairs a query returns."""
    return {(str(device), int(seq)) for device, seq in await session.execute(text(query))}
