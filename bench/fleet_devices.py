"""The device list at fleet scale: `GET /api/v1/devices` against the same query without HTTP.

`seed_fleet` inserts N devices straight into a migrated database (enrolling 10,000 through the
API is not what this measures): 50 site groups plus a 5% canary group, `env`/`site`/`hw`
labels, a region, a backend class (x86 60%, ARM 25%, GPU 10%, OpenVINO 5%), 85% online, the
hardware and models a status reports, and one certificate each. `time_queries` then issues
each query of `queries` one request at a time through a kept-alive connection (the request's
time on loopback is the server's time plus the HTTP round trip), and the same query through
`control_plane.devices` in this process, each in its own session as the route opens one.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
from sqlalchemy import insert

from bench import BenchError, say
from control_plane.api.devices import device_detail
from control_plane.db.engine import create_engine_for, open_session
from control_plane.db.models import Device, DeviceCertificate, DeviceGroup, DeviceLabel
from control_plane.devices import DeviceFilter, get_device, list_devices

P95_TARGET_MS = 300.0
PAGE = 100
WARMUP = 5  # requests of each query before the timed ones
SITES = 50
BACKENDS = (("x86-cpu", 60), ("arm-cpu", 25), ("gpu", 10), ("openvino", 5))
RUNTIME = {
    "x86-cpu": "onnxruntime/CPU",
    "arm-cpu": "tflite/CPU",
    "gpu": "onnxruntime/CUDA",
    "openvino": "openvino/GPU",
}
HARDWARE = {"x86-cpu": "nuc-12", "arm-cpu": "rpi-5", "gpu": "jetson-orin", "openvino": "nuc-13"}
INSERT_CHUNK = 2000


@dataclass(frozen=True)
class ListQuery:
    """One way of reading the device list, over HTTP and directly."""

    name: str
    params: dict[str, str]  # the query string; empty with `device`
    filters: DeviceFilter
    offset: int = 0
    device: str | None = None  # GET /devices/{id} instead of the list


@dataclass(frozen=True)
class QueryTiming:
    """Latencies of one query, milliseconds, over HTTP and directly."""

    query: ListQuery
    http_ms: list[float]
    direct_ms: list[float]
    matched: int  # `total` of the list (1 for one device)

    @property
    def http_p50(self) -> float:
        """Median over HTTP."""
        return percentile(self.http_ms, 50)

    @property
    def http_p95(self) -> float:
        """p95 over HTTP."""
        return percentile(self.http_ms, 95)

    @property
    def direct_p50(self) -> float:
        """Median of the direct query."""
        return percentile(self.direct_ms, 50)

    @property
    def direct_p95(self) -> float:
        """p95 of the direct query."""
        return percentile(self.direct_ms, 95)


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile `q` (0-100) of `values`."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


def device_id(index: int) -> str:
    """The id of seeded device `index`."""
    return f"dev-{index:05d}"


def queries(devices: int) -> list[ListQuery]:
    """First page, a deep page, group + status, a label, a search, a model, one device."""
    deep = max(0, devices - 1000) if devices >= 2000 else devices * 9 // 10
    return [
        ListQuery("first page (limit 100)", {"limit": str(PAGE)}, DeviceFilter()),
        ListQuery(
            f"deep page (offset {deep:,})",
            {"limit": str(PAGE), "offset": str(deep)},
            DeviceFilter(),
            offset=deep,
        ),
        ListQuery(
            "group + status (group=site-07&status=online)",
            {"group": "site-07", "status": "online"},
            DeviceFilter(group="site-07", online=True),
        ),
        ListQuery(
            "label (label=hw=jetson-orin)",
            {"label": "hw=jetson-orin"},
            DeviceFilter(labels=(("hw", "jetson-orin"),)),
        ),
        ListQuery("search (q=42)", {"q": "42"}, DeviceFilter(search="42")),
        ListQuery("model (model=cnn)", {"model": "cnn"}, DeviceFilter(model="cnn")),
        ListQuery("one device (GET /devices/{id})", {}, DeviceFilter(), device=device_id(0)),
    ]


def _rows(devices: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    """The rows of `devices` devices, their groups, labels and certificates."""
    rng = random.Random(seed)
    now = datetime.now(UTC)
    classes = [name for name, _ in BACKENDS]
    weights = [weight for _, weight in BACKENDS]
    rows: dict[str, list[dict[str, Any]]] = {
        "devices": [],
        "groups": [],
        "labels": [],
        "certificates": [],
    }
    for index in range(devices):
        ident = device_id(index)
        backend = rng.choices(classes, weights)[0]
        site = f"site-{index % SITES:02d}"
        online = rng.random() < 0.85
        models = [
            {
                "model": name,
                "version": rng.choice((3, 4)),
                "state": "READY",
                "backend": RUNTIME[backend],
                "file": f"{name}.onnx",
                "selection": {"chosen": RUNTIME[backend], "measured_ms": round(rng.random(), 3)},
            }
            for name in ("mlp", "cnn")[: 1 + index % 2]
        ]
        rows["devices"].append(
            {
                "id": ident,
                "region": ("eu-west", "us-east", "ap-south")[index % 3],
                "enrolled_at": now - timedelta(days=rng.randrange(1, 400)),
                "public_key": "-----BEGIN PUBLIC KEY-----\n"
                + "A" * 120
                + "\n-----END PUBLIC KEY-----",
                "online": online,
                "last_seen_at": now - timedelta(seconds=rng.randrange(1, 60 if online else 86400)),
                "agent_version": "0.1.0",
                "hardware": {
                    "arch": "aarch64" if backend == "arm-cpu" else "x86_64",
                    "cpu_model": HARDWARE[backend],
                    "gpus": ["NVIDIA Orin"] if backend == "gpu" else [],
                    "logical_cores": 4,
                    "memory_bytes": 8 << 30,
                    "cpu_features": ["avx2", "fma"] if backend != "arm-cpu" else ["neon"],
                },
                "models": models,
                "backend_class": backend,
            }
        )
        rows["groups"].append({"device_id": ident, "group": site})
        if index % 20 == 0:
            rows["groups"].append({"device_id": ident, "group": "canary"})
        labels = {"env": "staging" if index % 10 == 0 else "prod", "site": site}
        labels["hw"] = HARDWARE[backend]
        rows["labels"] += [{"device_id": ident, "key": k, "value": v} for k, v in labels.items()]
        rows["certificates"].append(
            {
                "serial": f"{index:032x}",
                "device_id": ident,
                "issued_at": now - timedelta(days=1),
                "not_after": now + timedelta(days=364),
                "pem": "-----BEGIN CERTIFICATE-----\n" + "B" * 600 + "\n-----END CERTIFICATE-----",
            }
        )
    return rows


async def seed_fleet(url: str, devices: int, seed: int = 0) -> float:
    """Insert `devices` devices into the (migrated, empty) database; return the seconds taken."""
    started = time.perf_counter()
    rows = _rows(devices, seed)
    tables = (
        (Device, "devices"),
        (DeviceGroup, "groups"),
        (DeviceLabel, "labels"),
        (DeviceCertificate, "certificates"),
    )
    engine = create_engine_for(url)
    try:
        async with open_session(engine) as session:
            for model, name in tables:
                for start in range(0, len(rows[name]), INSERT_CHUNK):
                    await session.execute(insert(model), rows[name][start : start + INSERT_CHUNK])
    finally:
        await engine.dispose()
    return time.perf_counter() - started


Call = Callable[[], Awaitable[tuple[float, int]]]  # one request: (milliseconds, matched)


async def _timed(call: Call, count: int) -> tuple[list[float], int]:
    """Milliseconds of `count` calls one after the other (after `WARMUP` untimed ones)."""
    matched = 0
    for _ in range(WARMUP):
        _, matched = await call()
    times = []
    for _ in range(count):
        elapsed, matched = await call()
        times.append(elapsed)
    return times, matched


async def time_queries(
    base_url: str, token: str, database_url: str, requests: int
) -> list[QueryTiming]:
    """Each query `requests` times over HTTP, then `requests` times directly."""
    engine = create_engine_for(database_url)
    headers = {"Authorization": f"Bearer {token}"}
    results = []
    try:
        async with aiohttp.ClientSession(base_url, headers=headers) as http:
            total = json.loads(await _get(http, "/api/v1/devices", {"limit": "1"}))["total"]
            for query in queries(total):

                async def over_http(query: ListQuery = query) -> tuple[float, int]:
                    path = "/api/v1/devices"
                    if query.device is not None:
                        path += f"/{query.device}"
                    started = time.perf_counter()
                    body = await _get(http, path, query.params)
                    elapsed = (time.perf_counter() - started) * 1000
                    return elapsed, 1 if query.device else int(json.loads(body)["total"])

                async def direct(query: ListQuery = query) -> tuple[float, int]:
                    started = time.perf_counter()
                    async with open_session(engine) as session:
                        if query.device is not None:
                            await device_detail(session, await get_device(session, query.device))
                            matched = 1
                        else:
                            filters, offset = query.filters, query.offset
                            matched = (
                                await list_devices(session, filters, PAGE, offset, None)
                            ).total
                    return (time.perf_counter() - started) * 1000, matched

                http_ms, matched = await _timed(over_http, requests)
                direct_ms, direct_matched = await _timed(direct, requests)
                if matched != direct_matched:
                    raise BenchError(f"{query.name}: {matched} over HTTP, {direct_matched} direct")
                timing = QueryTiming(query, http_ms, direct_ms, matched)
                say(
                    f"  {query.name}: {matched:,} matching, HTTP p50 {timing.http_p50:.1f} ms "
                    f"p95 {timing.http_p95:.1f} ms, direct p50 {timing.direct_p50:.1f} ms"
                )
                results.append(timing)
    finally:
        await engine.dispose()
    return results


async def _get(http: aiohttp.ClientSession, path: str, params: dict[str, str]) -> bytes:
    async with http.get(path, params=params) as response:
        body = await response.read()
        if response.status != 200:
            raise BenchError(f"GET {path} {params} answered {response.status}: {body[:200]!r}")
        return body
