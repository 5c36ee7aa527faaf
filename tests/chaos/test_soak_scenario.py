"""The soak scenario in its quick setting: half the capacity without errors or descriptor leaks.

A 20-second soak cannot measure a slow leak; it checks that the scenario runs end to end, that
every request and every metrics poll succeeds, and that RSS and fds come back to their idle
values. The RSS slope is judged only in runs of ten minutes or more, which the test asserts.
"""

from __future__ import annotations

import re
from pathlib import Path

from bench.chaos.http_load import ANSWER_TIMEOUT_S
from bench.chaos.outcome import ChaosOptions, Figure, Outcome
from bench.chaos.report import render
from bench.chaos.soak import run
from bench.chaos.soak_figures import TIMELINE_ROWS

P99 = "p99 first tenth -> last tenth"


def figure(outcome: Outcome, name: str) -> Figure:
    """The scenario's figure called `name`."""
    return next(f for f in outcome.figures if f.figure == name)


def test_half_capacity_runs_without_errors_or_leaked_descriptors(tmp_path: Path) -> None:
    outcome = run(ChaosOptions.quick(tmp_path))

    table = render(outcome, "tests/chaos")
    assert outcome.passed, table
    for judged in (
        "errors (non-200 answers, resets, timeouts)",
        "/metrics and stats polls",
        "RSS under load, end of first tenth -> end",
        "RSS idle, before -> after the load",
        "fds start / peak / end",
    ):
        assert figure(outcome, judged).met is True, table
    assert figure(outcome, "RSS slope, second half of the load").met is None  # too short
    served = figure(outcome, "requests served").value
    assert int(served.split(" ")[0].replace(",", "")) > 0, table
    p99s = re.findall(r"[\d,]+\.\d", figure(outcome, P99).value.split(" ms")[0])
    assert len(p99s) == 2, table
    for p99 in p99s:  # latencies of answered requests, so below the client's answer timeout
        assert 0 < float(p99.replace(",", "")) <= ANSWER_TIMEOUT_S * 1000, table
    timeline = [f for f in outcome.figures if f.figure.startswith("timeline ")]
    assert len(timeline) == TIMELINE_ROWS
