"""Writes batches of device messages to the database, one transaction per batch.

Telemetry samples and events are inserted with the dialect's `INSERT ... ON CONFLICT DO
NOTHING` (SQLite and PostgreSQL) on their unique keys, `(device_id, seq, model)` and
`(device_id, seq)`, so a QoS 1 redelivery, or the same message reaching two replicas, is
stored once; the rows the database took come back through `RETURNING`, which tells stored
messages from duplicates. Status messages update the `Device` row and write a `PresenceChange`
when `online` flips. Every message from an enrolled, unrevoked device moves its `last_seen_at`
(the time the control plane received it); messages from anyone else are dropped and counted.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, or_, select, text, update
from sqlalchemy.dialects.postgresql import dml as postgresql_dml
from sqlalchemy.dialects.sqlite import dml as sqlite_dml
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from control_plane.db.engine import open_session
from control_plane.db.models import Device as DeviceRow
from control_plane.db.models import DeviceEvent, PresenceChange, TelemetrySample
from control_plane.device_messages import Event, Status, Telemetry
from control_plane.errors import DatabaseError

UNKNOWN_DEVICE = "unknown_device"
REVOKED_DEVICE = "revoked_device"
DIALECTS = ("sqlite", "postgresql")  # those whose INSERT ... ON CONFLICT DO NOTHING we use


@dataclass(frozen=True, slots=True)
class DeviceMessage:
    """One validated message waiting to be written."""

    device_id: str
    seq: int
    time: datetime  # the publisher's clock
    received_at: datetime  # the control plane's clock
    body: Telemetry | Event | Status


@dataclass
class BatchOutcome:
    """What became of each message of a batch."""

    stored: int = 0
    duplicates: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    presence_changes: int = 0


class IngestStore:
    """Writes batches for one engine; `write` is all-or-nothing."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._dialect = engine.dialect.name
        if self._dialect not in DIALECTS:
            raise DatabaseError(f"the ingest cannot write to a {self._dialect} database")

    async def ping(self) -> None:
        """Raise `DatabaseError` unless the database answers."""
        async with open_session(self.engine) as session:
            await session.execute(text("SELECT 1"))

    async def write(self, batch: Sequence[DeviceMessage]) -> BatchOutcome:
        """Store a batch in one transaction; raise `DatabaseError` and store nothing on failure."""
        outcome = BatchOutcome()
        async with open_session(self.engine) as session:
            ids = sorted({m.device_id for m in batch})
            # Only the columns the hot path needs: loading whole `Device` objects (and their
            # JSON) and flushing each one cost nearly as much as the inserts; statuses, rare,
            # load theirs below.
            known = await session.execute(
                select(DeviceRow.id, DeviceRow.revoked_at, DeviceRow.last_seen_at).where(
                    DeviceRow.id.in_(ids)
                )
            )
            seen: dict[str, datetime | None] = {}
            revoked: set[str] = set()
            for device_id, revoked_at, last_seen_at in known:
                seen[device_id] = last_seen_at
                if revoked_at is not None:
                    revoked.add(device_id)
            accepted: list[DeviceMessage] = []
            for message in batch:
                if message.device_id not in seen:
                    outcome.dropped[UNKNOWN_DEVICE] += 1
                elif message.device_id in revoked:
                    outcome.dropped[REVOKED_DEVICE] += 1
                else:
                    accepted.append(message)
            stored = await self._insert_rows(session, accepted)
            newest: dict[str, datetime] = {}
            for message in accepted:
                last = newest.get(message.device_id)
                if last is None or last < message.received_at:
                    newest[message.device_id] = message.received_at
            statuses = [(m, m.body) for m in accepted if isinstance(m.body, Status)]
            if statuses:
                outcome.presence_changes = await _apply_statuses(session, statuses, newest)
            await _move_last_seen(session, newest, seen)
            outcome.stored = sum(stored)
            outcome.duplicates = len(stored) - outcome.stored
        return outcome

    async def _insert_rows(
        self, session: AsyncSession, messages: Sequence[DeviceMessage]
    ) -> list[bool]:
        """Insert samples and events; per message, whether it was new (False: a duplicate)."""
        samples: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        first: list[bool] = []
        seen: set[tuple[str, int]] = set()
        for message in messages:
            # One sequence counter covers all of a device's kinds, so the pair is the message.
            key = (message.device_id, message.seq)
            first.append(key not in seen)
            seen.add(key)
            if not first[-1]:
                continue  # the same message twice in one batch
            if isinstance(message.body, Telemetry):
                samples += _sample_rows(message, message.body)
            elif isinstance(message.body, Event):
                events.append(_event_row(message, message.body))
        new_samples = await self._insert_new(
            session, TelemetrySample.__table__, samples, ("device_id", "seq", "model", "version")
        )
        new_events = await self._insert_new(
            session, DeviceEvent.__table__, events, ("device_id", "seq")
        )
        result: list[bool] = []
        for message, is_first in zip(messages, first, strict=True):
            key = (message.device_id, message.seq)
            body = message.body
            if isinstance(body, Telemetry):
                result.append(is_first and (not body.samples or key in new_samples))
            elif isinstance(body, Event):
                result.append(is_first and key in new_events)
            else:
                result.append(True)  # a status is applied, never stored twice
        return result

    async def _insert_new(
        self,
        session: AsyncSession,
        table: Any,
        rows: list[dict[str, Any]],
        unique: tuple[str, ...],
    ) -> set[tuple[str, int]]:
        """Insert what is not there yet; return the (device_id, seq) pairs of rows inserted."""
        if not rows:
            return set()
        keys = list(unique)
        insert: sqlite_dml.Insert | postgresql_dml.Insert
        if self._dialect == "sqlite":
            insert = sqlite_dml.insert(table).on_conflict_do_nothing(index_elements=keys)
        else:
            insert = postgresql_dml.insert(table).on_conflict_do_nothing(index_elements=keys)
        result = await session.execute(insert.returning(table.c.device_id, table.c.seq), rows)
        return {(device_id, seq) for device_id, seq in result}


def _sample_rows(message: DeviceMessage, telemetry: Telemetry) -> Iterable[dict[str, Any]]:
    for sample in telemetry.samples:
        yield {
            "device_id": message.device_id,
            "seq": message.seq,
            "time": message.time,
            "model": sample.model,
            "version": sample.version,
            "backend": sample.backend,
            "interval_s": telemetry.interval_s,
            "requests": sample.requests,
            "errors": sample.errors,
            "latency_counts": sample.latency_counts,
            "throughput_rps": sample.throughput_rps,
        }


def _event_row(message: DeviceMessage, event: Event) -> dict[str, Any]:
    return {
        "device_id": message.device_id,
        "seq": message.seq,
        "time": event.time,
        "kind": event.kind,
        "model": event.model,
        "version": event.version,
        "name": event.name,
        "payload": event.payload,
    }


async def _apply_statuses(
    session: AsyncSession,
    statuses: Sequence[tuple[DeviceMessage, Status]],
    newest: dict[str, datetime],
) -> int:
    """Apply status messages in order; return how many presence flips they logged.

    Their devices' `last_seen_at` moves here too, through the loaded objects, and they leave
    `newest`, so `_move_last_seen` does not update the same rows again.
    """
    ids = sorted({message.device_id for message, _ in statuses})
    devices = {
        d.id: d for d in await session.scalars(select(DeviceRow).where(DeviceRow.id.in_(ids)))
    }
    changes = 0
    for message, status in statuses:
        changes += _apply_status(session, devices[message.device_id], status, message.received_at)
    for device_id in ids:
        device = devices[device_id]
        received_at = newest.pop(device_id)
        if device.last_seen_at is None or device.last_seen_at < received_at:
            device.last_seen_at = received_at
    return changes


async def _move_last_seen(
    session: AsyncSession, newest: dict[str, datetime], seen: dict[str, datetime | None]
) -> None:
    """Move each device's `last_seen_at` forward to its newest message, in one executemany.

    The condition is repeated in SQL so that a replica writing an older batch late never
    moves it back.
    """
    rows = [
        {"device": device_id, "received": received_at}
        for device_id, received_at in newest.items()
        if (last := seen[device_id]) is None or last < received_at
    ]
    if rows:
        table: Any = DeviceRow.__table__  # a Table; typed as FromClause
        received = bindparam("received", type_=table.c.last_seen_at.type)
        await session.execute(
            update(table)
            .where(
                table.c.id == bindparam("device"),
                or_(table.c.last_seen_at.is_(None), table.c.last_seen_at < received),
            )
            .values(last_seen_at=received),
            rows,
        )


def _apply_status(
    session: AsyncSession, device: DeviceRow, status: Status, received_at: datetime
) -> int:
    """Update the device from its status; return 1 if its presence flipped (and was logged)."""
    if status.online:
        device.agent_version = status.agent_version
        device.models = status.models or []
        device.hardware = status.hardware
        device.backend_class = status.backend_class
    if device.online == status.online:
        return 0
    device.online = status.online
    session.add(PresenceChange(device_id=device.id, time=received_at, online=status.online))
    return 1
