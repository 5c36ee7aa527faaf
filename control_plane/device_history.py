"""What devices reported over time, read back: events, presence changes, backend selections.

The API (`control_plane.api.telemetry`) and the dashboard read the same rows through these
functions. Every query is bounded (a limit, and for fleet-wide reads a time window) and walks an
index: `device_events.device_id`, `device_events.time`, `presence_history.device_id`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db.models import DeviceEvent, PresenceChange

LIFECYCLE = "lifecycle"
SELECTION = "selection"
# Lifecycle states that mean a version did not stick: it failed to activate, or failed its
# probation and the agent went back to the previous version (`agent.bundles.lifecycle`).
FAILURE_STATES = ("failed", "reverted")
SELECTIONS_SCANNED = 50  # newest selection events read to find each model's current one


async def device_events(
    session: AsyncSession, device_id: str, limit: int, before: datetime | None = None
) -> Sequence[DeviceEvent]:
    """The device's events, newest first, at most `limit`, only those before `before`."""
    query = select(DeviceEvent).where(DeviceEvent.device_id == device_id)
    if before is not None:
        query = query.where(DeviceEvent.time < before)
    query = query.order_by(DeviceEvent.time.desc(), DeviceEvent.seq.desc()).limit(limit)
    return (await session.scalars(query)).all()


async def presence_changes(
    session: AsyncSession, device_id: str, limit: int
) -> Sequence[PresenceChange]:
    """The device's online/offline changes, newest first, at most `limit`."""
    query = (
        select(PresenceChange)
        .where(PresenceChange.device_id == device_id)
        .order_by(PresenceChange.time.desc(), PresenceChange.id.desc())
        .limit(limit)
    )
    return (await session.scalars(query)).all()


async def recent_failures(
    session: AsyncSession, since: datetime, limit: int
) -> Sequence[DeviceEvent]:
    """Failed activations and reverts anywhere in the fleet since `since`, newest first."""
    query = (
        select(DeviceEvent)
        .where(
            DeviceEvent.time >= since,
            DeviceEvent.kind == LIFECYCLE,
            DeviceEvent.name.in_(FAILURE_STATES),
        )
        .order_by(DeviceEvent.time.desc(), DeviceEvent.id.desc())
        .limit(limit)
    )
    return (await session.scalars(query)).all()


async def latest_selections(
    session: AsyncSession, device_id: str
) -> dict[tuple[str, int | None], DeviceEvent]:
    """The newest `selection` event per (model, version): the backend chosen and its figures."""
    query = (
        select(DeviceEvent)
        .where(DeviceEvent.device_id == device_id, DeviceEvent.kind == SELECTION)
        .order_by(DeviceEvent.time.desc(), DeviceEvent.seq.desc())
        .limit(SELECTIONS_SCANNED)
    )
    newest: dict[tuple[str, int | None], DeviceEvent] = {}
    for event in await session.scalars(query):
        if event.model is not None:
            newest.setdefault((event.model, event.version), event)
    return newest
