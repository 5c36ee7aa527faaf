"""Fleet benchmark: MQTT ingest, rollout convergence and the device list, at fleet scale.

    .venv/bin/python -m bench.fleet [--devices 1000] [--list-devices 10000] [--quick]
        [--skip-ingest] [--skip-convergence] [--skip-list] [--output docs/benchmarks.md]

1. Ingest (`bench.fleet_ingest`): `bench.ingest`'s broker-only subscriber and `IngestService`
   into SQLite, alternately, with the publisher in this process and in another one; medians of
   `--ingest-runs` (target: 5,000 messages/s).
2. Convergence (`bench.fleet_convergence`): `--devices` simulated devices move to a new version
   of the sample MLP; the time from `rollout create` to `completed` against the time the same
   devices take to fetch their assignment once (target: 30 s at 1,000 devices).
3. Device list (`bench.fleet_devices`): `--list-devices` rows inserted directly, then p50/p95
   of `GET /api/v1/devices` (pages, filters, a search, one device) against the same query
   without HTTP (target: p95 < 300 ms at 10,000 devices).

Each part prints a table row per figure with its ratio to the baseline measured in the same
run; targets are reported as met or missed, never asserted. `--quick` is a smoke run (under a
minute once `.bench/fleet/n50` holds the enrolled devices). Every subprocess is stopped on the
way out, also on Ctrl-C and on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import BenchError, say, stop_on_sigterm
from bench.fleet_convergence import measure as measure_convergence
from bench.fleet_cp import control_plane, migrate_and_token
from bench.fleet_devices import seed_fleet, time_queries
from bench.fleet_ingest import measure_ingest
from bench.fleet_report import SECTION, FleetResults, Listing, render_section, write_fleet_section
from bench.processes import free_port
from bench.report import add_output_option, command_line
from control_plane.db.engine import default_database_url
from shared.mqtt.broker import find_program


@dataclass(frozen=True)
class Plan:
    """How big each part is."""

    messages: int = 20_000
    message_devices: int = 200
    ingest_runs: int = 3
    devices: int = 1000
    list_devices: int = 10_000
    requests: int = 200
    tick_s: float | None = None  # the rollout controller's tick; None: the default (5 s)

    @classmethod
    def of(cls, args: argparse.Namespace) -> Plan:
        """The full or the quick plan, with what the command line sets."""
        plan = cls(2000, 50, 1, 50, 1000, 20) if args.quick else cls()
        return cls(
            messages=args.messages or plan.messages,
            message_devices=plan.message_devices,
            ingest_runs=args.ingest_runs or plan.ingest_runs,
            devices=args.devices or plan.devices,
            list_devices=args.list_devices or plan.list_devices,
            requests=args.requests or plan.requests,
            tick_s=args.tick,
        )


def measure_listing(plan: Plan, scratch: Path) -> Listing:
    """Seed a fresh control plane with `list_devices` devices and time the list queries."""
    data = scratch / "list-cp"
    data.mkdir()
    migrate_and_token(data)
    url = default_database_url(data)
    seed_s = asyncio.run(seed_fleet(url, plan.list_devices))
    say(f"  {plan.list_devices:,} devices inserted in {seed_s:.1f} s; cp serve")
    with control_plane(data, free_port()) as cp:
        timings = asyncio.run(time_queries(cp.url, cp.token, url, plan.requests))
    return Listing(plan.list_devices, seed_s, timings)


def tool_versions() -> str:
    """Versions of what the figures depend on."""
    found = []
    for name in ("aiohttp", "SQLAlchemy", "aiosqlite", "paho-mqtt"):
        found.append(f"{name} {importlib.metadata.version(name)}")
    mosquitto = find_program("mosquitto")
    if mosquitto:
        result = subprocess.run([mosquitto, "-h"], capture_output=True, text=True, check=False)
        first = (result.stdout or result.stderr).splitlines()[:1]
        found += [line.replace("mosquitto version", "mosquitto").strip() for line in first]
    return ", ".join(found)


def collect(plan: Plan, args: argparse.Namespace) -> FleetResults:
    """Run the parts that are not skipped."""
    if find_program("mosquitto") is None and not (args.skip_ingest and args.skip_convergence):
        raise BenchError("mosquitto is not installed: run `make system-deps`")
    ingest = convergence = listing = None
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-fleet-") as work:
        scratch = Path(work)
        if not args.skip_ingest:
            say(f"ingest: {plan.messages:,} telemetry messages, {plan.ingest_runs} run(s)")
            (scratch / "ingest").mkdir()
            ingest = asyncio.run(
                measure_ingest(
                    plan.messages, plan.message_devices, plan.ingest_runs, scratch / "ingest"
                )
            )
        if not args.skip_convergence:
            say(f"convergence: {plan.devices:,} simulated devices")
            (scratch / "convergence").mkdir()
            convergence = measure_convergence(plan.devices, plan.tick_s, scratch / "convergence")
        if not args.skip_list:
            say(f"device list: {plan.list_devices:,} devices, {plan.requests} requests per query")
            listing = measure_listing(plan, scratch)
    return FleetResults(ingest, convergence, listing, tool_versions())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.fleet",
        description="Measure ingest throughput, rollout convergence and the device list.",
    )
    positive = _positive
    parser.add_argument("--devices", type=positive, help="simulated devices to converge (1000)")
    parser.add_argument("--list-devices", type=positive, help="devices in the list part (10000)")
    parser.add_argument("--requests", type=positive, help="requests per list query (200)")
    parser.add_argument("--messages", type=positive, help="telemetry messages per run (20000)")
    parser.add_argument("--ingest-runs", type=positive, help="ingest runs, median (3)")
    parser.add_argument("--tick", type=float, help="rollout tick, seconds (the default, 5)")
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: 2,000 messages, 50 and 1,000 devices"
    )
    for part in ("ingest", "convergence", "list"):
        parser.add_argument(f"--skip-{part}", action="store_true", help=f"leave out the {part}")
    add_output_option(parser)
    args = parser.parse_args(argv)
    if args.skip_ingest and args.skip_convergence and args.skip_list:
        parser.error("every part is skipped")
    return args


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, and update the Markdown file."""
    args = parse_args(argv)
    stop_on_sigterm()
    plan = Plan.of(args)
    command = command_line("bench.fleet", argv)
    try:
        results = collect(plan, args)
        section = render_section(results, command)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every subprocess was stopped", file=sys.stderr)
        return 130
    say("\n" + section.split("\n", 2)[2])
    if args.output != "-":
        write_fleet_section(Path(args.output), section)
        say(f"\nwrote {args.output} (section {SECTION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
