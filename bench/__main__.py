"""`python -m bench` (`make bench`): every benchmark in one run and one report.

Each benchmark runs as its own process, one after the other, so none shares the machine with
another; each writes its section of docs/benchmarks.md with its figures, the baselines it
measured in the same run and their ratios. Then the summary at the head of the file gathers
the machine, the date, the command, how long each took and every target's verdict.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench import say, stop_on_sigterm
from bench.report import INTRO, add_output_option, command_line
from bench.summary import Ran, place, render, verdicts

# module, and its arguments in --quick runs
BENCHMARKS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("bench.serving", ("--quick",)),
    ("bench.bundles", ("--quick",)),
    ("bench.reporting", ("--duration", "5", "--messages", "500")),
    ("bench.dashboard", ("--devices", "1000", "--requests", "20", "--no-screenshots")),
    ("bench.fleet", ("--quick",)),
    ("bench.batch", ("--quick",)),
)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Run every benchmark (serving, bundles, reporting, dashboard, fleet, batch) "
        "one after the other and write one report: each section with its baselines and ratios, "
        "and a summary of every target at the head. About 25 minutes on 2 vCPUs.",
    )
    names = [module.removeprefix("bench.") for module, _ in BENCHMARKS]
    parser.add_argument(
        "--only", action="append", choices=names, metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(names)}",
    )  # fmt: skip
    parser.add_argument(
        "--quick", action="store_true", help="each benchmark's short setting (a smoke run)"
    )
    add_output_option(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks, then write the summary; exit 1 when a benchmark failed to run."""
    args = parse_args(argv)
    stop_on_sigterm()
    output = Path(args.output)
    ran: list[Ran] = []
    for module, quick in BENCHMARKS:
        if args.only and module.removeprefix("bench.") not in args.only:
            continue
        command = [
            sys.executable,
            "-m",
            module,
            *(quick if args.quick else ()),
            "--output",
            str(output),
        ]
        say(f"== {module}")
        started = time.monotonic()
        returncode = subprocess.run(command, check=False).returncode
        ran.append(Ran(module, time.monotonic() - started, returncode))
        say(f"   {module}: exit {returncode} after {ran[-1].seconds / 60:.1f} min")
    document = output.read_text() if output.exists() else INTRO
    judged = verdicts(document)
    summary = render(ran, judged, command_line("bench", argv))
    print(summary, flush=True)
    output.write_text(place(document, summary))
    failed = [r.module for r in ran if r.returncode != 0]
    if failed:
        say(f"failed to run: {', '.join(failed)} (see their output above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
