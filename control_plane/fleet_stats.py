"""Fleet figures read from stored telemetry and events: what rollout gates and charts ask.

Counts add across devices and time: a version's error rate is `sum(errors) / sum(requests)`
over the devices and window, and its latency quantiles are read from the element-wise sum of
the histograms (`shared.histogram`), never averaged per device. Raw samples cover the recent
`telemetry_raw_days`; older ones live in hourly (`rollup_bucket_s`) roll-ups, and each sample is
in exactly one of the two, so reading both never counts anything twice. A roll-up counts in a
window when its bucket starts inside it. Times are the devices' clocks.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Text, select, type_coerce
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.db.models import Device, DeviceEvent, TelemetryRollup, TelemetrySample
from shared.histogram import LATENCY_COUNTS_LENGTH, add_counts, quantile

ACTIVE = "active"
FAILED = "failed"
PENDING = "pending"
IN_CHUNK = 500  # device ids per IN (...) list
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_REPLACED_BY = re.compile(r"replaced by v(\d+)")


@dataclass(frozen=True)
class VersionHealth:
    """One model version's figures summed over some devices and a time window."""

    devices_reporting: int  # devices with at least one sample in the window
    requests: int
    errors: int
    latency_counts: tuple[int, ...] = (0,) * LATENCY_COUNTS_LENGTH

    @property
    def error_rate(self) -> float | None:
        """Errors per request; None with no requests."""
        return self.errors / self.requests if self.requests else None

    def latency_quantile(self, q: float) -> float | None:
        """Latency quantile `q` in seconds, interpolated within buckets; None with no requests."""
        if not self.requests:
            return None
        return quantile(self.latency_counts, q)


async def version_health(
    session: AsyncSession,
    device_ids: Sequence[str],
    model: str,
    version: int,
    since: datetime,
    until: datetime | None = None,
) -> VersionHealth:
    """`model` `version` on `device_ids` in [since, until): raw samples plus older roll-ups."""
    reporting: set[str] = set()
    requests = errors = 0
    histograms: list[list[int]] = []
    for chunk in _chunks(device_ids):
        raw = select(
            TelemetrySample.device_id,
            TelemetrySample.requests,
            TelemetrySample.errors,
            TelemetrySample.latency_counts,
        ).where(
            TelemetrySample.device_id.in_(chunk),
            TelemetrySample.model == model,
            TelemetrySample.version == version,
            TelemetrySample.time >= since,
        )
        rolled = select(
            TelemetryRollup.device_id,
            TelemetryRollup.requests,
            TelemetryRollup.errors,
            TelemetryRollup.latency_counts,
        ).where(
            TelemetryRollup.device_id.in_(chunk),
            TelemetryRollup.model == model,
            TelemetryRollup.version == version,
            TelemetryRollup.bucket_start >= since,
        )
        if until is not None:
            raw = raw.where(TelemetrySample.time < until)
            rolled = rolled.where(TelemetryRollup.bucket_start < until)
        for query in (raw, rolled):
            for device_id, row_requests, row_errors, counts in await session.execute(query):
                reporting.add(device_id)
                requests += row_requests
                errors += row_errors
                histograms.append(counts)
    counts = add_counts([[0] * LATENCY_COUNTS_LENGTH, *histograms])
    return VersionHealth(len(reporting), requests, errors, tuple(counts))


async def activation_outcomes(
    session: AsyncSession,
    device_ids: Sequence[str],
    model: str,
    version: int,
    since: datetime,
    timed_out: bool = False,
) -> dict[str, str]:
    """Per device: "active", "failed" or "pending" for `model` `version` since `since`.

    The newest lifecycle event of that version after `since` decides (`agent.bundles.lifecycle`):
    `active` is active; `failed` and `reverted` (probation failed) are failed; `retired` is
    failed when an older version replaced it (a rollback), active when a newer one did; any
    other state is an activation under way, pending. Without such an event the device is
    active when its status lists the version READY (an agent without bundles reports no
    lifecycle), else pending.

    With `timed_out` (the activation timeout has passed), a device whose events stop at an
    activation under way is active too when its status lists the version READY and serving:
    its last events were lost (the ingest loses what arrives while no control plane runs),
    and a version still serving that long after it was assigned has passed the device's own
    probation (60 s by default, against the 900 s timeout), or it would have been reverted.
    """
    outcomes = dict.fromkeys(device_ids, PENDING)
    for chunk in _chunks(device_ids):
        events = (
            select(DeviceEvent.device_id, DeviceEvent.name, DeviceEvent.payload)
            .where(
                DeviceEvent.device_id.in_(chunk),
                DeviceEvent.kind == "lifecycle",
                DeviceEvent.model == model,
                DeviceEvent.version == version,
                DeviceEvent.time >= since,
            )
            .order_by(DeviceEvent.time, DeviceEvent.seq)
        )
        newest: dict[str, tuple[str | None, Any]] = {}
        for device_id, name, payload in await session.execute(events):
            newest[device_id] = (name, payload)  # ordered by time: the last one wins
        for device_id, (name, payload) in newest.items():
            outcomes[device_id] = _lifecycle_outcome(name, payload, version)
        silent = [
            device_id
            for device_id in chunk
            if device_id not in newest or (timed_out and outcomes[device_id] == PENDING)
        ]
        statuses = select(Device.id, Device.models).where(Device.id.in_(silent))
        for device_id, models in await session.execute(statuses):
            if _reports_ready(models, model, version):
                outcomes[device_id] = ACTIVE
    return outcomes


def _lifecycle_outcome(state: str | None, payload: Any, version: int) -> str:
    if state == "active":
        return ACTIVE
    if state in ("failed", "reverted"):
        return FAILED
    if state == "retired":
        reason = payload.get("reason") if isinstance(payload, dict) else None
        match = _REPLACED_BY.search(reason) if isinstance(reason, str) else None
        return ACTIVE if match and int(match.group(1)) > version else FAILED
    return PENDING


def _reports_ready(models: Any, model: str, version: int) -> bool:
    return isinstance(models, list) and any(
        isinstance(m, dict)
        and m.get("model") == model
        and m.get("version") == version
        and m.get("state") == "READY"
        and m.get("serving", True) is not False  # loaded only for a quick revert: not serving
        for m in models
    )


@dataclass
class _Bucket:
    requests: int = 0
    errors: int = 0
    histograms: list[list[int]] = field(default_factory=list)
    covered_s: float = 0.0  # seconds the reports in it cover
    messages: set[int] = field(default_factory=set)  # sequence numbers already covered


async def device_series(
    session: AsyncSession,
    device_id: str,
    model: str | None,
    since: datetime,
    bucket_s: int,
) -> list[dict[str, Any]]:
    """One device's figures per `bucket_s` bucket since `since` (one model, or all), for charts.

    Buckets without data are left out. Each has its start (ISO 8601), requests, errors,
    error_rate, throughput_rps (requests over the seconds its reports cover) and the
    p50_s and p95_s latency (null without successful requests).
    """
    if bucket_s < 1:
        raise ValueError(f"bucket_s must be at least 1, not {bucket_s}")
    buckets: dict[datetime, _Bucket] = {}
    raw = select(
        TelemetrySample.time,
        TelemetrySample.seq,
        TelemetrySample.interval_s,
        TelemetrySample.requests,
        TelemetrySample.errors,
        # As text, decoded by orjson below: a day of 10 s reports is 8,640 rows per model, and
        # the JSON type's per-row json.loads was most of the time a day's chart took.
        type_coerce(TelemetrySample.latency_counts, Text),
    ).where(TelemetrySample.device_id == device_id, TelemetrySample.time >= since)
    rolled = select(
        TelemetryRollup.bucket_start,
        TelemetryRollup.bucket_s,
        TelemetryRollup.requests,
        TelemetryRollup.errors,
        TelemetryRollup.latency_counts,
    ).where(TelemetryRollup.device_id == device_id, TelemetryRollup.bucket_start >= since)
    if model is not None:
        raw = raw.where(TelemetrySample.model == model)
        rolled = rolled.where(TelemetryRollup.model == model)
    for time, seq, interval_s, requests, errors, text in await session.execute(raw):
        bucket = buckets.setdefault(bucket_floor(time, bucket_s), _Bucket())
        bucket.requests += requests
        bucket.errors += errors
        bucket.histograms.append(_decoded(text))
        if seq not in bucket.messages:  # a message's models share one interval
            bucket.messages.add(seq)
            bucket.covered_s += interval_s
    for start, rolled_s, requests, errors, counts in await session.execute(rolled):
        bucket = buckets.setdefault(bucket_floor(start, bucket_s), _Bucket())
        bucket.requests += requests
        bucket.errors += errors
        bucket.histograms.append(counts)
        bucket.covered_s += rolled_s
    return [_point(start, buckets[start], bucket_s) for start in sorted(buckets)]


def _decoded(counts: Any) -> list[int]:
    """A histogram read as text (see `device_series`), or already decoded by the driver."""
    decoded: list[int] = orjson.loads(counts) if isinstance(counts, str | bytes) else counts
    return decoded


def _point(start: datetime, bucket: _Bucket, bucket_s: int) -> dict[str, Any]:
    counts = add_counts([[0] * LATENCY_COUNTS_LENGTH, *bucket.histograms])
    covered = min(float(bucket_s), bucket.covered_s) or float(bucket_s)
    return {
        "start": start.isoformat(),
        "requests": bucket.requests,
        "errors": bucket.errors,
        "error_rate": bucket.errors / bucket.requests if bucket.requests else None,
        "throughput_rps": round(bucket.requests / covered, 3),
        "p50_s": quantile(counts, 0.5),
        "p95_s": quantile(counts, 0.95),
    }


def bucket_floor(moment: datetime, bucket_s: int) -> datetime:
    """The start of the `bucket_s` bucket holding `moment` (buckets aligned to the epoch)."""
    seconds = (moment - _EPOCH) // timedelta(seconds=1)
    return _EPOCH + timedelta(seconds=seconds - seconds % bucket_s)


def _chunks(device_ids: Sequence[str]) -> Iterator[list[str]]:
    unique = sorted(set(device_ids))
    for start in range(0, len(unique), IN_CHUNK):
        yield unique[start : start + IN_CHUNK]
