"""Fleet statistics: version health (sums and quantiles), activation outcomes, device series."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.db.engine import open_session
from control_plane.db.models import Device, DeviceEvent, TelemetrySample
from control_plane.fleet_stats import (
    VersionHealth,
    activation_outcomes,
    device_series,
    version_health,
)
from control_plane.retention import RetentionPolicy, apply_retention
from shared.histogram import LATENCY_BUCKETS, LATENCY_COUNTS_LENGTH
from tests.control_plane.telemetry_builders import enroll, histogram, lifecycle, status_online

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SINCE = NOW - timedelta(hours=1)
BOUNDS = np.array(LATENCY_BUCKETS)


def counts_of(latencies: np.ndarray[Any, Any]) -> list[int]:
    """The agent's histogram of these latencies (bisect_left: one equal to a bound is in it)."""
    indexes = np.searchsorted(BOUNDS, latencies, side="left")
    return [int(n) for n in np.bincount(indexes, minlength=LATENCY_COUNTS_LENGTH)]


def numpy_quantile(counts: list[int], q: float) -> float:
    """The interpolated quantile of docs/telemetry.md, computed independently with numpy."""
    cumulative = np.cumsum(counts)
    rank = q * cumulative[-1]
    index = int(np.searchsorted(cumulative, rank, side="left"))
    lower = 0.0 if index == 0 else float(BOUNDS[index - 1])
    before = 0 if index == 0 else int(cumulative[index - 1])
    return float(lower + (float(BOUNDS[index]) - lower) * (rank - before) / counts[index])


def sample(device: str, seq: int, at: datetime, **fields: Any) -> TelemetrySample:
    values: dict[str, Any] = {
        "device_id": device,
        "seq": seq,
        "time": at,
        "model": "mlp",
        "version": 2,
        "backend": "onnxruntime/CPU",
        "interval_s": 10.0,
        "requests": 0,
        "errors": 0,
        "latency_counts": histogram(),
        "throughput_rps": 0.0,
    }
    return TelemetrySample(**(values | fields))


async def add(engine: AsyncEngine, *rows: Any) -> None:
    async with open_session(engine) as session:
        session.add_all(rows)


async def test_version_health_sums_devices_and_reads_quantiles(engine: AsyncEngine) -> None:
    rng = np.random.default_rng(7)
    all_latencies: list[np.ndarray[Any, Any]] = []
    rows: list[TelemetrySample] = []
    errors = 0
    for d, device in enumerate(("d1", "d2", "d3")):
        for seq in range(1, 6):
            latencies = rng.lognormal(mean=-5.5 + 0.3 * d, sigma=0.6, size=200)
            all_latencies.append(latencies)
            failed = int(rng.integers(0, 5))
            errors += failed
            at = SINCE + timedelta(minutes=seq * 5)
            rows.append(
                sample(
                    device,
                    seq,
                    at,
                    requests=200 + failed,
                    errors=failed,
                    latency_counts=counts_of(latencies),
                )
            )
    outside = [
        sample("d1", 90, SINCE - timedelta(seconds=1), requests=999),  # before the window
        sample("d1", 91, NOW, requests=999),  # `until` is exclusive
        sample("d1", 92, SINCE, requests=999, version=1),  # another version
        sample("d1", 93, SINCE, requests=999, model="cnn"),  # another model
        sample("d4", 1, SINCE, requests=999),  # a device not asked about
    ]
    await add(engine, *rows, *outside)
    async with open_session(engine) as session:
        health = await version_health(session, ["d1", "d2", "d3", "d5"], "mlp", 2, SINCE, NOW)

    assert health.devices_reporting == 3  # d5 has no sample
    assert health.requests == 3000 + errors
    assert health.errors == errors
    assert health.error_rate == pytest.approx(errors / (3000 + errors))
    merged = [sum(column) for column in zip(*(r.latency_counts for r in rows), strict=True)]
    assert list(health.latency_counts) == merged
    exact = np.concatenate(all_latencies)
    for q in (0.5, 0.9, 0.95, 0.99):
        estimate = health.latency_quantile(q)
        assert estimate is not None
        assert estimate == pytest.approx(numpy_quantile(merged, q), rel=1e-9)
        # Bounds 1.5x apart: the estimate is in the same bucket as the true quantile.
        truth = float(np.quantile(exact, q))
        assert truth / 1.5 <= estimate <= truth * 1.5


async def test_no_samples_means_no_rates(engine: AsyncEngine) -> None:
    async with open_session(engine) as session:
        health = await version_health(session, ["d1"], "mlp", 2, SINCE)
        empty = await version_health(session, [], "mlp", 2, SINCE)
    assert health == empty == VersionHealth(0, 0, 0)
    assert health.error_rate is None
    assert health.latency_quantile(0.95) is None


async def test_rolled_up_samples_still_count(engine: AsyncEngine) -> None:
    """A window reaching past raw retention reads the roll-ups: nothing lost, nothing twice."""
    old = NOW - timedelta(days=10)
    await add(
        engine,
        sample("d1", 1, old, requests=10, errors=1, latency_counts=histogram({3: 9})),
        sample("d1", 2, old + timedelta(hours=2), requests=5, latency_counts=histogram({8: 5})),
        sample("d1", 3, NOW - timedelta(hours=1), requests=7, latency_counts=histogram({8: 7})),
    )
    window = (NOW - timedelta(days=11), NOW)
    async with open_session(engine) as session:
        before = await version_health(session, ["d1"], "mlp", 2, *window)
    report = await apply_retention(engine, RetentionPolicy(raw_days=7), NOW)
    assert report.samples_rolled_up == 2
    async with open_session(engine) as session:
        after = await version_health(session, ["d1"], "mlp", 2, *window)
    assert after == before == VersionHealth(1, 22, 1, tuple(histogram({3: 9, 8: 12})))


async def test_activation_outcomes(engine: AsyncEngine) -> None:
    devices = [f"d{n}" for n in range(1, 10)]
    await enroll(engine, *devices)
    after = (SINCE + timedelta(minutes=1)).timestamp()
    stories: dict[str, list[tuple[str, str]]] = {
        "d1": [("downloading", ""), ("probation", ""), ("active", "")],
        "d2": [("downloading", ""), ("failed", "golden output differs")],
        "d3": [("probation", ""), ("reverted", "error rate 12.0% is above 5.0%")],
        "d4": [],  # nothing yet
        "d5": [],  # no lifecycle (an agent without bundles), but its status lists v2 READY
        "d6": [("downloading", ""), ("probation", "")],  # on probation: READY, not yet proven
        "d7": [("active", ""), ("retired", "replaced by v1")],  # rolled back
        "d8": [("active", ""), ("retired", "replaced by v3")],  # superseded: it did activate
        "d9": [("failed", "interrupted"), ("downloading", "")],  # a retry under way
    }
    rows: list[DeviceEvent] = []
    for device, story in stories.items():
        for seq, (state, reason) in enumerate(story, start=1):
            payload = lifecycle("mlp", 2, state, at=after + seq, reason=reason)
            rows.append(_event(device, seq, payload))
    # Before `since`: an earlier attempt that failed does not count against this one.
    rows.append(_event("d4", 50, lifecycle("mlp", 2, "failed", at=SINCE.timestamp() - 60)))
    rows.append(_event("d4", 51, lifecycle("mlp", 1, "failed", at=after)))  # another version
    await add(engine, *rows)
    async with open_session(engine) as session:
        for device in ("d5", "d6"):
            row = await session.get(Device, device)
            assert row is not None
            row.models = status_online([("mlp", 2, "READY", "onnxruntime/CPU")])["models"]
    async with open_session(engine) as session:
        outcomes = await activation_outcomes(session, devices, "mlp", 2, SINCE)
    assert outcomes == {
        "d1": "active",
        "d2": "failed",
        "d3": "failed",
        "d4": "pending",
        "d5": "active",
        "d6": "pending",
        "d7": "failed",
        "d8": "active",
        "d9": "pending",
    }


def _event(device: str, seq: int, payload: dict[str, Any]) -> DeviceEvent:
    return DeviceEvent(
        device_id=device,
        seq=seq,
        time=datetime.fromtimestamp(payload["time"], UTC),
        kind="lifecycle",
        model=payload["model"],
        version=payload["version"],
        name=payload["state"],
        payload=payload,
    )


async def test_device_series_buckets_a_devices_telemetry(engine: AsyncEngine) -> None:
    start = datetime(2026, 3, 1, 11, 0, tzinfo=UTC)
    await add(
        engine,
        # Two models in one message share its interval.
        sample("d1", 1, start + timedelta(seconds=10), requests=100, errors=4,
               latency_counts=histogram({4: 96})),
        sample("d1", 1, start + timedelta(seconds=10), model="cnn", requests=20,
               latency_counts=histogram({9: 20})),
        sample("d1", 2, start + timedelta(seconds=20), requests=50,
               latency_counts=histogram({6: 50})),
        sample("d1", 3, start + timedelta(seconds=70), requests=30,
               latency_counts=histogram({6: 30})),
        sample("d2", 1, start + timedelta(seconds=10), requests=1000),  # another device
    )  # fmt: skip
    async with open_session(engine) as session:
        series = await device_series(session, "d1", "mlp", start, 60)
        both = await device_series(session, "d1", None, start, 60)
    first, second = series
    assert first["start"] == start.isoformat()
    assert (first["requests"], first["errors"]) == (150, 4)
    assert first["error_rate"] == pytest.approx(4 / 150)
    assert first["throughput_rps"] == pytest.approx(150 / 20)  # two reports of 10 s
    assert first["p50_s"] == pytest.approx(numpy_quantile(histogram({4: 96, 6: 50}), 0.5))
    assert first["p95_s"] == pytest.approx(numpy_quantile(histogram({4: 96, 6: 50}), 0.95))
    assert second["start"] == (start + timedelta(minutes=1)).isoformat()
    assert second["requests"] == 30
    assert [point["requests"] for point in both] == [170, 30]
    assert both[0]["throughput_rps"] == pytest.approx(170 / 20)
