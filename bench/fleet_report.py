"""The Fleet section of `docs/benchmarks.md`: the results of a run, their table, the writer.

The section sits between `<!-- bench:fleet:start -->` and `<!-- bench:fleet:end -->`. A
hand-written analysis may follow `<!-- bench:fleet:analysis -->` inside it: a new run replaces
everything before that marker and keeps the analysis, which says which run it was written from.
"""

from __future__ import annotations

import datetime
import statistics
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

from bench.fleet_convergence import TARGET_S, Convergence
from bench.fleet_devices import P95_TARGET_MS, QueryTiming
from bench.report import aligned_table, machine, markers, verdict, write_section

SECTION = "fleet"
ANALYSIS_MARK = "<!-- bench:fleet:analysis -->"
INGEST_TARGET = 5000.0  # messages per second
HEADERS = ("figure", "value", "p50 ms", "p95 ms", "baseline", "ratio", "target", "")


@dataclass(frozen=True)
class IngestRun:
    """One broker-only run and the ingest run after it: seconds, and this process's CPU."""

    broker_s: float
    broker_cpu_s: float
    ingest_s: float
    ingest_cpu_s: float


@dataclass(frozen=True)
class IngestFigures:
    """The ingest part: every run of the same messages."""

    messages: int
    devices: int
    runs: list[IngestRun]

    def median(self, field: str) -> float:
        """The median over the runs of one `IngestRun` field."""
        return float(statistics.median(getattr(run, field) for run in self.runs))

    @property
    def ratio(self) -> float:
        """The median of each run's ingest rate over the broker-only rate measured before it."""
        return statistics.median(run.broker_s / run.ingest_s for run in self.runs)


@dataclass(frozen=True)
class Listing:
    """The device list part: the fleet's size, how long seeding took, each query's timing."""

    devices: int
    seed_s: float
    timings: list[QueryTiming]


@dataclass(frozen=True)
class FleetResults:
    """Everything one run measured; a part that was skipped is None."""

    ingest: dict[str, IngestFigures] | None  # by way: "in process", "publisher apart"
    convergence: Convergence | None
    listing: Listing | None
    versions: str


@dataclass(frozen=True)
class Figure:
    """One line of the table."""

    figure: str
    value: str
    p50: str = ""
    p95: str = ""
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""


def table(rows: Sequence[Figure]) -> str:
    """An aligned Markdown table (readable in a terminal too)."""
    return aligned_table(HEADERS, [[str(cell) for cell in astuple(row)] for row in rows])


def ingest_rows(way: str, ingest: IngestFigures) -> list[Figure]:
    """Messages per second into SQLite against the broker-only subscriber, one way."""
    n = ingest.messages
    broker, stored = n / ingest.median("broker_s"), n / ingest.median("ingest_s")
    broker_us = ingest.median("broker_cpu_s") / n * 1e6
    stored_us = ingest.median("ingest_cpu_s") / n * 1e6
    what = f"{n:,} telemetry messages, publisher {way.removeprefix('publisher ')}"
    return [
        Figure(f"ingest: broker only (a subscriber counts), {what}", f"{broker:,.0f} msg/s"),
        Figure(
            f"ingest: MQTT -> IngestService -> SQLite, {what}",
            f"{stored:,.0f} msg/s",
            baseline=f"broker only {broker:,.0f} msg/s",
            ratio=f"{ingest.ratio:.2f}x",
            target=f">= {INGEST_TARGET:,.0f} msg/s",
            verdict=verdict(stored >= INGEST_TARGET),
        ),
        Figure(
            f"ingest: CPU per message of this process, {what}",
            f"{stored_us:.0f} µs",
            baseline=f"broker only {broker_us:.0f} µs",
            ratio=f"{stored_us / broker_us:.2f}x",
        ),
    ]


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


def convergence_rows(run: Convergence) -> list[Figure]:
    """The timed rollout against the assignment round, and its timeline."""
    n = f"{run.devices:,} devices"
    first, second = run.versions
    rows = []
    if run.enrolled_s is not None:
        rows.append(Figure(f"enroll {n} (edgefleet sim, until online)", _seconds(run.enrolled_s)))
    rows += [
        Figure(
            f"rollout of v{first} from what the devices ran before (the starting point)",
            _seconds(run.first_rollout_s),
        ),
        Figure(
            f"baseline: {n} fetch and verify their signed assignment once", _seconds(run.round_s)
        ),
        Figure(
            f"rollout of v{second}, all at once: create -> completed, every device active",
            _seconds(run.completed_s),
            baseline=f"assignment round {run.round_s:.2f} s",
            ratio=f"{run.completed_s / run.round_s:.2f}x",
            target=f"<= {TARGET_S:g} s",
            verdict=verdict(run.completed_s <= TARGET_S),
        ),
        Figure("  create -> the last device's new assignment signed", _seconds(run.signed_s)),
        Figure(
            f"  create -> the first device reported v{second} active",
            _seconds(run.first_active_s),
        ),
        Figure(
            "  create -> the last device reported it active",
            _seconds(run.last_active_s),
            baseline=f"assignment round {run.round_s:.2f} s",
            ratio="" if run.last_active_s is None else f"{run.last_active_s / run.round_s:.2f}x",
        ),
        Figure("  create -> completed, as this process saw it polling", _seconds(run.observed_s)),
    ]
    return rows


def listing_rows(listing: Listing) -> list[Figure]:
    """p50 and p95 of each device-list query over HTTP against the same query in process."""
    rows = []
    for timing in listing.timings:
        rows.append(
            Figure(
                f"GET {timing.query.name}, {listing.devices:,} devices ({timing.matched:,} match)",
                f"{len(timing.http_ms)} requests",
                f"{timing.http_p50:.1f}",
                f"{timing.http_p95:.1f}",
                f"direct p50 {timing.direct_p50:.1f} / p95 {timing.direct_p95:.1f} ms",
                f"{timing.http_p95 / timing.direct_p95:.2f}x",
                f"p95 < {P95_TARGET_MS:g} ms",
                verdict(timing.http_p95 < P95_TARGET_MS),
            )
        )
    return rows


def setup_lines(results: FleetResults) -> list[str]:
    """What was measured, in one bullet per part."""
    lines = []
    if results.ingest:
        ingest = next(iter(results.ingest.values()))
        lines.append(
            f"- Ingest: `bench.ingest`'s measurement: one publisher sends {ingest.messages:,} "
            f"telemetry envelopes (one model, QoS 1, 200 in flight) from {ingest.devices} "
            "devices to Mosquitto; `broker only` is a subscriber that counts them, then the "
            "`IngestService` (batches of 500 / 0.2 s) stores them in a fresh SQLite database. "
            "*publisher in process*: the publisher shares the process with the subscriber or "
            "the ingest, as in `bench.ingest`; *publisher apart*: it runs in a second Python "
            "process, as devices do, and this process only receives and writes. "
            f"{len(ingest.runs)} runs of each, alternating: medians, and the median of the "
            "per-run ratios. CPU per message is this process's (all threads)."
        )
    if results.convergence is not None:
        run = results.convergence
        tick = "default 5 s" if run.tick_s is None else f"{run.tick_s:g} s"
        lines.append(
            f"- Convergence: Mosquitto, `edgefleet cp serve` (SQLite, loopback, rollout tick "
            f"{tick}) and `edgefleet sim --devices {run.devices}` (shared MQTT connections, "
            "signed long polls, 0.5 s simulated activation) as subprocesses; rollouts to the "
            "sim's group with strategy `all` and `wait_s` 0. Times come from the rollout's "
            "`created_at`/`updated_at` and, afterwards, from the database (assignments' "
            "`issued_at`, the `active` lifecycle events); every process shares the 2 CPUs."
        )
    if results.listing is not None:
        listing = results.listing
        lines.append(
            f"- Device list: {listing.devices:,} devices inserted directly into a fresh SQLite "
            f"database ({listing.seed_s:.1f} s; 50 site groups + a canary group, `env`/`site`/"
            "`hw` labels, 4 backend classes, 85% online, hardware, models, one certificate "
            "each), then `cp serve`; each query one request at a time on a kept-alive "
            "connection, after 5 untimed ones."
        )
    return lines


BASELINES = (
    "Baselines: *broker only* is the same publisher and messages with a subscriber that only "
    "counts them (the ceiling Mosquitto, paho and this process set). *assignment round*: every "
    "simulated device, from this process, fetches its signed assignment once (plain GET, no "
    "If-None-Match, all at once) and verifies it: the least a rollout does, without the "
    "reissue, the activation, the lifecycle events' ingest and the controller's tick. *direct* "
    "is the device list's own code (`control_plane.devices.list_devices`, or `get_device` + "
    "`device_detail`) called in this process on the same database, a session per call as the "
    "route opens one: the SQL without HTTP, authentication and JSON."
)


def render_section(results: FleetResults, command: str) -> str:
    """The generated part of the Fleet section, from its start marker to the analysis."""
    rows: list[Figure] = []
    for way, figures in (results.ingest or {}).items():
        rows += ingest_rows(way, figures)
    if results.convergence is not None:
        rows += convergence_rows(results.convergence)
    if results.listing is not None:
        rows += listing_rows(results.listing)
    lines = [
        markers(SECTION)[0],
        "## Fleet (issue: fleet scale: ingest, rollout convergence, device list)",
        "",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {machine()}",
        f"- Versions: {results.versions}",
        f"- Command: `{command}`",
        *setup_lines(results),
        "",
        table(rows),
        "",
        BASELINES,
    ]
    return "\n".join(lines)


def write_fleet_section(path: Path, generated: str) -> None:
    """Replace the generated part of the section in `path`, keeping a hand-written analysis."""
    start_mark, end_mark = markers(SECTION)
    text = path.read_text() if path.exists() else ""
    start, end = text.find(start_mark), text.find(end_mark)
    kept = ""
    if start != -1 and end > start:
        analysis = text.find(ANALYSIS_MARK, start, end)
        if analysis != -1:
            kept = "\n\n" + text[analysis:end].strip()
    write_section(path, SECTION, f"{generated}{kept}\n{end_mark}")
