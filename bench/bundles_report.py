"""The Bundles section of `docs/benchmarks.md`: the table of figures, and the section writer.

The section sits between `<!-- bench:bundles:start -->` and `<!-- bench:bundles:end -->`. A
hand-written analysis may follow `<!-- bench:bundles:analysis -->` inside it: a new run
replaces everything before that marker and keeps the analysis, which says which run it was
written from.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import astuple, dataclass
from pathlib import Path

from bench.bundle_notes import derived, mb_s, ms, notes
from bench.bundle_plan import (
    CONNECTIONS,
    SWAP_P99_TARGET_RATIO,
    VERIFY_TARGET_RATIO,
    BundleResults,
    SwapRun,
    Windows,
    median_phase,
    median_to_serving,
)
from bench.report import aligned_table, machine, markers, verdict, write_section
from bench.verify_speed import MB

SECTION = "bundles"
ANALYSIS_MARK = "<!-- bench:bundles:analysis -->"
HEADERS = ("figure", "value", "baseline", "ratio", "target", "")


@dataclass(frozen=True)
class Figure:
    """One line of the table."""

    figure: str
    value: str
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""


def table(rows: Sequence[Figure]) -> str:
    """An aligned Markdown table (readable in a terminal too)."""
    return aligned_table(HEADERS, [[str(cell) for cell in astuple(row)] for row in rows])


def verification_rows(results: BundleResults) -> list[Figure]:
    """SHA-256, verification and extraction of the large archive."""
    speed = results.speed
    base = speed.size / MB / speed.sha256_s
    size = f"{speed.size / MB:,.0f} MB archive"
    verify = speed.sha256_s / speed.verify_s
    extract = speed.sha256_s / speed.extract_s
    baseline = f"sha256 {mb_s(speed.size, speed.sha256_s)}"
    return [
        Figure(f"sha256 (hashlib.file_digest), {size}", f"{base:,.0f} MB/s"),
        Figure(
            f"verify_bundle, {size}",
            mb_s(speed.size, speed.verify_s),
            baseline,
            f"{verify:.2f}x",
            f">= {VERIFY_TARGET_RATIO:g}x",
            verdict(verify >= VERIFY_TARGET_RATIO),
        ),
        Figure(
            f"extract_bundle (verify, then hash + write + fsync), {size}",
            mb_s(speed.size, speed.extract_s),
            baseline,
            f"{extract:.2f}x",
        ),
    ]


def phase_rows(results: BundleResults) -> list[Figure]:
    """The activation phases of the MLP bundle (medians) and of the large bundle."""
    small, large = results.small, results.large
    big, size = f"{large.size / MB:,.0f} MB bundle", large.size
    download, plain = large.phase("download"), results.plain_download_s
    extract, in_process = large.phase("verify + extract"), results.speed.extract_s
    unloaded, loaded = median_to_serving(results.http), median_to_serving(results.loaded)
    return [
        Figure("download, MLP bundle, file://", ms(median_phase(results.file, "download"))),
        Figure("download, MLP bundle, HTTP", ms(median_phase(results.http, "download"))),
        Figure(
            f"download, {big}, HTTP",
            f"{ms(download)}, {mb_s(size, download)}",
            f"plain GET {mb_s(size, plain)}",
            f"{plain / download:.2f}x",
        ),
        Figure("verify + extract, MLP bundle", ms(median_phase(small, "verify + extract"))),
        Figure(
            f"verify + extract, {big}",
            f"{ms(extract)}, {mb_s(size, extract)}",
            f"extract_bundle {mb_s(size, in_process)}",
            f"{in_process / extract:.2f}x",
        ),
        Figure("state writes (staged -> validating)", ms(median_phase(small, "state writes"))),
        Figure(
            "load + select + golden, MLP bundle",
            ms(median_phase(small, "load + select + golden")),
        ),
        Figure(f"load + select + golden, {big}", ms(large.phase("load + select + golden"))),
        Figure("warm + swap, MLP bundle", ms(median_phase(small, "warm + swap"))),
        Figure(f"warm + swap, {big}", ms(large.phase("warm + swap"))),
        Figure("assignment to serving, MLP bundle, HTTP", ms(unloaded)),
        Figure(f"assignment to serving, {big}, HTTP", ms(large.to_serving_s)),
        Figure(
            f"assignment to serving, MLP bundle, HTTP, under wrk c={CONNECTIONS}",
            ms(loaded),
            f"unloaded {ms(unloaded)}",
            f"{loaded / unloaded:.2f}x",
        ),
    ]


def latency(result: Windows) -> str:
    """`p99 0.95 ms (p50 0.41 ms, 9,876 req/s)`."""
    return f"p99 {result.p99_ms:.2f} ms (p50 {result.p50_ms:.2f} ms, {result.rate:,.0f} req/s)"


def swap_rows(results: BundleResults) -> list[Figure]:
    """p99 during a swap against steady state, and the requests that failed."""
    steady, swapping = results.steady, results.swapping
    ratio = swapping.p99_ms / steady.p99_ms
    judged = verdict(ratio <= SWAP_P99_TARGET_RATIO, steady.errors)
    if not results.swaps_inside:
        judged = "INVALID: a swap fell outside its window"
    load = f"MLP binary, c={CONNECTIONS}, median of {len(results.swaps)}"
    reverted = [swap for swap in results.swaps if swap.activation.outcome != "active"]
    return [
        Figure(f"steady state, {load}", latency(steady)),
        Figure(
            f"during a swap, {load}",
            latency(swapping),
            f"steady p99 {steady.p99_ms:.2f} ms",
            f"{ratio:.2f}x",
            f"<= {SWAP_P99_TARGET_RATIO:g}x",
            judged,
        ),
        failures("failed requests, windows with a committed swap", results.committed),
        failures("failed requests, windows with a swap and its revert", reverted),
        Figure("new versions reverted by probation", f"{len(reverted)} of {len(results.swaps)}"),
    ]


def failures(figure: str, swaps: Sequence[SwapRun]) -> Figure:
    """The failed requests of some swap windows, against the steady windows before them."""
    if not swaps:
        return Figure(figure, "no such window")
    during = Windows(tuple(swap.swapping for swap in swaps))
    before = Windows(tuple(swap.steady for swap in swaps))
    return Figure(
        figure,
        f"{during.errors} ({during.non_2xx} non-2xx, {during.socket_errors} socket)",
        f"steady {before.errors}",
        target="0",
        verdict="met" if during.errors == 0 else "MISSED",
    )


def render_section(results: BundleResults, command: str) -> str:
    """The generated part of the Bundles section, from its start marker to the analysis."""
    small_kb = results.small_size / 1000
    large = results.large
    rows = [*verification_rows(results), *phase_rows(results), *swap_rows(results)]
    lines = [
        markers(SECTION)[0],
        "## Bundles (issue: signed bundles, verification and activation)",
        "",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {machine()}",
        f"- Versions: {results.versions}",
        f"- Command: `{command}`",
        f"- Bundles: the sample MLP ({small_kb:,.0f} kB archive: its FP32 variants and golden "
        f"vectors); the large bundle adds `weights.bin`, {results.plan.size_mb} MB of random "
        f"bytes ({large.size / MB:,.1f} MB archive). The agent served the MLP with "
        f"`{large.backend}`.",
        "",
        table(rows),
        "",
        *notes(results),
        "",
        "Derived from this run:",
        "",
        *derived(results),
    ]
    return "\n".join(lines)


def write_bundle_section(path: Path, generated: str) -> None:
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
