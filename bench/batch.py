"""Batch-scoring benchmark: `edgefleet batch` against onnxruntime called in a plain loop.

    .venv/bin/python -m bench.batch [--quick] [--output docs/benchmarks.md]

For each case (a sample model, a batch size, an input format) the same rows are scored twice,
in the same run: by onnxruntime in this process, looping over an in-memory array in slices of
the batch size and copying each result into a preallocated array (the baseline: no reading,
no writing), and by the `edgefleet batch` command (pinned to onnxruntime/CPU, so no time goes
to measuring candidates), which memory-maps or parses the input, saves chunks durably and
assembles the output file. The command's own "rows/s" covers reading, running and saving;
"end to end" divides the rows by the wall time of the whole process, start-up included. Each
figure is the median of `RUNS` rounds, each a pass of the loop then a run of the command (so
that the load of other processes on a shared machine weighs on both alike); the outputs of both
are compared.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.sample_models import write_sample_models
from bench import BenchError, say, stop_on_sigterm
from bench.processes import edgefleet_executable
from bench.report import add_output_option, command_line, machine, write_section

SECTION = "batch"
RUNS = 5


@dataclass(frozen=True)
class Case:
    """One measured configuration."""

    model: str  # sample model name
    input_name: str
    row_shape: tuple[int, ...]
    rows: int
    batch: int
    fmt: str  # "npy" | "csv"

    @property
    def label(self) -> str:
        return f"{self.model}, {self.rows:,} rows, {self.fmt} in, batch {self.batch}"


@dataclass(frozen=True)
class Result:
    """The figures of one case."""

    case: Case
    raw_rows_s: float
    command_rows_s: float  # the command's summary: reading, running, saving chunks
    end_to_end_rows_s: float  # rows / wall time of the whole process
    max_diff: float


def cases(quick: bool) -> list[Case]:
    """What to measure; `--quick` uses a tenth of the rows."""
    scale = 10 if quick else 1
    return [
        Case("mlp", "input", (64,), 2_000_000 // scale, 256, "npy"),
        Case("mlp", "input", (64,), 2_000_000 // scale, 32, "npy"),
        Case("mlp", "input", (64,), 200_000 // scale, 256, "csv"),
        Case("cnn", "image", (3, 32, 32), 20_000 // scale, 256, "npy"),
    ]


class RawLoop:
    """onnxruntime over rows in memory, in slices of the batch size: the baseline."""

    def __init__(self, model: Path, name: str, rows: np.ndarray, batch: int) -> None:
        import onnxruntime

        self.session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        self.name, self.rows, self.batch = name, rows, batch
        self.session.run(None, {name: rows[:batch]})  # warm-up
        self.outputs: np.ndarray | None = None

    def rows_per_s(self) -> float:
        """One pass over the rows; the outputs are kept for the comparison."""
        rows, batch = self.rows, self.batch
        started = time.perf_counter()
        for start in range(0, len(rows), batch):
            result = self.session.run(None, {self.name: rows[start : start + batch]})[0]
            if self.outputs is None:
                self.outputs = np.empty((len(rows), *result.shape[1:]), result.dtype)
            self.outputs[start : start + batch] = result
        return len(rows) / (time.perf_counter() - started)


def command_run(argv: list[str]) -> tuple[float, float]:
    """Run `edgefleet batch`; return its summary's rows/s and the process's wall time."""
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise BenchError(f"{shlex.join(argv)} failed:\n{done.stderr}")
    for line in done.stdout.splitlines():
        if line.startswith("rows/s"):
            return float(line.split()[1].replace(",", "")), wall
    raise BenchError(f"no rows/s line in the summary:\n{done.stdout}")


def measure(case: Case, models: Path, work: Path) -> Result:
    """Score the case's rows both ways."""
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((case.rows, *case.row_shape), dtype=np.float32)
    data = work / f"{case.model}-{case.rows}.{case.fmt}"
    if not data.exists():
        if case.fmt == "npy":
            np.save(data, rows)
        else:
            np.savetxt(data, rows.reshape(len(rows), -1), fmt="%.9g", delimiter=",")
    if case.fmt == "csv":  # what the command parses back (the text holds 9 digits)
        rows = np.loadtxt(data, delimiter=",", dtype=np.float32).reshape(rows.shape)
    model = models / f"{case.model}.onnx"
    raw = RawLoop(model, case.input_name, rows, case.batch)
    output = work / "scores.npy"
    argv = [str(edgefleet_executable()), "batch", "--model", f"{case.model}={model}",
            "--pin", "onnxruntime/CPU", "-i", str(data), "-o", str(output),
            "--batch-size", str(case.batch), "--force", "--quiet"]  # fmt: skip
    say(f"{case.label}: {RUNS} rounds of onnxruntime in a loop, then edgefleet batch ...")
    # Interleaved, so that load from other processes weighs on both alike.
    rounds = [(raw.rows_per_s(), *command_run(argv)) for _ in range(RUNS)]
    assert raw.outputs is not None
    written = np.load(output)
    return Result(
        case,
        statistics.median(r[0] for r in rounds),
        statistics.median(r[1] for r in rounds),
        case.rows / statistics.median(r[2] for r in rounds),
        float(np.abs(written - raw.outputs).max()),
    )


def render(results: Sequence[Result], command: str, load: tuple[float, float]) -> str:
    """The Markdown section, between its markers."""
    header = ["case", "onnxruntime loop", "edgefleet batch", "ratio", "end to end", "ratio",
              "max abs diff"]  # fmt: skip
    rows = [
        [
            r.case.label,
            f"{r.raw_rows_s:,.0f} rows/s",
            f"{r.command_rows_s:,.0f} rows/s",
            f"{r.command_rows_s / r.raw_rows_s:.2f}x",
            f"{r.end_to_end_rows_s:,.0f} rows/s",
            f"{r.end_to_end_rows_s / r.raw_rows_s:.2f}x",
            f"{r.max_diff:.1e}",
        ]
        for r in results
    ]
    widths = [max(len(line[i]) for line in [header, *rows]) for i in range(len(header))]
    table = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in [header, *rows]
    ]
    table.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines = [
        "<!-- bench:batch:start -->",
        "## Batch scoring (issue: batch scoring)",
        "",
        f"- Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        f"- Machine: {machine()}",
        f"- Command: `{command}`",
        f"- Load average (1 min) of the machine: {load[0]:.2f} at the start, {load[1]:.2f} at "
        "the end; the ratios move with what other processes run meanwhile",
        "- Baseline: *onnxruntime loop* is the same `.onnx` file in an onnxruntime session "
        "in the benchmark process, run over the rows already in memory in slices of the same "
        "batch size, each result copied into one preallocated array: no reading, no writing. "
        "*edgefleet batch* is the command pinned to onnxruntime/CPU: its summary's rows/s "
        "(reading the input, running the model, saving chunks with fsync, not model loading "
        "or the final assembly); *end to end* is rows over the whole process's wall time. "
        f"Medians of {RUNS} interleaved rounds; *max abs diff* compares the two outputs.",
        "",
        *table,
        "",
        "Reading the rows: *edgefleet batch* runs the same session calls as the loop; what it "
        "adds is copying each chunk out of the memory map (or parsing CSV) on a reader thread, "
        "saving each chunk and its journal entry with fsync on a writer thread, and the first "
        "chunk's read and the last one's save, which nothing overlaps. On 2 vCPUs those threads "
        "share the cores with onnxruntime's own, so the cheaper the model per row (the MLP at "
        "batch 256), the larger the share they take; CSV is bound by parsing on one thread. "
        "*End to end* adds the process start-up (the `edgefleet` command imports every command "
        "group, the control plane's included), loading the session and assembling the output "
        "file, so for jobs this short it mostly measures start-up.",
        "<!-- bench:batch:end -->",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Measure, print the table, and update the Markdown file."""
    parser = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a tenth of the rows")
    add_output_option(parser)
    args = parser.parse_args(argv)
    stop_on_sigterm()
    command = command_line("bench.batch", argv)
    load_before = os.getloadavg()[0]
    try:
        with tempfile.TemporaryDirectory(prefix="bench-batch-") as tmp:
            work = Path(tmp)
            write_sample_models(work / "models")
            results = [measure(case, work / "models", work) for case in cases(args.quick)]
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    section = render(results, command, (load_before, os.getloadavg()[0]))
    say("\n" + section)
    if args.output != "-":
        write_section(Path(args.output), SECTION, section)
        say(f"\nwrote {args.output} (section {SECTION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
