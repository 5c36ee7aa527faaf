"""The head of docs/benchmarks.md: what `make bench` ran, when, where, and every target's verdict.

Each benchmark writes its own section, with its figures, baselines and ratios. This module
reads those sections back and gathers the rows that carry a verdict (`met`, `MISSED`,
`INVALID: ...`) into one table, so a reader sees at a glance which targets held in the run.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Sequence
from dataclasses import dataclass

from bench.report import aligned_table, machine, markers

SECTION = "summary"
SECTION_RE = re.compile(r"<!-- bench:([\w-]+):start -->(.*?)<!-- bench:\1:end -->", re.DOTALL)
VERDICTS = ("met", "MISSED", "INVALID")


@dataclass(frozen=True)
class Verdict:
    """One judged figure of a benchmark section."""

    section: str
    title: str  # the section's heading
    figure: str
    value: str
    baseline: str
    ratio: str
    target: str
    verdict: str


@dataclass(frozen=True)
class Ran:
    """One benchmark of the run: its module, how long it took, and its exit status."""

    module: str
    seconds: float
    returncode: int


def _cells(line: str) -> list[str]:
    """The stripped cells of a Markdown table row."""
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _column(headers: Sequence[str], name: str) -> int | None:
    """The index of the first header that starts with `name` (`p95` finds `p95 ms`)."""
    for index, header in enumerate(headers):
        if header.startswith(name):
            return index
    return None


def verdicts(document: str) -> list[Verdict]:
    """Every table row with a verdict in the document's generated sections, in order."""
    found: list[Verdict] = []
    for match in SECTION_RE.finditer(document):
        section, body = match.group(1), match.group(2)
        if section == SECTION:
            continue
        title = next((ln[3:].strip() for ln in body.splitlines() if ln.startswith("## ")), section)
        headers: list[str] = []
        for line in body.splitlines():
            if not line.startswith("|"):
                headers = []
                continue
            cells = _cells(line)
            if not headers:
                headers = cells
                continue
            if set(line.strip()) <= {"|", "-", " "}:
                continue
            verdict = cells[-1]
            if not verdict.startswith(VERDICTS):
                continue

            def cell(name: str, row: list[str] = cells, heads: list[str] = headers) -> str:
                index = _column(heads, name)
                return "" if index is None else row[index]

            value = ", ".join(
                part for part in (cell("value"), cell("p95") and f"p95 {cell('p95')} ms") if part
            )
            found.append(
                Verdict(
                    section, title, cells[0], value or cells[1], cell("baseline"), cell("ratio"),
                    cell("target"), verdict,
                )
            )  # fmt: skip
    return found


def render(ran: Sequence[Ran], judged: Sequence[Verdict], command: str) -> str:
    """The summary section, between its markers."""
    start, end = markers(SECTION)
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    total = sum(r.seconds for r in ran)
    runs = aligned_table(
        ("benchmark", "took", "exit"),
        [(f"`{r.module}`", f"{r.seconds / 60:.1f} min", str(r.returncode)) for r in ran],
    )
    targets = aligned_table(
        ("section", "figure", "value", "baseline", "ratio", "target", ""),
        [(v.title, v.figure, v.value, v.baseline, v.ratio, v.target, v.verdict) for v in judged],
    )
    met = sum(v.verdict == "met" for v in judged)
    return "\n".join(
        [
            start,
            "## Summary of the last `make bench`",
            "",
            f"- Date: {stamp}",
            f"- Machine: {machine()}",
            f"- Command: `{command}` ({total / 60:.0f} minutes in all)",
            "",
            runs,
            "",
            f"Targets: {met} of {len(judged)} met. Each row is copied from its section below, "
            "where the baseline it was measured against in the same run is described.",
            "",
            targets,
            end,
        ]
    )


def place(document: str, summary: str) -> str:
    """The document with `summary` replacing the old one, or inserted before the first section."""
    start, end = markers(SECTION)
    if start in document and end in document:
        head, _, rest = document.partition(start)
        return head + summary + rest.partition(end)[2]
    first = document.find("<!-- bench:")
    if first == -1:
        return document.rstrip("\n") + "\n\n" + summary + "\n"
    return document[:first] + summary + "\n\n" + document[first:]
