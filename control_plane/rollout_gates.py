"""A rollout's gates: the thresholds a wave must meet before the next one starts.

Three gates, evaluated over the devices of the wave once it has been observed:

- **failure**: the percentage of the wave's devices whose activation failed (or that were not
  active within the activation timeout) must not exceed `max_failure_pct`.
- **error rate**: errors / requests of the new version on those devices since the wave
  started must not exceed `max_error_rate`.
- **latency**: the new version's p95 must not exceed `max_p95_ratio` times the p95 the
  previous version had on the same devices (in `baseline_window_s` before the rollout).

The error-rate and latency gates need traffic: with fewer than `min_requests` requests (on
either side of the latency comparison) they report "no data" and do not block, unless
`require_traffic` is set, in which case they fail. `on_failure` says what a failing gate does:
`rollback` (default: stop and point every device of the rollout back at its previous version)
or `pause` (hold the rollout for an operator).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.fleet_stats import FAILED, VersionHealth
from control_plane.rollout_plan import InvalidRollout

ON_FAILURE = ("rollback", "pause")
TIMED_OUT = "timed_out"  # an outcome: not active within the activation timeout


@dataclass(frozen=True)
class Gates:
    """The thresholds of one rollout."""

    max_failure_pct: float = 10.0
    max_error_rate: float = 0.05
    max_p95_ratio: float = 1.5
    min_requests: int = 20
    require_traffic: bool = False
    baseline_window_s: float = 3600.0
    on_failure: str = "rollback"

    @classmethod
    def parse(cls, body: Mapping[str, Any] | None) -> Gates:
        """Defaults for whatever the request leaves out; unknown fields are refused."""
        values = dict(body or {})
        defaults = cls()
        unknown = set(values) - set(defaults.as_json())
        if unknown:
            raise InvalidRollout(f"unknown gate fields: {', '.join(sorted(unknown))}")
        gates = cls(
            max_failure_pct=_number(values, "max_failure_pct", defaults.max_failure_pct, 0, 100),
            max_error_rate=_number(values, "max_error_rate", defaults.max_error_rate, 0, 1),
            max_p95_ratio=_number(values, "max_p95_ratio", defaults.max_p95_ratio, 0, None),
            min_requests=int(_number(values, "min_requests", defaults.min_requests, 0, None)),
            require_traffic=bool(values.get("require_traffic", defaults.require_traffic)),
            baseline_window_s=_number(
                values, "baseline_window_s", defaults.baseline_window_s, 1, None
            ),
            on_failure=str(values.get("on_failure", defaults.on_failure)),
        )
        if gates.on_failure not in ON_FAILURE:
            raise InvalidRollout(f"on_failure must be one of {', '.join(ON_FAILURE)}")
        return gates

    def as_json(self) -> dict[str, Any]:
        """The thresholds as stored with the rollout."""
        return {
            "max_failure_pct": self.max_failure_pct,
            "max_error_rate": self.max_error_rate,
            "max_p95_ratio": self.max_p95_ratio,
            "min_requests": self.min_requests,
            "require_traffic": self.require_traffic,
            "baseline_window_s": self.baseline_window_s,
            "on_failure": self.on_failure,
        }


def _number(
    values: Mapping[str, Any], key: str, default: float, low: float, high: float | None
) -> float:
    raw = values.get(key, default)
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidRollout(f"gate {key} must be a number, not {raw!r}")
    if raw < low or (high is not None and raw > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise InvalidRollout(f"gate {key} must be {bounds}, not {raw}")
    return float(raw)


@dataclass(frozen=True)
class GateResult:
    """One gate's verdict: the measured value against its threshold."""

    gate: str
    value: float | None  # None: no data
    threshold: float
    passed: bool
    detail: str

    def as_json(self) -> dict[str, Any]:
        """As shown by the API and stored per wave."""
        return {
            "gate": self.gate,
            "value": self.value,
            "threshold": self.threshold,
            "passed": self.passed,
            "detail": self.detail,
        }


def evaluate(
    gates: Gates,
    outcomes: Mapping[str, str],
    new: VersionHealth,
    baseline: VersionHealth | None,
) -> list[GateResult]:
    """Judge one wave: `outcomes` maps each device to active, failed, timed_out or pending.

    A device still pending (within its activation timeout) counts neither way.
    """
    results = [_failure_gate(gates, outcomes)]
    results.append(_error_gate(gates, new))
    results.append(_latency_gate(gates, new, baseline))
    return results


def _failure_gate(gates: Gates, outcomes: Mapping[str, str]) -> GateResult:
    total = len(outcomes)
    failed = sum(1 for outcome in outcomes.values() if outcome == FAILED)
    timed_out = sum(1 for outcome in outcomes.values() if outcome == TIMED_OUT)
    percent = 100.0 * (failed + timed_out) / total if total else 0.0
    return GateResult(
        "failure",
        round(percent, 3),
        gates.max_failure_pct,
        percent <= gates.max_failure_pct,
        f"{failed} of {total} devices failed to activate, {timed_out} timed out",
    )


def _error_gate(gates: Gates, new: VersionHealth) -> GateResult:
    if new.requests < max(1, gates.min_requests) or new.error_rate is None:
        return _no_data(
            gates, "error_rate", gates.max_error_rate, f"{new.requests} requests so far"
        )
    rate = new.error_rate
    return GateResult(
        "error_rate",
        round(rate, 6),
        gates.max_error_rate,
        rate <= gates.max_error_rate,
        f"{new.errors} errors in {new.requests} requests",
    )


def _latency_gate(gates: Gates, new: VersionHealth, baseline: VersionHealth | None) -> GateResult:
    enough = max(1, gates.min_requests)
    if baseline is None or baseline.requests < enough:
        seen = 0 if baseline is None else baseline.requests
        return _no_data(
            gates, "p95_ratio", gates.max_p95_ratio, f"{seen} baseline requests on these devices"
        )
    if new.requests < enough:
        return _no_data(gates, "p95_ratio", gates.max_p95_ratio, f"{new.requests} requests so far")
    new_p95 = new.latency_quantile(0.95)
    old_p95 = baseline.latency_quantile(0.95)
    if new_p95 is None or old_p95 is None or old_p95 <= 0:
        return _no_data(gates, "p95_ratio", gates.max_p95_ratio, "no latency figures")
    ratio = new_p95 / old_p95
    return GateResult(
        "p95_ratio",
        round(ratio, 4),
        gates.max_p95_ratio,
        ratio <= gates.max_p95_ratio,
        f"p95 {new_p95 * 1000:.2f} ms against {old_p95 * 1000:.2f} ms before",
    )


def _no_data(gates: Gates, name: str, threshold: float, detail: str) -> GateResult:
    verdict = "fails: traffic is required" if gates.require_traffic else "does not block"
    return GateResult(
        name, None, threshold, not gates.require_traffic, f"not enough data ({detail}); {verdict}"
    )
