"""Retention: old samples rolled up into buckets and deleted, old roll-ups and events deleted."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from control_plane import retention
from control_plane.db.engine import create_engine_for, open_session
from control_plane.db.models import (
    DeviceEvent,
    PresenceChange,
    TelemetryRollup,
    TelemetrySample,
)
from control_plane.errors import DatabaseError
from control_plane.retention import RetentionPolicy, RetentionReport, RetentionService
from tests.control_plane.telemetry_builders import count, enroll, histogram

NOW = datetime(2026, 1, 10, 12, 0, tzinfo=UTC)
OLD = NOW - timedelta(days=8)  # past the 7 days of raw retention
HOUR = datetime(2026, 1, 2, 12, 0, tzinfo=UTC)  # the hour bucket OLD falls in
POLICY = RetentionPolicy(raw_days=7, bucket_s=3600, rollup_days=90, events_days=30)


def sample(device: str, seq: int, at: datetime, requests: int = 10, **fields: Any) -> Any:
    """A stored sample of `mlp` v1: `requests` requests, one error, latencies in bucket 5."""
    values: dict[str, Any] = {
        "device_id": device,
        "seq": seq,
        "time": at,
        "model": "mlp",
        "version": 1,
        "backend": "onnxruntime/CPU",
        "interval_s": 10.0,
        "requests": requests,
        "errors": 1,
        "latency_counts": histogram({5: requests - 1}),
        "throughput_rps": requests / 10,
    }
    return TelemetrySample(**(values | fields))


async def add(engine: AsyncEngine, *rows: Any) -> None:
    async with open_session(engine) as session:
        session.add_all(rows)


async def rollups(engine: AsyncEngine) -> list[tuple[str, datetime, int, int, list[int], int]]:
    query = select(TelemetryRollup).order_by(
        TelemetryRollup.device_id, TelemetryRollup.bucket_start
    )
    async with open_session(engine) as session:
        return [
            (r.device_id, r.bucket_start, r.requests, r.errors, r.latency_counts, r.samples)
            for r in await session.scalars(query)
        ]


async def test_old_samples_are_rolled_up_and_deleted_once(engine: AsyncEngine) -> None:
    await add(
        engine,
        sample("d1", 1, OLD + timedelta(minutes=10)),
        sample("d1", 2, OLD + timedelta(minutes=20), requests=20),
        sample("d1", 3, OLD + timedelta(minutes=70)),
        sample("d2", 1, OLD + timedelta(minutes=5)),
        sample("d1", 4, NOW - timedelta(days=1)),  # recent: stays raw
    )
    report = await retention.apply_retention(engine, POLICY, NOW)
    assert (report.samples_rolled_up, report.buckets_updated) == (4, 3)
    expected = [
        ("d1", HOUR, 30, 2, histogram({5: 28}), 2),
        ("d1", HOUR + timedelta(hours=1), 10, 1, histogram({5: 9}), 1),
        ("d2", HOUR, 10, 1, histogram({5: 9}), 1),
    ]
    assert await rollups(engine) == expected
    assert await count(engine, TelemetrySample) == 1

    again = await retention.apply_retention(engine, POLICY, NOW)
    assert again == RetentionReport()
    assert await rollups(engine) == expected


async def test_samples_are_added_into_an_existing_bucket(engine: AsyncEngine) -> None:
    await add(
        engine,
        TelemetryRollup(
            device_id="d1",
            model="mlp",
            version=1,
            bucket_start=HOUR,
            bucket_s=3600,
            requests=5,
            errors=0,
            latency_counts=histogram({2: 5}),
            samples=1,
        ),
        sample("d1", 9, OLD + timedelta(minutes=50)),
    )
    await retention.apply_retention(engine, POLICY, NOW)
    assert await rollups(engine) == [("d1", HOUR, 15, 1, histogram({2: 5, 5: 9}), 2)]


async def test_a_backlog_is_rolled_up_in_several_transactions(engine: AsyncEngine) -> None:
    await add(engine, *(sample("d1", seq, OLD + timedelta(seconds=seq)) for seq in range(1, 8)))
    small = RetentionPolicy(raw_days=7, bucket_s=3600, batch_rows=3)
    report = await retention.apply_retention(engine, small, NOW)
    assert report.samples_rolled_up == 7
    assert report.buckets_updated == 3  # the same bucket, added to by three transactions
    assert await rollups(engine) == [("d1", HOUR, 70, 7, histogram({5: 63}), 7)]
    assert await count(engine, TelemetrySample) == 0


async def test_a_failed_roll_up_keeps_the_samples(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    await add(engine, sample("d1", 1, OLD), sample("d1", 2, OLD))

    async def crash(session: AsyncSession, dialect: str, sums: Any) -> None:
        raise DatabaseError("database error: the server went away")

    monkeypatch.setattr(retention, "_add_into_buckets", crash)
    with pytest.raises(DatabaseError):
        await retention.apply_retention(engine, POLICY, NOW)
    # The delete and the roll-up are one transaction: nothing was lost, nothing half-done.
    assert await count(engine, TelemetrySample) == 2
    assert await rollups(engine) == []


async def test_old_rollups_events_and_presence_are_deleted(engine: AsyncEngine) -> None:
    await enroll(engine, "d1")

    def rollup(start: datetime) -> TelemetryRollup:
        return TelemetryRollup(
            device_id="d1",
            model="mlp",
            version=1,
            bucket_start=start,
            bucket_s=3600,
            requests=1,
            errors=0,
            latency_counts=histogram(),
            samples=1,
        )

    def event(seq: int, at: datetime) -> DeviceEvent:
        return DeviceEvent(device_id="d1", seq=seq, time=at, kind="lifecycle", payload={})

    await add(
        engine,
        rollup(NOW - timedelta(days=91)),
        rollup(NOW - timedelta(days=91, hours=1)),
        rollup(NOW - timedelta(days=89)),
        *(event(seq, NOW - timedelta(days=31, seconds=seq)) for seq in range(1, 6)),
        event(9, NOW - timedelta(days=29)),
        PresenceChange(device_id="d1", time=NOW - timedelta(days=31), online=True),
        PresenceChange(device_id="d1", time=NOW - timedelta(days=1), online=False),
    )
    policy = RetentionPolicy(rollup_days=90, events_days=30, batch_rows=2)
    report = await retention.apply_retention(engine, policy, NOW)
    assert (report.rollups_deleted, report.events_deleted, report.presence_deleted) == (2, 5, 1)
    assert await count(engine, TelemetryRollup) == 1
    assert await count(engine, DeviceEvent, seq=9) == 1
    assert await count(engine, DeviceEvent) == 1
    assert await count(engine, PresenceChange, online=False) == 1


async def test_the_service_runs_at_start(engine: AsyncEngine) -> None:
    await add(engine, sample("d1", 1, OLD))
    service = RetentionService(engine, POLICY, interval_s=3600, clock=lambda: NOW)
    report = await service.run_once()
    assert report is not None
    assert report.samples_rolled_up == 1
    assert service.last_report == report


async def test_a_database_failure_waits_for_the_next_pass(engine: AsyncEngine) -> None:
    unreachable = create_engine_for(
        "sqlite+aiosqlite:////nonexistent-directory/control-plane.db"
        if engine.dialect.name == "sqlite"
        else "postgresql+asyncpg://nobody@127.0.0.1:1/none"
    )
    try:
        service = RetentionService(unreachable, POLICY, clock=lambda: NOW)
        assert await service.run_once() is None
        assert service.last_report is None
    finally:
        await unreachable.dispose()
