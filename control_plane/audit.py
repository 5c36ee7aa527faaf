"""The audit log: every change made through the control plane, with its state before and after."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db.models import AuditEntry


async def record(
    session: AsyncSession,
    actor: str,
    action: str,
    target: str,
    before: dict[str, Any] | None,
    after: dict[str, Any] | None,
) -> AuditEntry:
    """Add an audit entry to the session's transaction, so it commits with the change itself."""
    entry = AuditEntry(actor=actor, action=action, target=target, before=before, after=after)
    session.add(entry)
    await session.flush()
    return entry
