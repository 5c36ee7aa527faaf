"""Device messages and database rows for the ingest, retention and fleet statistics tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.db.engine import open_session
from control_plane.db.models import Base, Device, TelemetrySample
from shared.histogram import LATENCY_BUCKETS, LATENCY_COUNTS_LENGTH
from shared.mqtt.client import Message
from shared.mqtt.envelope import SCHEMA_BY_KIND, Envelope, encode
from shared.mqtt.topics import device_topic


def envelope(kind: str, device: str, seq: int, payload: dict[str, Any], at: float = 0.0) -> bytes:
    """An encoded envelope of `kind` (status, telemetry, events) from `device`."""
    return encode(Envelope(SCHEMA_BY_KIND[kind], device, seq, at or time.time(), payload))


def message(kind: str, device: str, seq: int, payload: dict[str, Any]) -> Message:
    """What the MQTT client would hand the ingest for that envelope."""
    return Message(device_topic(device, kind), envelope(kind, device, seq, payload), False, 1)


def histogram(at: dict[int, int] | None = None) -> list[int]:
    """Latency counts: `at` maps bucket indexes to counts, the rest are zero."""
    counts = [0] * LATENCY_COUNTS_LENGTH
    for index, count in (at or {}).items():
        counts[index] = count
    return counts


def model_entry(
    model: str = "mlp",
    version: int = 1,
    requests: int = 10,
    errors: dict[str, int] | None = None,
    counts: list[int] | None = None,
    backend: str = "onnxruntime/CPU",
) -> dict[str, Any]:
    """One `models[]` entry of a telemetry payload, as the agent builds it."""
    failures = errors if errors is not None else {"rejected": 0, "backend": 0}
    return {
        "model": model,
        "version": version,
        "backend": backend,
        "state": "READY",
        "requests": requests,
        "success": requests - sum(failures.values()),
        "errors": failures,
        "latency_buckets_s": list(LATENCY_BUCKETS),
        "latency_counts": counts if counts is not None else histogram({5: requests}),
        "throughput_rps": requests / 10.0,
        "pending": 0,
    }


def telemetry(*entries: dict[str, Any]) -> dict[str, Any]:
    """A telemetry payload over 10 seconds."""
    return {"interval_s": 10.0, "models": list(entries), "host": {}, "outbox": None}


def status_online(
    models: Sequence[tuple[str, int, str, str]] = (("mlp", 1, "READY", "onnxruntime/CPU"),),
    arch: str = "x86_64",
    gpus: Sequence[str] = (),
) -> dict[str, Any]:
    """An online status listing (model, version, state, backend) entries."""
    return {
        "state": "online",
        "agent_version": "0.1.0",
        "models": [
            {"model": m, "version": v, "state": s, "backend": b, "file": None, "selection": None}
            for m, v, s, b in models
        ],
        "hardware": {
            "arch": arch,
            "cpu_model": "test",
            "logical_cores": 2,
            "cpu_features": [],
            "memory_bytes": 1 << 30,
            "gpus": list(gpus),
            "fingerprint": "0" * 16,
        },
    }


def lifecycle(
    model: str, version: int, state: str, at: float = 0.0, reason: str = ""
) -> dict[str, Any]:
    """A lifecycle event payload (`{"kind": "lifecycle", **LifecycleEvent.as_json()}`)."""
    return {
        "kind": "lifecycle",
        "time": at or time.time(),
        "model": model,
        "version": version,
        "digest": "ab" * 32,
        "previous": None,
        "state": state,
        "reason": reason,
        "details": None,
    }


async def enroll(engine: AsyncEngine, *device_ids: str, revoked: datetime | None = None) -> None:
    """Insert Device rows directly (enrollment itself is tested elsewhere)."""
    async with open_session(engine) as session:
        for device_id in device_ids:
            session.add(Device(id=device_id, public_key="test key", revoked_at=revoked))


async def count(engine: AsyncEngine, entity: type[Base], **where: Any) -> int:
    """Rows of `entity` whose columns equal `where`."""
    query = select(func.count()).select_from(entity)
    for name, value in where.items():
        query = query.where(getattr(entity, name) == value)
    async with open_session(engine) as session:
        return int(await session.scalar(query) or 0)


async def samples(engine: AsyncEngine, device_id: str) -> list[TelemetrySample]:
    """A device's telemetry rows by sequence number."""
    query = select(TelemetrySample).where(TelemetrySample.device_id == device_id)
    async with open_session(engine) as session:
        return list(await session.scalars(query.order_by(TelemetrySample.seq)))


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 10.0) -> None:
    """Return once `await check()` is true; TimeoutError after `seconds`.

    What is checked changes in the database or on another connection, so it is polled.
    """
    async with asyncio.timeout(seconds):
        while True:
            if await check():
                return
            await asyncio.sleep(0.02)
