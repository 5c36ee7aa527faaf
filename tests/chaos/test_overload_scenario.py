"""The overload scenario in its quick setting: 10x capacity is shed as 503s, memory stays bounded.

The scenario judges its own targets (Retry-After on every 503, no other error, bounded RSS,
health and a correct answer right after, fds back down); the test adds that the load really was
an overload. Latency is reported by the scenario, never asserted here.
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.chaos.outcome import ChaosOptions, Figure, Outcome
from bench.chaos.overload import run
from bench.chaos.report import render


def figure(outcome: Outcome, name: str) -> Figure:
    """The scenario's figure called `name`."""
    return next(f for f in outcome.figures if f.figure == name)


def test_ten_times_capacity_is_shed_with_503s_and_the_agent_stays_bounded(
    tmp_path: Path,
) -> None:
    outcome = run(ChaosOptions.quick(tmp_path))

    table = render(outcome, "tests/chaos")
    assert outcome.passed, table
    share = re.search(r"\(([\d.]+)%\)", figure(outcome, "answered 503").value)
    assert share is not None, table
    assert float(share.group(1)) > 50, table  # it really was an overload
    for judged in (
        "503s with Retry-After",
        "other errors (non-200/503, resets, timeouts)",
        "peak RSS vs idle",
        "healthy and a correct answer right after",
        "fds idle / peak / after",
    ):
        assert figure(outcome, judged).met is True, table
    assert figure(outcome, "p99 of admitted (200) vs at capacity").met is None
