"""Per-model-version inference statistics, in the shape of Triton's statistics extension.

One `ModelStatistics` per served model version is the single source of truth: `/v2/.../stats`
renders it as Triton does, the Prometheus collector reads it at scrape time, and the telemetry
reporter will sample it. It is only touched from the event loop thread, so it needs no lock.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

# The bounds and the quantile estimate are shared with the control plane, which merges these
# histograms across devices: one definition keeps fleet and device figures in agreement.
from shared.histogram import LATENCY_BUCKETS as LATENCY_BUCKETS
from shared.histogram import quantile

if TYPE_CHECKING:
    from agent.batching import ExecutionTimings

# Failure reasons, as Triton labels `nv_inference_request_failure`.
FAILURE_REASONS = ("rejected", "canceled", "backend", "invalid", "other")


@dataclass(slots=True)
class Duration:
    """A cumulative count and total nanoseconds (Triton's `$duration_stat`)."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        """Add `count` events that took `ns` nanoseconds in total."""
        self.count += count
        self.ns += ns

    def as_json(self) -> dict[str, int]:
        """Return `{"count", "ns"}`."""
        return {"count": self.count, "ns": self.ns}


@dataclass(slots=True)
class BatchStat:
    """Compute time spent on executions of one batch size."""

    input: Duration = field(default_factory=Duration)
    infer: Duration = field(default_factory=Duration)
    output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class LatencyHistogram:
    """A fixed-bucket histogram of request latency in seconds (mergeable across devices)."""

    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total_s: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one request that took `seconds`."""
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total_s += seconds

    @property
    def count(self) -> int:
        """Number of observations."""
        return sum(self.counts)

    def quantile(self, q: float) -> float | None:
        """Estimate a quantile, interpolating inside its bucket; None with no observations."""
        return quantile(self.counts, q)


@dataclass(slots=True)
class ModelStatistics:
    """Counters for one model version on one backend."""

    name: str
    version: str
    backend: str = ""
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    failures_by_reason: Counter[str] = field(default_factory=Counter)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    inference_count: int = 0
    execution_count: int = 0
    pending: int = 0
    last_inference_ms: int = 0
    batches: dict[int, BatchStat] = field(default_factory=dict)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)

    def set_pending(self, pending: int) -> None:
        """Record how many requests wait in the queue now."""
        self.pending = pending

    def record_queue(self, ns: int) -> None:
        """Record the time one request spent queued."""
        self.queue.add(ns)

    def record_execution(self, requests: int, rows: int, timings: ExecutionTimings) -> None:
        """Record one model execution that served `requests` requests and `rows` batch rows."""
        self.execution_count += 1
        self.inference_count += rows
        self.last_inference_ms = int(time.time() * 1000)
        # Triton charges each request its share of compute; we do the same per request.
        self.compute_input.add(timings.input_ns * requests, requests)
        self.compute_infer.add(timings.infer_ns * requests, requests)
        self.compute_output.add(timings.output_ns * requests, requests)
        stat = self.batches.get(rows)
        if stat is None:
            stat = self.batches[rows] = BatchStat()
        stat.input.add(timings.input_ns)
        stat.infer.add(timings.infer_ns)
        stat.output.add(timings.output_ns)

    def record_success(self, ns: int) -> None:
        """Record one request answered successfully after `ns` nanoseconds end to end."""
        self.success.add(ns)
        self.latency.observe(ns / 1e9)

    def record_failure(self, reason: str, ns: int = 0) -> None:
        """Record one failed request and why (one of `FAILURE_REASONS`)."""
        self.fail.add(ns)
        self.failures_by_reason[reason] += 1

    def as_triton(self) -> dict[str, Any]:
        """Render the statistics as one entry of Triton's `model_stats` list."""
        return {
            "name": self.name,
            "version": self.version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {
                "success": self.success.as_json(),
                "fail": self.fail.as_json(),
                "queue": self.queue.as_json(),
                "compute_input": self.compute_input.as_json(),
                "compute_infer": self.compute_infer.as_json(),
                "compute_output": self.compute_output.as_json(),
                "cache_hit": {"count": 0, "ns": 0},
                "cache_miss": {"count": 0, "ns": 0},
            },
            "response_stats": {},
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": stat.input.as_json(),
                    "compute_infer": stat.infer.as_json(),
                    "compute_output": stat.output.as_json(),
                }
                for size, stat in sorted(self.batches.items())
            ],
            "memory_usage": [],
        }
