"""Bundle benchmark: verification speed, activation phases, and latency during a swap.

    .venv/bin/python -m bench.bundles [--size-mb 256] [--quick] [--output docs/benchmarks.md]

1. `verify_bundle` and `extract_bundle` against plain `hashlib` SHA-256 of the same archive (a
   signed bundle of the sample MLP plus `--size-mb` MB of random weights).
2. A real `edgefleet agent run` is assigned new releases of the MLP, downloaded from a file://
   URL and over HTTP, then the large bundle; the phases come from its event log.
3. wrk loads the agent for a steady window, then for a window in which the next release is
   assigned and swapped in; p99 and failed requests are compared.

Targets are reported as met or missed, never asserted. The modules it uses: `releases` (keys,
releases, assignments), `verify_speed`, `activations` (the agent and its event log),
`bundle_server` (HTTP downloads), `bundle_plan` (targets and figures) and `bundles_report`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from agent.sample_models import SampleModel, write_sample_models
from bench import BenchError, say, stop_on_sigterm
from bench.activations import Activation, AgentUnderTest, agent_command, agent_config
from bench.bundle_notes import ms
from bench.bundle_plan import CONNECTIONS, TRIGGER_S, WARMUP_S, BundleResults, Plan, SwapRun
from bench.bundle_server import READY_PATH, plain_download_s
from bench.bundles_report import SECTION, render_section, write_bundle_section
from bench.http_client import infer_path
from bench.payloads import Payload, check_answer, write_payload
from bench.processes import (
    AGENT_READY_PATH,
    FIRST_READY_DEADLINE_S,
    READY_DEADLINE_S,
    Command,
    running,
)
from bench.releases import MODEL, Release, ReleaseDesk, write_weights
from bench.report import add_output_option, command_line, versions
from bench.verify_speed import MB, measure_verification
from bench.wrk import WrkResult, ensure_wrk, run_wrk

PLAIN_GET_RUNS = 3


@dataclass(frozen=True)
class Releases:
    """Every release one run assigns, in the order it assigns them."""

    first: Release
    file: list[Release]
    http: list[Release]
    loaded: list[Release]
    large: Release


def build_releases(desk: ReleaseDesk, work: Path, plan: Plan) -> Releases:
    """Build the MLP releases and the large one (version numbers rise in assignment order)."""
    repeats = plan.repeats
    count = 1 + 2 * repeats + plan.swaps
    small = [desk.build(version) for version in range(1, count + 1)]
    weights = work / "weights.bin"
    say(f"writing {plan.size_mb} MB of random weights and the large bundle")
    entry = write_weights(weights, plan.size_mb * 1_000_000)
    large = desk.build(count + 1, (weights, entry))
    weights.unlink()  # the archive holds a copy; the disk need not hold three
    file, http = small[1 : 1 + repeats], small[1 + repeats : 1 + 2 * repeats]
    return Releases(small[0], file, http, small[1 + 2 * repeats :], large)


def show(label: str, activation: Activation) -> Activation:
    """Print the phases of an activation as it completes."""
    phases = ", ".join(
        f"{name} {ms(activation.phase(name))}"
        for name in ("download", "verify + extract", "load + select + golden", "warm + swap")
    )
    say(f"  v{activation.version} {label}: {phases}; serving after {ms(activation.to_serving_s)}")
    if activation.outcome != "active":
        say(f"  !!! v{activation.version} was {activation.outcome}: {activation.reason}")
    return activation


def show_window(label: str, result: WrkResult) -> None:
    """Print the figures of a latency window."""
    say(
        f"  {label:<12} p50 {result.p50_ms:.2f} ms  p99 {result.p99_ms:.2f} ms  "
        f"{result.rate:,.0f} req/s  errors {result.errors} ({result.non_2xx} non-2xx)"
    )


def swap_under_load(
    agent: AgentUnderTest, wrk: str, payload: Payload, releases: list[Release], window_s: int
) -> list[SwapRun]:
    """For each release: a steady wrk window, then one in which the release is swapped in."""
    port = agent.server.port
    url = f"http://127.0.0.1:{port}{infer_path(MODEL)}"
    check_answer(port, payload)
    run_wrk(wrk, url, payload, CONNECTIONS, WARMUP_S)
    swaps = []
    for release in releases:
        steady = run_wrk(wrk, url, payload, CONNECTIONS, window_s)
        show_window("steady", steady)
        with ThreadPoolExecutor(1, "wrk") as pool:
            started = time.time()
            load = pool.submit(run_wrk, wrk, url, payload, CONNECTIONS, window_s)
            time.sleep(TRIGGER_S)  # the swap must happen inside the window, not at its edge
            assigned_at = agent.assign(release, "http")
            swapping = load.result()
        show_window("during swap", swapping)
        activation = show("HTTP, under load", agent.wait(release, assigned_at, may_revert=True))
        swaps.append(SwapRun(steady, swapping, activation, started))
        check_answer(port, payload)  # the new version answers as the old one did
    return swaps


def bundle_server_command(directory: Path) -> Command:
    """The command line of the static server handing out the releases."""

    def command(port: int) -> list[str]:
        server = [sys.executable, "-m", "bench.bundle_server"]
        return [*server, "--port", str(port), "--directory", str(directory)]

    return command


def collect(plan: Plan) -> BundleResults:
    """Run every phase in a temporary directory and return the figures."""
    wrk = ensure_wrk()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-bundles-") as tmp:
        work = Path(tmp)
        models_dir = work / "models"
        say(f"writing the sample models and signed releases of the MLP in {work}")
        index = write_sample_models(models_dir)
        sample: SampleModel = next(m for m in index.models if m.name == MODEL)
        desk = ReleaseDesk(work, models_dir, sample)
        releases = build_releases(desk, work, plan)
        say(f"verification speed over {releases.large.size / MB:,.0f} MB ({plan.rounds} rounds)")
        speed = measure_verification(releases.large.path, desk.trust, work / "extract", plan.rounds)
        payload = write_payload(sample, models_dir, "binary", 1)
        first_assigned = desk.assign(releases.first, releases.first.path.resolve().as_uri())
        config = agent_config(work, desk)
        server_command = bundle_server_command(desk.dir)
        say("edgefleet agent run, and a static server for HTTP downloads")
        with (
            running("bundle-server", server_command, READY_PATH, work, READY_DEADLINE_S) as files,
            running(
                "agent", agent_command(config), AGENT_READY_PATH, work, FIRST_READY_DEADLINE_S
            ) as server,
        ):
            agent = AgentUnderTest(server, desk, work, files.port)
            show("file://, first install", agent.wait(releases.first, first_assigned))
            file = [show("file://", agent.activate(r, "file")) for r in releases.file]
            http = [show("HTTP", agent.activate(r, "http")) for r in releases.http]
            say(f"wrk -c{CONNECTIONS}: {plan.swaps} x (a steady window, then one with a swap)")
            swaps = swap_under_load(agent, wrk, payload, releases.loaded, plan.window_s)
            large_url = agent.url(releases.large, "http")
            plain = plain_download_s(large_url, releases.large.size, PLAIN_GET_RUNS)
            say(f"  plain GET of the large bundle: {ms(plain)}")
            large = show("large, HTTP", agent.activate(releases.large, "http"))
        return BundleResults(
            plan=plan,
            speed=speed,
            small_size=releases.first.size,
            file=file,
            http=http,
            large=large,
            plain_download_s=plain,
            swaps=swaps,
            versions=versions(wrk),
        )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.bundles",
        description="Measure bundle verification, activation phases and latency during a swap.",
    )
    parser.add_argument(
        "--size-mb", type=int, metavar="MB", help="random weights in the large bundle (256)"
    )
    parser.add_argument(
        "--quick", action="store_true", help="fewer rounds and activations, 3 s windows"
    )
    add_output_option(parser)
    args = parser.parse_args(argv)
    if args.size_mb is not None and args.size_mb < 1:
        parser.error("--size-mb must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, and update the Markdown file."""
    args = parse_args(argv)
    stop_on_sigterm()
    plan = Plan.of(args.size_mb, args.quick)
    command = command_line("bench.bundles", argv)
    try:
        results = collect(plan)
        section = render_section(results, command)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every subprocess was stopped", file=sys.stderr)
        return 130
    say("\n" + section.split("\n", 2)[2])
    if args.output != "-":
        write_bundle_section(Path(args.output), section)
        say(f"\nwrote {args.output} (section {SECTION})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
