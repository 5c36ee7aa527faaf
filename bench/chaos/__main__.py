"""`python -m bench.chaos`: run the chaos scenarios, print their tables, write the docs page."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

from bench import BenchError, say, stop_on_sigterm
from bench.chaos.outcome import ChaosOptions, Figure, Outcome
from bench.chaos.report import RELIABILITY_MD, render, write
from bench.chaos.scenarios import SCENARIOS, load
from bench.report import command_line

EPILOG = f"""scenarios, in order: {", ".join(SCENARIOS)}

The full run takes about 50 minutes on 2 vCPUs, most of it the 30-minute soak
(--soak-minutes 5 for a shorter one); --quick takes a few minutes."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.chaos",
        description="Inject faults, overload and hostile input into real EdgeFleet processes "
        "on 127.0.0.1 and write what held and what broke to docs/reliability.md.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=list(SCENARIOS),
        metavar="NAME",
        help="run only this scenario (repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="the short setting make test uses")
    parser.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    parser.add_argument("--crashes", type=int, help="kill -9 moments (default 50)")
    parser.add_argument("--outage-seconds", type=float, help="broker outage (default 60)")
    parser.add_argument("--soak-minutes", type=float, help="soak duration (default 30)")
    parser.add_argument("--fuzz-examples", type=int, help="examples per fuzz target (default 1000)")
    parser.add_argument(
        "--work", metavar="DIR", help="scratch directory (default: a temporary one)"
    )
    parser.add_argument(
        "--output",
        default=str(RELIABILITY_MD),
        metavar="FILE",
        help="Markdown file to update ('-' to only print; default docs/reliability.md)",
    )
    return parser.parse_args(argv)


def options(args: argparse.Namespace, work: Path) -> ChaosOptions:
    """The run's options: the full or quick setting, then the overrides given."""
    base = ChaosOptions.quick(work, args.seed) if args.quick else ChaosOptions(work, args.seed)
    chosen = base
    if args.crashes is not None:
        chosen = dataclasses.replace(chosen, crashes=args.crashes)
    if args.outage_seconds is not None:
        chosen = dataclasses.replace(chosen, outage_s=args.outage_seconds)
    if args.soak_minutes is not None:
        chosen = dataclasses.replace(chosen, soak_s=args.soak_minutes * 60)
    if args.fuzz_examples is not None:
        chosen = dataclasses.replace(chosen, fuzz_examples=args.fuzz_examples)
    return chosen


def run_one(name: str, chosen: ChaosOptions) -> Outcome:
    """Run a scenario; one that cannot run at all becomes an outcome that says why."""
    scenario_work = chosen.work / name
    scenario_work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    say(f"== {name}")
    try:
        outcome = load(name)(dataclasses.replace(chosen, work=scenario_work))
    except (BenchError, OSError) as error:
        traceback.print_exc()
        outcome = Outcome(
            name,
            name,
            "The scenario could not run.",
            # One line, so that the table stays a table; the traceback above has the rest.
            [Figure("ran", f"no: {' '.join(str(error).split())}", "yes", met=False)],
        )
    verdict = "held" if outcome.passed else "FAILED"
    say(f"   {name}: {verdict} in {time.monotonic() - started:.0f} s")
    return outcome


def main(argv: Sequence[str] | None = None) -> int:
    """Run the chosen scenarios; exit 1 when any figure missed its target."""
    args = parse_args(argv)
    stop_on_sigterm()
    names = args.only or list(SCENARIOS)
    command = command_line("bench.chaos", argv)
    with tempfile.TemporaryDirectory(prefix="edgefleet-chaos-") as scratch:
        work = Path(args.work) if args.work else Path(scratch)
        chosen = options(args, work)
        outcomes = []
        for name in names:
            outcome = run_one(name, chosen)
            print(render(outcome, command), flush=True)
            outcomes.append(outcome)
            if args.output != "-":  # written as each finishes, so a long run keeps what it found
                write(Path(args.output), [outcome], command)
    failed = [o.name for o in outcomes if not o.passed]
    say(f"chaos: {len(outcomes) - len(failed)} of {len(outcomes)} scenarios held")
    if failed:
        say(f"missed targets: {', '.join(failed)} (see the tables above)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
