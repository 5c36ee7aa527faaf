"""The bodies of the agent's status and telemetry messages, built from what it measures.

Telemetry carries, per model version and backend, what happened since the previous report:
requests, errors by kind, a latency histogram over fixed buckets (so the control plane can add
devices together and read fleet percentiles), queue and compute time, batch sizes, throughput;
and the host's CPU, memory, disk and, where the platform exposes them, temperatures. The status
says what the device is and runs. `docs/telemetry.md` lists every field.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from agent import __version__
from agent.hardware import HardwareInfo, gpu_usage
from agent.model import ServedModel
from agent.stats import FAILURE_REASONS, LATENCY_BUCKETS, ModelStatistics
from agent.telemetry.outbox import OutboxStats


@dataclass(slots=True)
class _Counters:
    """The cumulative counters of one model version at the previous report."""

    success: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    latency: list[int] = field(default_factory=list)
    queue_ns: int = 0
    compute_ns: int = 0
    inferences: int = 0
    executions: int = 0
    batches: dict[int, int] = field(default_factory=dict)

    @classmethod
    def of(cls, stats: ModelStatistics) -> _Counters:
        return cls(
            success=stats.success.count,
            failures={
                reason: stats.failures_by_reason.get(reason, 0) for reason in FAILURE_REASONS
            },
            latency=list(stats.latency.counts),
            queue_ns=stats.queue.ns,
            compute_ns=stats.compute_input.ns + stats.compute_infer.ns + stats.compute_output.ns,
            inferences=stats.inference_count,
            executions=stats.execution_count,
            batches={size: stat.infer.count for size, stat in stats.batches.items()},
        )


class TelemetryBuilder:
    """Turns cumulative statistics into per-interval telemetry."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self._previous: dict[tuple[str, int, str], _Counters] = {}
        self._last_time = time.monotonic()
        psutil.cpu_percent(None)  # the first call only primes the counter

    def build(
        self,
        models: Iterable[ServedModel],
        outbox: OutboxStats | None,
        host: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """One telemetry payload covering the time since the previous call.

        `host` is `host_metrics(...)`, read by the caller in a worker thread (psutil and NVML
        calls block); the model statistics are read here, on the event loop that owns them.
        """
        now = time.monotonic()
        interval = max(1e-6, now - self._last_time)
        self._last_time = now
        return {
            "interval_s": round(interval, 3),
            "models": [self._model(model, interval) for model in models],
            "host": host if host is not None else host_metrics(self.state_dir),
            "outbox": None
            if outbox is None
            else {
                "queued": outbox.queued,
                "queued_bytes": outbox.queued_bytes,
                "dropped": outbox.dropped,
            },
        }

    def _model(self, model: ServedModel, interval: float) -> dict[str, Any]:
        stats = model.stats
        key = (model.name, model.version, stats.backend)
        now = _Counters.of(stats)
        before = self._previous.get(key, _Counters())
        self._previous[key] = now
        if now.success < before.success or now.inferences < before.inferences:
            before = _Counters()  # reloaded: the counters started again
        failures = {r: now.failures[r] - before.failures.get(r, 0) for r in FAILURE_REASONS}
        requests = now.success - before.success + sum(failures.values())
        latency = [
            c - (before.latency[i] if i < len(before.latency) else 0)
            for i, c in enumerate(now.latency)
        ]
        batches = {
            str(size): count - before.batches.get(size, 0)
            for size, count in sorted(now.batches.items())
            if count - before.batches.get(size, 0)
        }
        return {
            "model": model.name,
            "version": model.version,
            "backend": stats.backend,
            "state": model.state.value,
            "requests": requests,
            "success": now.success - before.success,
            "errors": failures,
            "latency_buckets_s": list(LATENCY_BUCKETS),
            "latency_counts": latency,
            "queue_us": (now.queue_ns - before.queue_ns) // 1000,
            "compute_us": (now.compute_ns - before.compute_ns) // 1000,
            "inferences": now.inferences - before.inferences,
            "executions": now.executions - before.executions,
            "batch_sizes": batches,
            "throughput_rps": round(requests / interval, 3),
            "pending": stats.pending,
        }


def host_metrics(state_dir: Path) -> dict[str, Any]:
    """CPU, memory, disk (of the state directory), temperatures and GPU use where available."""
    memory = psutil.virtual_memory()
    disk = psutil.disk_usage(str(state_dir if state_dir.exists() else Path("/")))
    metrics: dict[str, Any] = {
        "cpu_percent": psutil.cpu_percent(None),
        "load_avg": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "memory_total_bytes": memory.total,
        "memory_used_bytes": memory.total - memory.available,
        "disk_total_bytes": disk.total,
        "disk_free_bytes": disk.free,
        "process_rss_bytes": psutil.Process().memory_info().rss,
    }
    temperatures = getattr(psutil, "sensors_temperatures", None)
    readings = temperatures() if temperatures is not None else {}
    metrics["temperatures_c"] = {
        name: max(sensor.current for sensor in sensors)
        for name, sensors in readings.items()
        if sensors
    }
    metrics["gpus"] = gpu_usage()
    return metrics


def status_payload(
    online: bool,
    models: Iterable[ServedModel],
    hardware: HardwareInfo | None,
    serving: Collection[ServedModel] = (),
) -> dict[str, Any]:
    """The retained presence message: who this is, what it runs, on which backend.

    `serving` are the versions that answer requests naming no version; a version also loaded
    but not among them is kept for a quick revert (or was just given up) and is marked so.
    """
    if not online:
        return {"state": "offline"}
    return {
        "state": "online",
        "agent_version": __version__,
        "models": [
            {
                "model": m.name,
                "version": m.version,
                "state": m.state.value,
                "serving": m in serving,
                "backend": m.stats.backend,
                "file": m.description.path.name if m.description else None,
                "selection": None
                if m.report is None
                else {
                    "chosen": m.report.chosen,
                    "policy": m.report.policy,
                    "source": m.report.source,
                },
            }
            for m in models
        ],
        "hardware": None
        if hardware is None
        else {
            "arch": hardware.arch,
            "cpu_model": hardware.cpu_model,
            "logical_cores": hardware.logical_cores,
            "cpu_features": list(hardware.cpu_features),
            "memory_bytes": hardware.memory_bytes,
            "gpus": [g.name for g in hardware.gpus],
            "fingerprint": hardware.fingerprint(),
            # The inference runtimes installed here and their versions, for the inventory.
            "runtimes": {r.name: r.version for r in hardware.runtimes if r.installed},
        },
    }
