"""The local health gate a new version must pass while it serves on probation.

The window ends after `duration_s` or, when `requests` is set, as soon as that many requests
were answered, whichever comes first. The new version fails as soon as its backend error rate
passes `max_error_rate` (after `min_requests`), or, at the end, when its p95 latency is more than
`max_latency_ratio` times the previous version's (compared only when both saw `min_requests`).
It needs nothing from the control plane: a device offline still reverts a bad version.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.stats import LatencyHistogram, ModelStatistics


@dataclass(frozen=True, slots=True)
class ProbationPolicy:
    """When a version on probation passes or fails."""

    duration_s: float = 60.0
    requests: int = 0  # 0 = the window is the duration alone
    max_error_rate: float = 0.05
    max_latency_ratio: float = 2.0
    min_requests: int = 20
    check_interval_s: float = 0.25


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of a probation window, with the figures it was judged on."""

    passed: bool
    reason: str
    figures: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class _Baseline:
    """A copy of counters at the start of the window, to judge only what happened in it."""

    success: int
    errors: int
    latency: list[int]

    @classmethod
    def of(cls, stats: ModelStatistics) -> _Baseline:
        return cls(
            stats.success.count, stats.failures_by_reason["backend"], list(stats.latency.counts)
        )

    def since(self, stats: ModelStatistics) -> tuple[int, int, LatencyHistogram]:
        """Successes, backend errors and latencies observed since this baseline."""
        latency = LatencyHistogram(
            counts=[
                now - then for now, then in zip(stats.latency.counts, self.latency, strict=True)
            ]
        )
        return (
            stats.success.count - self.success,
            stats.failures_by_reason["backend"] - self.errors,
            latency,
        )


class ProbationGate:
    """Watches a new version's statistics against the previous version's."""

    def __init__(
        self,
        policy: ProbationPolicy,
        candidate: ModelStatistics,
        previous: ModelStatistics | None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.policy = policy
        self._candidate = candidate
        self._previous = previous
        self._start = _Baseline.of(candidate)
        self._clock = clock

    async def watch(self) -> Verdict:
        """Wait out the window (checking as it goes) and judge."""
        loop = asyncio.get_running_loop()
        clock = self._clock or loop.time
        deadline = clock() + self.policy.duration_s
        while True:
            verdict = self.judge(final=False)
            if verdict is not None:
                return verdict
            if clock() >= deadline:
                final = self.judge(final=True)
                assert final is not None
                return final
            await asyncio.sleep(self.policy.check_interval_s)

    def judge(self, final: bool) -> Verdict | None:
        """A verdict now (early failure, or the request count reached), or None to go on."""
        policy = self.policy
        success, errors, latency = self._start.since(self._candidate)
        answered = success + errors
        figures: dict[str, Any] = {"requests": answered, "errors": errors}
        if answered >= policy.min_requests and answered:
            rate = errors / answered
            figures["error_rate"] = round(rate, 4)
            if rate > policy.max_error_rate:
                return Verdict(
                    False, f"error rate {rate:.1%} is above {policy.max_error_rate:.1%}", figures
                )
        if not final and not (policy.requests and answered >= policy.requests):
            return None
        p95 = latency.quantile(0.95)
        figures["p95_s"] = p95
        previous = self._previous.latency if self._previous is not None else None
        if (
            p95 is not None
            and previous is not None
            and latency.count >= policy.min_requests
            and previous.count >= policy.min_requests
        ):
            baseline = previous.quantile(0.95)
            assert baseline is not None
            figures["previous_p95_s"] = baseline
            if p95 > policy.max_latency_ratio * baseline:
                return Verdict(
                    False,
                    f"p95 latency {p95 * 1000:.2f} ms is more than {policy.max_latency_ratio}x "
                    f"the previous version's {baseline * 1000:.2f} ms",
                    figures,
                )
        return Verdict(True, f"{answered} requests, {errors} errors", figures)
