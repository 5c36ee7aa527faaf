"""`docs/reliability.md`: one section per scenario, each with what it did and its figures."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from pathlib import Path

from bench.chaos.outcome import Outcome
from bench.report import aligned_table, machine, markers, write_section

RELIABILITY_MD = Path(__file__).resolve().parents[2] / "docs" / "reliability.md"

INTRO = """# Reliability

What the system does under faults, overload and hostile input, measured by the chaos suite
against real processes on 127.0.0.1. Each section below is written by `make chaos`
(`.venv/bin/python -m bench.chaos`); `--only NAME` reruns one scenario and rewrites only its
section. `make test` runs the same scenarios with `--quick` counts (tests/chaos), so a
regression fails CI; the figures here come from the full setting.
"""


def section_name(outcome: Outcome) -> str:
    """The marker name of a scenario's section, e.g. `chaos-overload`."""
    return f"chaos-{outcome.name}"


def render(outcome: Outcome, command: str, when: datetime.datetime | None = None) -> str:
    """A scenario's section, between its markers."""
    start, end = markers(section_name(outcome))
    stamp = (when or datetime.datetime.now(datetime.UTC)).strftime("%Y-%m-%d %H:%M UTC")
    table = aligned_table(
        ("figure", "value", "target", ""),
        [(f.figure, f.value, f.target, f.verdict) for f in outcome.figures],
    )
    lines = [
        start,
        f"## {outcome.title}",
        "",
        outcome.did,
        "",
        table,
        "",
        f"Run {stamp} on {machine()}: `{command}`",
    ]
    if outcome.notes:
        lines += ["", *(f"- {note}" for note in outcome.notes)]
    lines.append(end)
    return "\n".join(lines)


def write(path: Path, outcomes: Sequence[Outcome], command: str) -> None:
    """Write each outcome's section into `path`, keeping the sections of scenarios not run."""
    for outcome in outcomes:
        write_section(path, section_name(outcome), render(outcome, command), intro=INTRO)
