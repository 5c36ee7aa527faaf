"""Gate thresholds: parsing, and verdicts with and without enough traffic."""

from __future__ import annotations

import pytest

from control_plane.fleet_stats import VersionHealth
from control_plane.rollout_gates import Gates, evaluate
from control_plane.rollout_plan import InvalidRollout
from shared.histogram import LATENCY_COUNTS_LENGTH


def health(requests: int, errors: int = 0, bucket: int = 10) -> VersionHealth:
    counts = [0] * LATENCY_COUNTS_LENGTH
    counts[bucket] = requests - errors
    return VersionHealth(1, requests, errors, tuple(counts))


def test_defaults_round_trip_and_bad_values_are_refused() -> None:
    gates = Gates.parse(None)
    assert Gates.parse(gates.as_json()) == gates
    for bad in (
        {"max_error_rate": 2},
        {"max_failure_pct": -1},
        {"max_p95_ratio": "fast"},
        {"on_failure": "explode"},
        {"speed": 1},
    ):
        with pytest.raises(InvalidRollout):
            Gates.parse(bad)


def test_each_gate_compares_its_value_with_its_threshold() -> None:
    gates = Gates.parse({"max_failure_pct": 25, "max_error_rate": 0.1, "max_p95_ratio": 2})
    outcomes = {"a": "active", "b": "active", "c": "active", "d": "failed"}
    results = {r.gate: r for r in evaluate(gates, outcomes, health(100, 5, 11), health(100))}
    assert results["failure"].value == 25.0
    assert results["failure"].passed
    assert results["error_rate"].value == pytest.approx(0.05)
    assert results["error_rate"].passed
    assert 1.0 < (results["p95_ratio"].value or 0) <= 2.0
    assert results["p95_ratio"].passed
    slow = {r.gate: r for r in evaluate(gates, outcomes, health(100, 0, 13), health(100))}
    assert not slow["p95_ratio"].passed


def test_pending_devices_count_only_once_timed_out() -> None:
    gates = Gates.parse({"max_failure_pct": 0})
    pending = evaluate(gates, {"a": "active", "b": "pending"}, health(0), None)[0]
    assert pending.passed
    timed_out = evaluate(gates, {"a": "active", "b": "timed_out"}, health(0), None)[0]
    assert not timed_out.passed
    assert "1 timed out" in timed_out.detail


def test_without_traffic_the_figures_do_not_block_unless_traffic_is_required() -> None:
    quiet = evaluate(Gates.parse(None), {"a": "active"}, health(3, 3), health(3))
    assert all(r.passed for r in quiet)
    assert quiet[1].value is None
    assert "not enough data" in quiet[1].detail
    strict = evaluate(Gates.parse({"require_traffic": True}), {"a": "active"}, health(3), None)
    assert [r.passed for r in strict] == [True, False, False]
