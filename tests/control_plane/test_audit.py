"""The audit log keeps who did what, to which thing, with the state before and after."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane import audit
from control_plane.db.engine import open_session
from control_plane.db.models import AuditEntry


async def test_an_entry_is_written_with_before_and_after(engine: AsyncEngine) -> None:
    async with open_session(engine) as session:
        await audit.record(
            session,
            "token:3",
            "rollout.pause",
            "rollout:7",
            {"state": "running", "wave": 2},
            {"state": "paused", "wave": 2},
        )
    async with open_session(engine) as session:
        (entry,) = (await session.scalars(select(AuditEntry))).all()
    assert (entry.actor, entry.action, entry.target) == ("token:3", "rollout.pause", "rollout:7")
    assert entry.before == {"state": "running", "wave": 2}
    assert entry.after == {"state": "paused", "wave": 2}
    assert abs(datetime.now(UTC) - entry.time) < timedelta(minutes=1)


async def test_a_creation_has_no_before(engine: AsyncEngine) -> None:
    async with open_session(engine) as session:
        entry = await audit.record(session, "cli", "token.create", "token:1", None, {"id": 1})
    assert entry.id is not None
    assert entry.before is None
