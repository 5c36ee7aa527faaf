"""The dashboard benchmark's results: timings, their table, and the docs section."""

from __future__ import annotations

import datetime
import importlib.metadata
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.dashboard_fleet import DETAIL_DEVICES, SeededFleet
from bench.report import aligned_table, machine

SECTION = "dashboard"
TARGET_MS = 300.0
WARMUP = 10  # requests before the timed ones, per figure


@dataclass(frozen=True)
class Timing:
    """Request times of one figure, in milliseconds."""

    samples: list[float]

    @property
    def p50(self) -> float:
        """The median."""
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        """The 95th percentile (nearest rank)."""
        ordered = sorted(self.samples)
        return ordered[max(0, round(0.95 * len(ordered)) - 1)]


@dataclass(frozen=True)
class Figure:
    """One page measured against its baseline."""

    name: str
    page: Timing
    baseline_name: str
    baseline: Timing
    targeted: bool = True

    def cells(self) -> list[str]:
        """The row of the Markdown table."""
        ratio = self.page.p95 / self.baseline.p95 if self.baseline.p95 else float("nan")
        met = self.page.p95 < TARGET_MS
        return [
            self.name,
            f"{self.page.p50:.1f}",
            f"{self.page.p95:.1f}",
            f"{self.baseline_name}: {self.baseline.p50:.1f} / {self.baseline.p95:.1f}",
            f"{ratio:.2f}x",
            f"< {TARGET_MS:.0f} ms" if self.targeted else "",
            ("met" if met else "MISSED") if self.targeted else "",
        ]


# What the first runs found and what was changed (kept with the table it explains).
HISTORY = (
    "Two fixes came out of the first runs (2026-11-29, same machine, shared with other "
    "benchmarks at the time): the overview took p50 203 / p95 375 ms, most of it counting "
    "devices per model version by taking every device's reported JSON apart "
    "(`json_each`, 28 ms alone on a quiet machine); `devices.version_counts` now groups the "
    "reported lists as text, of which a fleet has few, and reads only the distinct ones (11 ms). "
    "In a trial run (1,000 devices, 20 requests) a device's 24-hour chart (8,640 reports) took "
    "p95 700 ms, in the API as in the page: the "
    "JSON column's per-row `json.loads` and a new list per histogram summed; "
    "`fleet_stats.device_series` now reads the histograms as text and decodes them with orjson, "
    "and `shared.histogram.add_counts` sums column by column (224 to 111 ms in-process)."
)
HEADERS = ["figure", "p50 ms", "p95 ms", "baseline p50 / p95 ms", "ratio (p95)", "target", ""]


def markdown_table(figures: Sequence[Figure]) -> str:
    """An aligned Markdown table of the figures."""
    return aligned_table(HEADERS, [f.cells() for f in figures])


def render_section(
    fleet: SeededFleet,
    figures: Sequence[Figure],
    saved: Sequence[Path],
    command: str,
    requests: int,
) -> str:
    """The Markdown section, between its markers."""
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("aiohttp", "SQLAlchemy", "Jinja2")
    )
    rows = ", ".join(f"{table} {count:,}" for table, count in fleet.rows.items())
    worst = max((f for f in figures if f.targeted), key=lambda f: f.page.p95)
    images = " ".join(f"![{p.stem}](img/{p.name})" for p in saved)
    return "\n".join(
        [
            f"<!-- bench:{SECTION}:start -->",
            "## Dashboard (issue: operator dashboard)",
            "",
            f"- Date: {now}",
            f"- Machine: {machine()}",
            f"- Versions: {versions}, SQLite (the default database)",
            f"- Command: `{command}`",
            f"- Data: {fleet.devices:,} devices written straight into the database: {rows}. "
            f"The detail pages are of a device with a day of 10 s telemetry "
            f"({DETAIL_DEVICES} devices have it).",
            f"- Load: one signed-in client, one request at a time over loopback, {requests} "
            f"timed requests per figure after {WARMUP} warm-up ones, against `edgefleet cp "
            "serve` in its own process; a time is from sending the request to the last byte "
            "of the answer.",
            "",
            markdown_table(figures),
            "",
            "Baselines: the JSON API for the same data, timed the same way (for a device, the "
            "four calls a client needs to draw the same page, one after the other); for the "
            "overview, which no single API call answers, its own queries run in the benchmark's "
            "process on the same database file, so that ratio is what rendering the page and "
            "HTTP add.",
            "",
            f"The slowest targeted page was {worst.name.split(' `')[0]} at p95 "
            f"{worst.page.p95:.0f} ms against the {TARGET_MS:.0f} ms target.",
            "",
            HISTORY,
            "",
            images,
            f"<!-- bench:{SECTION}:end -->",
        ]
    )
