"""The summary `make bench` writes at the head of docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

from bench.summary import Ran, place, render, verdicts

DOCUMENT = """# Benchmarks

intro

<!-- bench:alpha:start -->
## Alpha (issue: one)

| figure | value  | p95 ms | baseline  | ratio | target  |        |
|--------|--------|--------|-----------|-------|---------|--------|
| fast   | 10 r/s | 1.5    | raw 20    | 0.50x | >= 0.8x | MISSED |
| info   | 3 r/s  |        |           |       |         |        |
| small  | 5 MB   |        | base 4 MB | 1.25x | <= 6 MB | met    |
<!-- bench:alpha:end -->

prose outside the sections: | not | a | row | met |

<!-- bench:beta:start -->
## Beta

| figure | p50 ms | p95 ms | target   |     |
|--------|--------|--------|----------|-----|
| page   | 3.0    | 9.0    | < 300 ms | met |
<!-- bench:beta:end -->
"""


def test_verdicts_are_the_judged_rows_of_every_section() -> None:
    found = verdicts(DOCUMENT)
    assert [(v.section, v.figure, v.verdict) for v in found] == [
        ("alpha", "fast", "MISSED"),
        ("alpha", "small", "met"),
        ("beta", "page", "met"),
    ]
    fast, small, page = found
    assert (fast.value, fast.baseline, fast.ratio, fast.target) == (
        "10 r/s, p95 1.5 ms", "raw 20", "0.50x", ">= 0.8x",
    )  # fmt: skip
    assert small.title == "Alpha (issue: one)"
    assert page.value == "p95 9.0 ms"


def test_the_summary_goes_first_and_replaces_the_last_one() -> None:
    summary = render([Ran("bench.alpha", 90.0, 0)], verdicts(DOCUMENT), ".venv/bin/python -m bench")
    assert "Targets: 2 of 3 met." in summary
    assert "| `bench.alpha` | 1.5 min | 0    |" in summary
    once = place(DOCUMENT, summary)
    assert once.index("bench:summary:start") < once.index("bench:alpha:start")
    assert once.startswith("# Benchmarks\n\nintro\n\n")
    again = place(once, summary.replace("2 of 3", "9 of 9"))
    assert again.count("bench:summary:start") == 1
    assert "9 of 9" in again
    assert "2 of 3" not in again
    assert verdicts(again) == verdicts(DOCUMENT)  # the summary's own table is not re-read


def test_every_benchmark_with_targets_is_summarized_from_the_committed_report() -> None:
    document = (Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md").read_text()
    sections = {v.section for v in verdicts(document)}
    assert {"serving", "bundles", "reporting", "fleet", "dashboard"} <= sections
