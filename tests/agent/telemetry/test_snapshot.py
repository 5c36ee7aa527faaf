"""Telemetry bodies: per-interval deltas of the cumulative statistics, host metrics, status."""

from __future__ import annotations

import bisect
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from agent.batching import ExecutionTimings
from agent.model import ModelSpec, ServedModel
from agent.stats import LATENCY_BUCKETS
from agent.telemetry.outbox import OutboxStats
from agent.telemetry.snapshot import TelemetryBuilder, status_payload


def test_each_report_covers_only_its_interval(tmp_path: Path) -> None:
    with ThreadPoolExecutor(1) as executor:
        model = ServedModel(ModelSpec("m", 3, (tmp_path / "m.onnx",)), executor)
    model.stats.backend = "onnxruntime/CPU"
    builder = TelemetryBuilder(tmp_path)
    for _ in range(5):
        model.stats.record_success(300_000)  # 0.3 ms
    model.stats.record_failure("backend")
    model.stats.record_execution(5, 5, ExecutionTimings(1000, 2000, 3000))
    first = builder.build([model], OutboxStats(2, 100, {"telemetry": 1}))
    (entry,) = first["models"]
    assert (entry["model"], entry["version"], entry["backend"]) == ("m", 3, "onnxruntime/CPU")
    assert entry["requests"] == 6
    assert entry["success"] == 5
    assert entry["errors"]["backend"] == 1
    assert entry["batch_sizes"] == {"5": 1}
    assert sum(entry["latency_counts"]) == 5
    assert entry["latency_counts"][bisect.bisect_left(LATENCY_BUCKETS, 0.0003)] == 5
    assert first["outbox"] == {"queued": 2, "queued_bytes": 100, "dropped": {"telemetry": 1}}
    assert first["host"]["memory_total_bytes"] > 0
    assert isinstance(first["host"]["gpus"], list)
    model.stats.record_success(300_000)
    (entry,) = builder.build([model], None)["models"]
    assert entry["requests"] == 1
    assert entry["errors"]["backend"] == 0
    assert entry["batch_sizes"] == {}


def test_status_says_offline_or_what_runs(tmp_path: Path) -> None:
    assert status_payload(False, [], None) == {"state": "offline"}
    with ThreadPoolExecutor(1) as executor:
        model = ServedModel(ModelSpec("m", 1, (tmp_path / "m.onnx",)), executor)
        other = ServedModel(ModelSpec("m", 2, (tmp_path / "m.onnx",)), executor)
    status = status_payload(True, [model, other], None, serving=[other])
    assert status["state"] == "online"
    assert status["models"][0]["model"] == "m"
    assert status["models"][0]["state"] == "UNAVAILABLE"
    assert [m["serving"] for m in status["models"]] == [False, True]


def test_quantiles_interpolate_inside_buckets() -> None:
    from agent.stats import LatencyHistogram

    histogram = LatencyHistogram()
    for _ in range(100):
        histogram.observe(0.001)
    p95 = histogram.quantile(0.95)
    assert p95 is not None
    lower, upper = 0.000854, 0.00128  # the bucket that holds 1 ms
    assert lower < p95 <= upper, "inside the bucket of the true value"
    assert LatencyHistogram().quantile(0.5) is None
