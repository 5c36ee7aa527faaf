"""A smoke run of `bench.fleet`: the ingest and device-list parts at toy sizes, and its section.

The convergence part is left out: it enrolls simulated devices into `.bench/`, which is the
benchmark's to keep, not a test's.
"""

from __future__ import annotations

from pathlib import Path

from bench.fleet import Plan, collect, parse_args
from bench.fleet_report import ANALYSIS_MARK, render_section, write_fleet_section
from bench.report import markers


def test_a_small_run_writes_the_fleet_section(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    output.write_text("# Benchmarks\n\nOther sections stay.\n")
    argv = ["--skip-convergence", "--messages", "300", "--ingest-runs", "1"]
    argv += ["--list-devices", "150", "--requests", "3", "--output", str(output)]
    args = parse_args(argv)

    results = collect(Plan.of(args), args)
    write_fleet_section(output, render_section(results, "python -m bench.fleet ..."))

    assert results.ingest is not None
    assert sorted(results.ingest) == ["in process", "publisher apart"]
    assert results.listing is not None
    assert results.convergence is None
    assert results.listing.devices == 150
    assert results.listing.timings[0].matched == 150  # the first page's total
    text = output.read_text()
    start, end = markers("fleet")
    assert text.startswith("# Benchmarks\n\nOther sections stay.\n")
    assert text.count(start) == text.count(end) == 1
    assert "SQLite, 300 telemetry messages, publisher apart" in text
    assert "GET one device (GET /devices/{id}), 150 devices" in text


def test_a_new_run_keeps_the_hand_written_analysis(tmp_path: Path) -> None:
    output = tmp_path / "benchmarks.md"
    start, end = markers("fleet")
    output.write_text(f"intro\n\n{start}\nold figures\n\n{ANALYSIS_MARK}\nWhy.\n{end}\n\ntail\n")

    write_fleet_section(output, f"{start}\nnew figures")

    assert (
        output.read_text()
        == f"intro\n\n{start}\nnew figures\n\n{ANALYSIS_MARK}\nWhy.\n{end}\n\ntail\n"
    )
