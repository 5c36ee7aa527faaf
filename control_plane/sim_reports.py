"""What simulated devices do and say: scripted behaviour per version, and the report bodies.

A `VersionBehaviour` scripts what happens to one model version on the simulated devices; the
functions below build the status, lifecycle-event and telemetry payloads in the agents' own
formats (docs/telemetry.md), so the control plane ingests them as it would a real agent's.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.histogram import LATENCY_BUCKETS, LATENCY_COUNTS_LENGTH

# A device's models: name -> (version, digest, state).
Models = Mapping[str, tuple[int, str, str]]

BACKEND_HARDWARE = {
    "x86-cpu": {"arch": "x86_64", "cpu_model": "simulated x86", "gpus": []},
    "arm-cpu": {"arch": "aarch64", "cpu_model": "simulated Cortex-A78", "gpus": []},
    "gpu": {"arch": "x86_64", "cpu_model": "simulated x86", "gpus": ["simulated GPU"]},
    "openvino": {"arch": "x86_64", "cpu_model": "simulated Core with iGPU", "gpus": []},
}
BACKEND_RUNTIME = {
    "x86-cpu": "onnxruntime/CPU",
    "arm-cpu": "tflite/CPU",
    "gpu": "onnxruntime/CUDA",
    "openvino": "openvino/GPU",
}


@dataclass(frozen=True)
class VersionBehaviour:
    """What a simulated device does with one model version."""

    fail_pct: float = 0.0  # share of devices (by a hash of device and version) that fail
    error_rate: float = 0.0  # share of requests answered with an error
    latency_ms: float = 5.0  # median latency
    activation_s: float = 0.5  # time from assignment to active (or failed)

    @classmethod
    def parse(cls, text: str) -> tuple[int, VersionBehaviour]:
        """`VERSION:key=value[,key=value]`; keys fail, errors, latency, activation."""
        version, sep, rest = text.partition(":")
        if not sep or not version.isdigit():
            raise ValueError(f"behaviour {text!r} must look like 2:fail=100,errors=0.2")
        values: dict[str, float] = {}
        names = {
            "fail": "fail_pct",
            "errors": "error_rate",
            "latency": "latency_ms",
            "activation": "activation_s",
        }
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if key not in names:
                raise ValueError(f"unknown behaviour {key!r}: use {', '.join(names)}")
            values[names[key]] = float(value) if eq else 100.0
        return int(version), cls(**values)

    def fails_on(self, device_id: str, version: int) -> bool:
        """Whether this device's activation of this version fails (stable per pair)."""
        digest = hashlib.sha256(f"{device_id}/{version}".encode()).digest()
        return int.from_bytes(digest[:4], "big") % 10_000 < self.fail_pct * 100


def status_report(backend_class: str, models: Models) -> dict[str, Any]:
    """The retained status of a simulated device running `models`."""
    runtime = BACKEND_RUNTIME[backend_class]
    return {
        "state": "online",
        "agent_version": "sim",
        "models": [
            {
                "model": name,
                "version": version,
                "state": state,
                "serving": True,
                "backend": runtime,
                "file": None,
            }
            for name, (version, _, state) in sorted(models.items())
        ],
        "hardware": {
            **BACKEND_HARDWARE[backend_class],
            "logical_cores": 4,
            "cpu_features": [],
            "memory_bytes": 8 << 30,
            "fingerprint": backend_class,
            "runtimes": {runtime.split("/")[0]: "sim"},
        },
    }


def lifecycle_event(
    model: str, version: int, digest: str, previous: str | None, state: str, reason: str = ""
) -> dict[str, Any]:
    """One lifecycle transition, as `agent.bundles.lifecycle` reports it."""
    return {
        "kind": "lifecycle",
        "time": time.time(),
        "model": model,
        "version": version,
        "digest": digest,
        "previous": previous,
        "state": state,
        "reason": reason,
        "details": None,
    }


def telemetry_report(
    backend_class: str,
    models: Models,
    behaviours: Mapping[int, VersionBehaviour],
    requests_per_model: float,
    interval: float,
    rng: random.Random,
) -> dict[str, Any]:
    """One telemetry message: about `requests_per_model` requests per model, as scripted."""
    entries = []
    runtime = BACKEND_RUNTIME[backend_class]
    for name, (version, _, state) in sorted(models.items()):
        behaviour = behaviours.get(version, VersionBehaviour())
        requests = max(0, round(rng.gauss(1, 0.1) * requests_per_model))
        errors = sum(1 for _ in range(requests) if rng.random() < behaviour.error_rate)
        counts = latency_histogram(requests - errors, behaviour.latency_ms / 1000, rng)
        entries.append(
            {
                "model": name,
                "version": version,
                "backend": runtime,
                "state": state,
                "requests": requests,
                "success": requests - errors,
                "errors": {"inference": errors},
                "latency_buckets_s": list(LATENCY_BUCKETS),
                "latency_counts": counts,
                "queue_us": 0,
                "compute_us": 0,
                "inferences": requests - errors,
                "executions": requests - errors,
                "batch_sizes": {},
                "throughput_rps": round(requests / interval, 3),
                "pending": 0,
            }
        )
    return {"interval_s": interval, "models": entries, "host": {}, "outbox": None}


def latency_histogram(count: int, median_s: float, rng: random.Random) -> list[int]:
    """`count` log-normal latencies around `median_s`, counted into the agents' buckets."""
    counts = [0] * LATENCY_COUNTS_LENGTH
    for _ in range(count):
        value = median_s * math.exp(rng.gauss(0, 0.25))
        index = next((i for i, b in enumerate(LATENCY_BUCKETS) if value <= b), len(LATENCY_BUCKETS))
        counts[index] += 1
    return counts


def parse_backends(text: str) -> dict[str, float]:
    """`x86-cpu=70,arm-cpu=20,gpu=10` as weights."""
    weights: dict[str, float] = {}
    for item in text.split(","):
        name, _, weight = item.partition("=")
        if name not in BACKEND_HARDWARE:
            raise ValueError(f"unknown backend class {name!r}: use {', '.join(BACKEND_HARDWARE)}")
        weights[name] = float(weight or 1)
    return weights


def parse_behaviours(items: Sequence[str]) -> dict[int, VersionBehaviour]:
    """Every `--behaviour` flag, by version."""
    return dict(VersionBehaviour.parse(item) for item in items)
