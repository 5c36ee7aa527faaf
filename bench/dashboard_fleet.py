"""A realistic 10,000-device control-plane database for the dashboard benchmark.

Written straight into the tables (the simulator would need minutes and a broker to produce the
same): devices in six regions, fifty sites and four backend classes with their hardware and
status; groups and labels; `mlp` v1-v3 and `cnn` v1-v2 as bundle records; each device's last
activation as lifecycle events and its backend selection with benchmark figures; presence
changes; failed activations and reverts in the last day; a completed, a running and a
rolled-back rollout with their waves, gate results and devices; and a day of 10-second
telemetry for the devices whose pages are measured (plus the running wave's devices).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from bench.dashboard_rollouts import seed_rollouts
from bench.dashboard_rows import digest, insert_rows
from control_plane.db.models import (
    BundleRecord,
    Device,
    DeviceEvent,
    DeviceGroup,
    DeviceLabel,
    PresenceChange,
    TelemetrySample,
    utcnow,
)
from control_plane.sim_reports import BACKEND_HARDWARE, BACKEND_RUNTIME, latency_histogram

REGIONS = ("eu-west", "eu-central", "us-east", "us-west", "ap-south", "ap-east")
BACKENDS = {"x86-cpu": 0.55, "arm-cpu": 0.25, "gpu": 0.12, "openvino": 0.08}
SITES = 50
LIFECYCLE = ("downloading", "verifying", "staged", "validating", "warming", "probation", "active")
TELEMETRY_INTERVAL_S = 10
DETAIL_DEVICES = 5  # devices with a full day of telemetry: the detail pages measured


@dataclass
class SeededFleet:
    """What the benchmark needs to know about the data it measures."""

    devices: int
    detail_devices: list[str]
    running_rollout: int
    rows: dict[str, int] = field(default_factory=dict)


def device_id(index: int) -> str:
    """The id of device `index`."""
    return f"edge-{index:05d}"


def _manifest(name: str, version: int, created: float) -> dict[str, Any]:
    files = [
        {"path": f"{name}.onnx", "sha256": digest(f"{name}{version}onnx"), "size": 412_345},
        {"path": f"{name}.xml", "sha256": digest(f"{name}{version}xml"), "size": 20_114},
        {"path": f"{name}.bin", "sha256": digest(f"{name}{version}bin"), "size": 408_000},
        {"path": f"{name}.tflite", "sha256": digest(f"{name}{version}tfl"), "size": 210_998},
        {"path": "golden/inputs.npz", "sha256": digest(f"{name}{version}in"), "size": 1_290},
        {"path": "golden/expected.npz", "sha256": digest(f"{name}{version}ex"), "size": 1_034},
    ]
    return {
        "type": "edgefleet.manifest/1",
        "name": name,
        "version": version,
        "created_at": created,
        "files": files,
        "variants": [
            {"runtime": "onnxruntime", "precision": "fp32", "file": f"{name}.onnx", "devices": []},
            {"runtime": "openvino", "precision": "fp16", "file": f"{name}.xml", "devices": []},
            {"runtime": "tflite", "precision": "int8", "file": f"{name}.tflite", "devices": []},
        ],
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 10]}],
        "compatibility": {
            "min_runtime_versions": {"onnxruntime": "1.17"},
            "cpu_features": [],
            "min_memory_bytes": 268_435_456,
        },
        "golden": {
            "inputs_file": "golden/inputs.npz",
            "expected_file": "golden/expected.npz",
            "tolerance": 1e-4,
        },
        "batching": {"max_batch_size": 32, "preferred_batch_sizes": [1, 8, 32]},
        "policy": "latency",
        "labels": {},
    }


def _selection(model: str, version: int, backend: str, rng: random.Random) -> dict[str, Any]:
    runtime = BACKEND_RUNTIME[backend]
    candidates = [
        f"{runtime}/{model}.onnx",
        f"openvino/CPU/{model}.xml",
        f"tflite/CPU/{model}.tflite",
    ]
    measurements = []
    for rank, candidate in enumerate(dict.fromkeys(candidates)):
        p50 = (0.05 + 0.04 * rank) * rng.uniform(0.8, 1.2)
        measurements.append(
            {
                "candidate": candidate,
                "runtime": candidate.split("/")[0],
                "device": candidate.split("/")[1],
                "file": candidate.split("/")[2],
                "precision": "fp32",
                "ok": True,
                "error": None,
                "load_ms": round(rng.uniform(8, 60), 1),
                "latency_ms_p50": round(p50, 4),
                "latency_ms_p95": round(p50 * 1.4, 4),
                "throughput_rows_s": round(32 / (p50 * 2.1) * 1000, 0),
                "max_batch": 32,
                "runs": 200,
            }
        )
    return {
        "model": model,
        "policy": "latency",
        "chosen": measurements[0]["candidate"],
        "ranking": [m["candidate"] for m in measurements],
        "measurements": measurements,
        "source": "measured",
        "decided_at": time.time(),
    }


def _waves(total: Sequence[str], fractions: Iterable[float]) -> list[list[str]]:
    waves, done = [], 0
    for fraction in fractions:
        reach = max(done + 1, round(len(total) * fraction))
        waves.append(list(total[done:reach]))
        done = reach
    return waves


async def seed(engine: AsyncEngine, count: int = 10_000, seed_value: int = 1) -> SeededFleet:
    """Fill an empty, migrated database; return what the benchmark measures."""
    rng = random.Random(seed_value)
    now = utcnow()
    ids = [device_id(i) for i in range(count)]
    backend_of = {d: rng.choices(list(BACKENDS), list(BACKENDS.values()))[0] for d in ids}
    order = sorted(ids, key=lambda _: rng.random())
    # The running rollout of mlp v3: canary 1%, wave 1 to 10% (running), then 50%, 100%.
    running_waves = _waves(order, (0.01, 0.10, 0.50, 1.0))
    on_v3 = set(running_waves[0]) | set(running_waves[1][: len(running_waves[1]) * 3 // 4])
    fleet = SeededFleet(count, ids[:DETAIL_DEVICES], running_rollout=2)

    bundles = []
    for name, versions in (("mlp", (1, 2, 3)), ("cnn", (1, 2))):
        for version in versions:
            created = (now - timedelta(days=40 - 10 * version)).timestamp()
            bundles.append(
                {
                    "digest": digest(f"{name}-{version}"),
                    "name": name,
                    "version": version,
                    "size": 1_054_781 + version * 1000,
                    "signer_keyid": digest("release-key")[:32],
                    "manifest": _manifest(name, version, created),
                    "uploaded_at": datetime.fromtimestamp(created + 600, now.tzinfo),
                    "uploaded_by": "alice",
                }
            )
    fleet.rows["bundles"] = await insert_rows(engine, BundleRecord, bundles)

    devices, groups, labels, events, presence = [], [], [], [], []
    failed_recently = set(rng.sample(ids, count // 60))
    for index, ident in enumerate(ids):
        backend = backend_of[ident]
        runtime = BACKEND_RUNTIME[backend]
        online = rng.random() < 0.93
        mlp_version = 3 if ident in on_v3 else (1 if rng.random() < 0.03 else 2)
        models = [(("mlp", mlp_version))] + ([("cnn", 1)] if index % 5 < 2 else [])
        devices.append(
            {
                "id": ident,
                "region": REGIONS[index % len(REGIONS)],
                "enrolled_at": now - timedelta(days=60 + index % 30),
                "public_key": "-",
                "online": online,
                "last_seen_at": now - timedelta(seconds=rng.uniform(0, 30))
                if online
                else now - timedelta(hours=rng.uniform(1, 48)),
                "agent_version": "0.1.0",
                "hardware": {
                    **BACKEND_HARDWARE[backend],
                    "logical_cores": 4 if backend == "arm-cpu" else 8,
                    "cpu_features": ["neon"] if backend == "arm-cpu" else ["avx2", "fma"],
                    "memory_bytes": 8 << 30,
                    "fingerprint": digest(ident)[:16],
                    "runtimes": {"onnxruntime": "1.20.1", "openvino": "2024.6.0"},
                },
                "models": [
                    {
                        "model": name,
                        "version": version,
                        "state": "READY",
                        "backend": runtime,
                        "file": f"{name}.onnx",
                        "selection": {
                            "chosen": f"{runtime}/{name}.onnx",
                            "policy": "latency",
                            "source": "measured",
                        },
                    }
                    for name, version in models
                ],
                "backend_class": backend,
            }
        )
        groups.append({"device_id": ident, "group": f"site-{index % SITES:02d}"})
        groups.append({"device_id": ident, "group": "fleet"})
        labels.append(
            {"device_id": ident, "key": "tier", "value": "gold" if index % 4 else "silver"}
        )
        labels.append({"device_id": ident, "key": "rack", "value": str(index % 12)})
        seq = 0
        for name, version in models:
            started = now - timedelta(
                hours=rng.uniform(1, 20) if version == 3 else rng.uniform(30, 200)
            )
            for step, state in enumerate(LIFECYCLE):
                seq += 1
                events.append(
                    _event(ident, seq, started + timedelta(seconds=step * 2), name, version, state)
                )
            seq += 1
            events.append(
                {
                    "device_id": ident,
                    "seq": seq,
                    "time": started + timedelta(seconds=5),
                    "kind": "selection",
                    "model": name,
                    "version": version,
                    "name": runtime,
                    "payload": {
                        "kind": "selection",
                        "model": name,
                        "version": version,
                        "backend": runtime,
                        "selection": _selection(name, version, backend, rng),
                    },
                }
            )
        if ident in failed_recently:
            seq += 1
            state = "reverted" if rng.random() < 0.3 else "failed"
            reason = (
                "probation: error rate 7.5% over 5%"
                if state == "reverted"
                else "golden outputs differ"
            )
            moment = now - timedelta(hours=rng.uniform(0, 23))
            events.append(_event(ident, seq, moment, "mlp", 3, state, reason))
        for days, up in ((3, True), (2, False), (1, True)):
            presence.append({"device_id": ident, "time": now - timedelta(days=days), "online": up})
        if not online:
            presence.append(
                {"device_id": ident, "time": devices[-1]["last_seen_at"], "online": False}
            )
    fleet.rows["devices"] = await insert_rows(engine, Device, devices)
    fleet.rows["device_groups"] = await insert_rows(engine, DeviceGroup, groups)
    fleet.rows["device_labels"] = await insert_rows(engine, DeviceLabel, labels)
    fleet.rows["device_events"] = await insert_rows(engine, DeviceEvent, events)
    fleet.rows["presence_history"] = await insert_rows(engine, PresenceChange, presence)
    site03 = [d for i, d in enumerate(ids) if i % SITES == 3]
    fleet.rows.update(await seed_rollouts(engine, now, ids, order, running_waves, on_v3, site03))
    fleet.rows["telemetry_samples"] = await _telemetry(
        engine, now, fleet.detail_devices, running_waves[1], rng
    )
    return fleet


def _event(
    ident: str, seq: int, moment: datetime, model: str, version: int, state: str, reason: str = ""
) -> dict[str, Any]:
    return {
        "device_id": ident,
        "seq": seq,
        "time": moment,
        "kind": "lifecycle",
        "model": model,
        "version": version,
        "name": state,
        "payload": {
            "kind": "lifecycle",
            "model": model,
            "version": version,
            "state": state,
            "reason": reason,
            "digest": digest(f"{model}-{version}"),
        },
    }


async def _telemetry(
    engine: AsyncEngine,
    now: datetime,
    detail: list[str],
    running_wave: list[str],
    rng: random.Random,
) -> int:
    """A day of 10 s reports for the detail devices; 20 minutes of 1-minute ones for the wave."""
    shapes = [latency_histogram(50, 0.004, rng) for _ in range(40)]
    rows: list[dict[str, Any]] = []
    steps = 24 * 3600 // TELEMETRY_INTERVAL_S
    for ident in detail:
        for step in range(steps):
            moment = now - timedelta(seconds=step * TELEMETRY_INTERVAL_S)
            busy = 0.6 + 0.4 * abs((step % 8640) / 4320 - 1)  # a daily swing
            requests = int(50 * busy * rng.uniform(0.9, 1.1))
            counts = shapes[step % len(shapes)]
            rows.append(
                {
                    "device_id": ident,
                    "seq": steps - step,
                    "time": moment,
                    "model": "mlp",
                    "version": 3 if step < 360 else 2,
                    "backend": "onnxruntime/CPU",
                    "interval_s": float(TELEMETRY_INTERVAL_S),
                    "requests": requests,
                    "errors": 1 if rng.random() < 0.02 else 0,
                    "latency_counts": counts,
                    "throughput_rps": requests / TELEMETRY_INTERVAL_S,
                }
            )
    for ident in running_wave[:300]:
        for minute in range(20):
            rows.append(
                {
                    "device_id": ident,
                    "seq": 1_000_000 + minute,
                    "time": now - timedelta(minutes=minute),
                    "model": "mlp",
                    "version": 3,
                    "backend": "onnxruntime/CPU",
                    "interval_s": 60.0,
                    "requests": 300,
                    "errors": 1 if rng.random() < 0.3 else 0,
                    "latency_counts": shapes[minute % len(shapes)],
                    "throughput_rps": 5.0,
                }
            )
    return await insert_rows(engine, TelemetrySample, rows)
