"""Result rows, the Markdown table they print as, and the writer of a section in the docs file."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from dataclasses import astuple, dataclass, replace
from pathlib import Path

import psutil

from bench.wrk import WrkResult, wrk_version

HEADERS = (
    "figure",
    "value",
    "p50 ms",
    "p99 ms",
    "errors",
    "rows/batch",
    "baseline",
    "ratio",
    "target",
    "",
)

INTRO = """# Benchmarks

`make bench` (`.venv/bin/python -m bench`) runs every benchmark below one after the other, each
in its own process, and writes this page: each section holds its figures beside the baselines
it measured in the same run, as ratios, with the machine, the command and the date; the summary
first gathers every target's verdict. The numbers come from a shared machine and are noisy:
compare the ratios, and rerun before drawing conclusions from a small difference.

One benchmark at a time, from the repository root (`--only NAME` does the same through
`make bench BENCH_ARGS='--only serving'`):

    .venv/bin/python -m bench.serving            # 2-3 minutes on 2 vCPUs; --quick: 1 minute
    .venv/bin/python -m bench.bundles            # about 1 minute; --quick: 20 s
    .venv/bin/python -m bench.reporting          # about 35 s
    .venv/bin/python -m bench.fleet              # about 2 minutes (+20 s first time); --quick: 45 s
    .venv/bin/python -m bench.dashboard          # about 5 minutes
    .venv/bin/python -m bench.batch              # a few minutes
"""


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    figure: str
    value: str
    p50: str = ""
    p99: str = ""
    errors: str = ""
    batch: str = ""  # mean rows per executed batch, from the agent's statistics
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""

    def cells(self) -> list[str]:
        """The row's cells in `HEADERS` order."""
        return [str(cell) for cell in astuple(self)]


def verdict(met: bool, errors: int = 0) -> str:
    """`met` / `MISSED`; a run with failed requests never meets its target."""
    if errors:
        return "INVALID: errors"
    return "met" if met else "MISSED"


def load_row(figure: str, result: WrkResult) -> Row:
    """A wrk result without a baseline: req/s, or rows/s for multi-row requests."""
    batch = result.rows_per_batch
    multi_row = result.rows_per_request > 1
    return Row(
        figure,
        f"{result.rows_rate:,.0f} rows/s" if multi_row else f"{result.rate:,.0f} req/s",
        f"{result.p50_ms:.2f}",
        f"{result.p99_ms:.2f}",
        str(result.errors) if result.errors == 0 else f"**{result.errors} FAILED**",
        "" if batch is None else f"{batch:.1f}",
    )


def compare_row(
    figure: str, result: WrkResult, baseline: str, base: float, minimum: float | None = None
) -> Row:
    """A wrk result's rows/s (= req/s for one-row requests) against a baseline and target."""
    ratio = result.rows_rate / base
    return replace(
        load_row(figure, result),
        baseline=f"{baseline} {base:,.0f}",
        ratio=f"{ratio:.2f}x",
        target="" if minimum is None else f">= {minimum:g}x",
        verdict="" if minimum is None else verdict(ratio >= minimum, result.errors),
    )


def ceiling_row(
    figure: str, value: float, baseline: str, base: float, limit: float, unit: str, digits: int
) -> Row:
    """A figure that must stay at or under `limit`, with its ratio to a baseline."""
    return Row(
        figure,
        f"{value:.{digits}f} {unit}",
        baseline=f"{baseline} {base:.{digits}f} {unit}",
        ratio=f"{value / base:.2f}x",
        target=f"<= {limit:g} {unit}",
        verdict=verdict(value <= limit),
    )


def aligned_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """An aligned Markdown table (readable in a terminal too); every benchmark's tables."""
    cells = [list(headers), *(list(row) for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    """The serving benchmark's table."""
    return aligned_table(HEADERS, [row.cells() for row in rows])


def markers(section: str) -> tuple[str, str]:
    """The comments around a generated section, e.g. `<!-- bench:serving:start -->`."""
    return f"<!-- bench:{section}:start -->", f"<!-- bench:{section}:end -->"


def write_section(path: Path, section: str, generated: str, intro: str = INTRO) -> None:
    """Replace the text between the section's markers in `path`, or append it; keep the rest.

    `intro` starts the file when it does not exist yet.
    """
    start_mark, end_mark = markers(section)
    text = path.read_text() if path.exists() else intro
    start, end = text.find(start_mark), text.find(end_mark)
    if start != -1 and end > start:
        text = text[:start] + generated + text[end + len(end_mark) :]
    else:
        text = text.rstrip("\n") + "\n\n" + generated + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def machine() -> str:
    """CPU model, logical CPUs, memory, kernel and Python of this machine."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, {memory:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def versions(wrk: str) -> str:
    """Versions of the packages and tools measured."""
    names = ("aiohttp", "onnxruntime", "openvino", "ai-edge-litert")
    found = []
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    found.append(wrk_version(wrk))
    return ", ".join(found)


BENCHMARKS_MD = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def add_output_option(parser: argparse.ArgumentParser) -> None:
    """Every benchmark's `--output FILE` (the Markdown file its section is written into)."""
    parser.add_argument(
        "--output",
        default=str(BENCHMARKS_MD),
        metavar="FILE",
        help="Markdown file to update ('-' to only print; default docs/benchmarks.md)",
    )


def command_line(module: str, argv: Sequence[str] | None) -> str:
    """The command that reproduces this run, as written into the section."""
    given = list(sys.argv[1:] if argv is None else argv)
    return shlex.join([".venv/bin/python", "-m", module, *given])
