"""Prometheus metrics in Triton's style, read from the models' statistics at scrape time.

Nothing is counted twice: the collector renders `ModelStatistics` (the same numbers that
`/v2/models/stats` returns) whenever Prometheus scrapes, so the hot path pays nothing for it.
Every series is labelled by model, version and backend (`runtime/device`).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from agent.model import ModelState
from agent.repository import ModelRepository
from agent.stats import FAILURE_REASONS, LATENCY_BUCKETS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
LABELS = ["model", "version", "backend"]


class InferenceCollector(Collector):
    """Exposes every served model's statistics as Prometheus metrics."""

    def __init__(self, repository: ModelRepository) -> None:
        self._repository = repository

    def collect(self) -> Iterator[Metric]:
        """Build the metric families from the current statistics."""
        p = "edgefleet_inference_"
        success = CounterMetricFamily(p + "request_success", "Successful requests", labels=LABELS)
        failure = CounterMetricFamily(
            p + "request_failure", "Failed requests by reason", labels=[*LABELS, "reason"]
        )
        count = CounterMetricFamily(p + "count", "Inferences (batch rows)", labels=LABELS)
        executions = CounterMetricFamily(p + "exec_count", "Model executions", labels=LABELS)
        pending = GaugeMetricFamily(p + "pending_request_count", "Queued requests", labels=LABELS)
        durations = {
            key: CounterMetricFamily(f"{p}{key}_duration_us", text, labels=LABELS)
            for key, text in (
                ("request", "Cumulative end-to-end request time in microseconds"),
                ("queue", "Cumulative time requests spent queued in microseconds"),
                ("compute_input", "Cumulative time merging inputs in microseconds"),
                ("compute_infer", "Cumulative time running the model in microseconds"),
                ("compute_output", "Cumulative time splitting outputs in microseconds"),
            )
        }
        latency = HistogramMetricFamily(
            p + "request_latency_seconds",
            "End-to-end latency of successful requests",
            labels=LABELS,
        )
        batch = HistogramMetricFamily(p + "batch_size", "Rows per model execution", labels=LABELS)
        ready = GaugeMetricFamily(
            "edgefleet_model_ready", "1 when the model version is ready", labels=LABELS
        )
        for model in self._repository.all():
            s = model.stats
            labels = [s.name, s.version, s.backend or "none"]
            ready.add_metric(labels, 1.0 if model.state is ModelState.READY else 0.0)
            success.add_metric(labels, s.success.count)
            for reason in FAILURE_REASONS:
                failure.add_metric([*labels, reason], s.failures_by_reason.get(reason, 0))
            count.add_metric(labels, s.inference_count)
            executions.add_metric(labels, s.execution_count)
            pending.add_metric(labels, s.pending)
            durations["request"].add_metric(labels, (s.success.ns + s.fail.ns) / 1000)
            durations["queue"].add_metric(labels, s.queue.ns / 1000)
            durations["compute_input"].add_metric(labels, s.compute_input.ns / 1000)
            durations["compute_infer"].add_metric(labels, s.compute_infer.ns / 1000)
            durations["compute_output"].add_metric(labels, s.compute_output.ns / 1000)
            latency.add_metric(
                labels, _cumulative(LATENCY_BUCKETS, s.latency.counts), sum_value=s.latency.total_s
            )
            batch_counts = [0] * (len(BATCH_BUCKETS) + 1)
            batch_sum = 0.0
            for size, stat in s.batches.items():
                slot = next(
                    (i for i, b in enumerate(BATCH_BUCKETS) if size <= b), len(BATCH_BUCKETS)
                )
                batch_counts[slot] += stat.infer.count
                batch_sum += size * stat.infer.count
            batch.add_metric(labels, _cumulative(BATCH_BUCKETS, batch_counts), sum_value=batch_sum)
        yield from (
            success,
            failure,
            count,
            executions,
            pending,
            *durations.values(),
            latency,
            batch,
            ready,
        )


def _cumulative(bounds: tuple[float, ...], counts: list[int]) -> list[tuple[str, float]]:
    """Turn per-bucket counts into Prometheus' cumulative `le` buckets."""
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip((*bounds, float("inf")), counts, strict=True):
        running += count
        buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return buckets


def build_registry(repository: ModelRepository) -> CollectorRegistry:
    """A registry of this agent's own (no global state): inference and process metrics."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(InferenceCollector(repository))
    ProcessCollector(namespace="edgefleet_agent", registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The text exposition format."""
    return generate_latest(registry)
