"""Telemetry retention: raw samples rolled up into buckets, old roll-ups and events deleted.

    telemetry_samples   kept `telemetry_raw_days`, then summed into `rollup_bucket_s` buckets
    telemetry_rollups   kept `telemetry_rollup_days`
    device_events, presence_history   kept `events_days`

Rolling up is crash-safe and idempotent: each transaction deletes a batch of the oldest samples
(`DELETE ... RETURNING`) and adds exactly the deleted rows into their buckets, so a sample is
counted once whether the run stops half-way, runs twice, or runs on two replicas at once (a
concurrent run's DELETE finds the rows gone and returns nothing). Buckets are added to, never
overwritten: a bucket that straddles the cut-off gets its later samples in a later run.
Deletions go `batch_rows` at a time, so a large backlog never holds one huge transaction.
`RetentionService` runs it at start and then every `RETENTION_INTERVAL_S`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, tuple_
from sqlalchemy.dialects.postgresql import dml as postgresql_dml
from sqlalchemy.dialects.sqlite import dml as sqlite_dml
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from control_plane.db.engine import open_session
from control_plane.db.models import (
    Base,
    DeviceEvent,
    PresenceChange,
    TelemetryRollup,
    TelemetrySample,
)
from control_plane.errors import DatabaseError
from control_plane.fleet_stats import bucket_floor
from control_plane.settings import ControlPlaneSettings
from shared.histogram import add_counts

log = logging.getLogger(__name__)

RETENTION_INTERVAL_S = 3600.0
BATCH_ROWS = 5000
_NO_SYNC = {"synchronize_session": False}  # bulk statements: no ORM objects to update
_BucketKey = tuple[str, str, int, datetime]  # device, model, version, bucket start
_ROLLUP_KEY = (
    TelemetryRollup.device_id,
    TelemetryRollup.model,
    TelemetryRollup.version,
    TelemetryRollup.bucket_start,
)


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind of row is kept, and how big a transaction may get."""

    raw_days: float = 7.0
    bucket_s: int = 3600
    rollup_days: float = 90.0
    events_days: float = 90.0
    batch_rows: int = BATCH_ROWS

    def __post_init__(self) -> None:
        if self.bucket_s < 1 or self.batch_rows < 1:
            raise ValueError("rollup_bucket_s and batch_rows must be at least 1")

    @classmethod
    def of(cls, settings: ControlPlaneSettings) -> RetentionPolicy:
        """The retention part of the control plane's settings."""
        return cls(
            raw_days=settings.telemetry_raw_days,
            bucket_s=settings.rollup_bucket_s,
            rollup_days=settings.telemetry_rollup_days,
            events_days=settings.events_days,
        )


@dataclass
class RetentionReport:
    """What one run did."""

    samples_rolled_up: int = 0
    buckets_updated: int = 0
    rollups_deleted: int = 0
    events_deleted: int = 0
    presence_deleted: int = 0

    def as_json(self) -> dict[str, int]:
        """The counts by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


async def apply_retention(
    engine: AsyncEngine, policy: RetentionPolicy, now: datetime
) -> RetentionReport:
    """Roll up and delete everything past its retention at `now`; raise `DatabaseError`."""
    report = RetentionReport()
    raw_cutoff = now - timedelta(days=policy.raw_days)
    while True:
        async with open_session(engine) as session:
            rolled, buckets = await _roll_up_batch(session, engine.dialect.name, raw_cutoff, policy)
        report.samples_rolled_up += rolled
        report.buckets_updated += buckets
        if rolled < policy.batch_rows:
            break
    report.rollups_deleted = await _delete_older(
        engine,
        TelemetryRollup,
        _ROLLUP_KEY,
        TelemetryRollup.bucket_start,
        now - timedelta(days=policy.rollup_days),
        policy.batch_rows,
    )
    events_cutoff = now - timedelta(days=policy.events_days)
    report.events_deleted = await _delete_older(
        engine, DeviceEvent, (DeviceEvent.id,), DeviceEvent.time, events_cutoff, policy.batch_rows
    )
    report.presence_deleted = await _delete_older(
        engine,
        PresenceChange,
        (PresenceChange.id,),
        PresenceChange.time,
        events_cutoff,
        policy.batch_rows,
    )
    return report


async def _roll_up_batch(
    session: AsyncSession, dialect: str, cutoff: datetime, policy: RetentionPolicy
) -> tuple[int, int]:
    """Move up to `batch_rows` of the oldest samples before `cutoff` into their buckets."""
    oldest = (
        select(TelemetrySample.id)
        .where(TelemetrySample.time < cutoff)
        .order_by(TelemetrySample.time, TelemetrySample.id)
        .limit(policy.batch_rows)
    )
    ids = list(await session.scalars(oldest))
    if not ids:
        return 0, 0
    deleted = await session.execute(
        delete(TelemetrySample)
        .where(TelemetrySample.id.in_(ids))
        .returning(
            TelemetrySample.device_id,
            TelemetrySample.model,
            TelemetrySample.version,
            TelemetrySample.time,
            TelemetrySample.requests,
            TelemetrySample.errors,
            TelemetrySample.latency_counts,
        ),
        execution_options=_NO_SYNC,
    )
    sums: dict[_BucketKey, TelemetryRollup] = {}
    count = 0
    for device_id, model, version, time, requests, errors, counts in deleted:
        count += 1
        key = (device_id, model, version, bucket_floor(time, policy.bucket_s))
        total = sums.get(key)
        if total is None:
            total = sums[key] = _empty(key, policy.bucket_s)
        total.requests += requests
        total.errors += errors
        total.latency_counts = add_counts([total.latency_counts, counts])
        total.samples += 1
    await _add_into_buckets(session, dialect, sums)
    return count, len(sums)


def _empty(key: _BucketKey, bucket_s: int) -> TelemetryRollup:
    device_id, model, version, start = key
    return TelemetryRollup(
        device_id=device_id,
        model=model,
        version=version,
        bucket_start=start,
        bucket_s=bucket_s,
        requests=0,
        errors=0,
        latency_counts=[],
        samples=0,
    )


async def _add_into_buckets(
    session: AsyncSession, dialect: str, sums: dict[_BucketKey, TelemetryRollup]
) -> None:
    """Add `sums` into the stored buckets, creating missing ones (an upsert that adds)."""
    # Create the missing buckets empty first, so the locking read below sees every bucket: two
    # runs adding into one new bucket then queue on its row lock instead of both inserting.
    empty = [_empty_row(total) for total in sums.values()]
    pk = ["device_id", "model", "version", "bucket_start"]
    insert: sqlite_dml.Insert | postgresql_dml.Insert
    if dialect == "postgresql":
        insert = postgresql_dml.insert(TelemetryRollup).on_conflict_do_nothing(index_elements=pk)
    else:
        insert = sqlite_dml.insert(TelemetryRollup).on_conflict_do_nothing(index_elements=pk)
    await session.execute(insert, empty)
    stored = await session.scalars(
        select(TelemetryRollup)
        .where(tuple_(*_ROLLUP_KEY).in_(list(sums)))
        .order_by(*_ROLLUP_KEY)
        .with_for_update()
    )
    for bucket in stored:
        total = sums[(bucket.device_id, bucket.model, bucket.version, bucket.bucket_start)]
        bucket.requests += total.requests
        bucket.errors += total.errors
        bucket.latency_counts = add_counts([bucket.latency_counts, total.latency_counts])
        bucket.samples += total.samples


def _empty_row(total: TelemetryRollup) -> dict[str, Any]:
    return {
        "device_id": total.device_id,
        "model": total.model,
        "version": total.version,
        "bucket_start": total.bucket_start,
        "bucket_s": total.bucket_s,
        "requests": 0,
        "errors": 0,
        "latency_counts": [],
        "samples": 0,
    }


async def _delete_older(
    engine: AsyncEngine,
    entity: type[Base],
    key: tuple[InstrumentedAttribute[Any], ...],
    time_column: InstrumentedAttribute[datetime],
    cutoff: datetime,
    batch_rows: int,
) -> int:
    """Delete rows whose `time_column` is before `cutoff`, `batch_rows` per transaction."""
    total = 0
    while True:
        oldest = select(*key).where(time_column < cutoff).limit(batch_rows)
        condition = key[0].in_(oldest) if len(key) == 1 else tuple_(*key).in_(oldest)
        statement = delete(entity).where(condition).returning(key[0])
        async with open_session(engine) as session:
            result = await session.execute(statement, execution_options=_NO_SYNC)
            deleted = len(result.all())
        total += deleted
        if deleted < batch_rows:
            return total


class RetentionService:
    """Applies the retention policy at start and then every `interval_s`, in the background."""

    def __init__(
        self,
        engine: AsyncEngine,
        policy: RetentionPolicy,
        interval_s: float = RETENTION_INTERVAL_S,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.interval_s = interval_s
        self.clock = clock
        self.last_report: RetentionReport | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the periodic task."""
        self._task = asyncio.create_task(self._run_forever(), name="edgefleet-retention")

    async def stop(self) -> None:
        """Cancel the task; an interrupted transaction rolls back, losing nothing."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run_once(self) -> RetentionReport | None:
        """One pass; a database failure is logged and left for the next pass."""
        try:
            report = await apply_retention(self.engine, self.policy, self.clock())
        except DatabaseError as error:
            log.warning("retention pass failed, retried in %.0f s: %s", self.interval_s, error)
            return None
        self.last_report = report
        if any(report.as_json().values()):
            log.info("retention: %s", report.as_json())
        return report

    async def _run_forever(self) -> None:
        while True:
            await self.run_once()
            await asyncio.sleep(self.interval_s)
