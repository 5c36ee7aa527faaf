"""Serving benchmark: the agent under wrk, against baselines measured in the same run.

    .venv/bin/python -m bench.serving [--duration S] [--quick] [--output docs/benchmarks.md]

Baselines: a trivial aiohttp endpoint (`bench.trivial_server`, the agent's server settings)
under the same wrk load, and onnxruntime called in-process on the same model files. The agent
runs as `edgefleet agent serve` in a subprocess on 127.0.0.1. Targets are reported as met or
missed, never asserted: timings on a shared machine are noisy, so compare the ratios.

This module holds the measurement phases and the command line; `bench/__init__.py` lists the
modules they use.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import psutil

from agent.sample_models import SampleIndex, SampleModel, write_sample_models
from bench import BenchError, say, stop_on_sigterm
from bench.http_client import batch_counts, chosen_backend, infer_path
from bench.payloads import Payload, PayloadKey, build_payloads, check_answer, post
from bench.plan import (
    CONCURRENCY,
    IDLE_S,
    MB,
    MODELS,
    RAW_BATCHES,
    STARTS,
    WARM_REQUESTS,
    WARMUP_S,
    Results,
    agent_runs,
    load_label,
    payload_keys,
    raw_label,
    trivial_label,
)
from bench.processes import (
    AGENT_READY_PATH,
    FIRST_READY_DEADLINE_S,
    READY_DEADLINE_S,
    TRIVIAL_READY_PATH,
    AgentLaunch,
    Command,
    edgefleet_executable,
    running,
    trivial_command,
)
from bench.raw_runtime import raw_rates
from bench.report import add_output_option, command_line, versions, write_section
from bench.serving_report import SECTION, render_section
from bench.wrk import WrkResult, ensure_wrk, run_wrk


@dataclass(frozen=True)
class Bench:
    """What every phase of one run shares."""

    wrk: str
    work: Path  # temporary: models, bodies, state directories, server logs
    models_dir: Path
    index: SampleIndex
    payloads: dict[PayloadKey, Payload]
    duration_s: int
    policy: str
    batch_delay_us: int

    def agent(self, models: dict[str, list[Path]], state: str, delay_us: int) -> AgentLaunch:
        """An agent launch with this run's policy."""
        executable = edgefleet_executable()
        return AgentLaunch(executable, models, self.work / state, self.policy, delay_us)

    def sample(self, name: str) -> SampleModel:
        """The sample model called `name`."""
        return next(m for m in self.index.models if m.name == name)

    def files(self, name: str) -> list[Path]:
        """Every variant of a sample model that was written."""
        return [self.models_dir / f.model.file for f in self.sample(name).files]


def load(bench: Bench, port: int, path: str, payload: Payload, label: str, c: int) -> WrkResult:
    """A discarded warm-up run, then the measured wrk run (with the agent's mean batch size)."""
    url = f"http://127.0.0.1:{port}{path}"
    run_wrk(bench.wrk, url, payload, c, WARMUP_S)
    before = batch_counts(port, payload.model)
    result = run_wrk(bench.wrk, url, payload, c, bench.duration_s)
    after = batch_counts(port, payload.model)
    if before is not None and after is not None and after[1] > before[1]:
        mean = (after[0] - before[0]) / (after[1] - before[1])
        result = replace(result, rows_per_batch=mean)
    rows = f"  {result.rows_rate:,.0f} rows/s" if result.rows_per_request > 1 else ""
    say(
        f"  {label:<25} {result.rate:>9,.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
        f"p99 {result.p99_ms:6.2f} ms  errors {result.errors}{rows}"
    )
    if result.errors:
        say(f"  !!! {label}: {result.errors} requests FAILED (non-2xx or socket errors)")
    return result


def measure_raw(bench: Bench, results: Results) -> None:
    """onnxruntime in-process on each model's FP32 ONNX file, at each baseline batch size."""
    say("onnxruntime in-process (CPUExecutionProvider)")
    for model in MODELS:
        rates = raw_rates(bench.models_dir, bench.sample(model), RAW_BATCHES[model])
        for batch, rate in rates.items():
            results.raw_rows_s[raw_label(model, batch)] = rate
            say(f"  {model} batch {batch:<2} {rate:>12,.0f} rows/s")


def start_figures(
    bench: Bench, name: str, command: Command, ready_path: str, path: str, payload: Payload
) -> tuple[float, float]:
    """Median start-to-ready seconds and idle RSS (MB, after a few requests) over a few starts."""
    ready, rss = [], []
    for _ in range(STARTS):
        with running(name, command, ready_path, bench.work, READY_DEADLINE_S) as server:
            ready.append(server.ready_s)
            for _ in range(WARM_REQUESTS):
                reply = post(server.port, path, payload)
                if reply.status != 200:
                    raise BenchError(f"{name}: HTTP {reply.status} to {path}")
            time.sleep(IDLE_S)  # let the server go idle before reading its memory
            rss.append(psutil.Process(server.process.pid).memory_info().rss / MB)
    return statistics.median(ready), statistics.median(rss)


def bench_trivial(bench: Bench, results: Results) -> None:
    """The trivial aiohttp endpoint: throughput, start-to-ready and idle RSS."""
    say("trivial aiohttp endpoint (bench/trivial_server.py), MLP binary body")
    payload = bench.payloads["mlp", "binary", 1]
    ready_path = TRIVIAL_READY_PATH
    with running("trivial", trivial_command, ready_path, bench.work, READY_DEADLINE_S) as server:
        for c in CONCURRENCY:
            label = trivial_label(c)
            results.load[label] = load(bench, server.port, "/infer", payload, label, c)
    figures = start_figures(bench, "trivial", trivial_command, ready_path, "/infer", payload)
    results.ready_s["trivial"], results.rss_mb["trivial"] = figures


def load_agent(bench: Bench, results: Results, port: int, delayed: bool) -> None:
    """Check the agent's answer to each body it will get, then load it with each in turn."""
    runs = agent_runs(delayed)
    for key in dict.fromkeys(key for key, _ in runs):
        check_answer(port, bench.payloads[key])
    for key, c in runs:
        label = load_label(key, c, delayed)
        results.load[label] = load(bench, port, infer_path(key[0]), bench.payloads[key], label, c)


def bench_agent(bench: Bench, results: Results) -> None:
    """The agent serving every variant of both models, without a queue delay."""
    launch = bench.agent({m: bench.files(m) for m in MODELS}, "state", 0)
    say("agent, --max-queue-delay-us 0 (first start measures every variant)")
    deadline = FIRST_READY_DEADLINE_S
    with running("agent", launch.command, AGENT_READY_PATH, bench.work, deadline) as srv:
        say(f"  ready after {srv.ready_s:.1f} s")
        for model in MODELS:
            results.chosen[model] = chosen_backend(srv.port, model)
            say(f"  {model} served by {results.chosen[model]}")
        load_agent(bench, results, srv.port, delayed=False)


def bench_batching(bench: Bench, results: Results) -> None:
    """The same agent (selection cached) with a queue delay, CNN at c=32."""
    delay = bench.batch_delay_us
    launch = bench.agent({m: bench.files(m) for m in MODELS}, "state", delay)
    say(f"agent, --max-queue-delay-us {delay}")
    name, deadline = "agent-batching", READY_DEADLINE_S
    with running(name, launch.command, AGENT_READY_PATH, bench.work, deadline) as srv:
        chosen = chosen_backend(srv.port, "cnn")
        if chosen != results.chosen.get("cnn"):  # the cached selection should not change
            results.chosen["cnn with queue delay"] = chosen
            say(f"  cnn served by {chosen}")
        load_agent(bench, results, srv.port, delayed=True)


def bench_resources(bench: Bench, results: Results) -> None:
    """An agent serving only mlp.onnx: start-to-ready and idle RSS once its selection is cached."""
    launch = bench.agent({"mlp": [bench.models_dir / "mlp.onnx"]}, "state-mlp", 0)
    say("agent serving only mlp.onnx: a first start caches the selection, then timed starts")
    deadline = FIRST_READY_DEADLINE_S
    with running("agent-mlp", launch.command, AGENT_READY_PATH, bench.work, deadline) as srv:
        results.chosen["mlp.onnx alone"] = chosen_backend(srv.port, "mlp")
    payload = bench.payloads["mlp", "binary", 1]
    figures = start_figures(
        bench, "agent-mlp", launch.command, AGENT_READY_PATH, infer_path("mlp"), payload
    )
    results.ready_s["agent"], results.rss_mb["agent"] = figures
    say(f"  start to ready {figures[0]:.2f} s, idle RSS {figures[1]:.0f} MB")


def collect(duration_s: int, policy: str, batch_delay_us: int) -> Results:
    """Run every phase in a temporary directory and return the figures."""
    wrk = ensure_wrk()
    edgefleet_executable()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        work = Path(tmp)
        models_dir = work / "models"
        say(f"writing the sample models to {models_dir}")
        index = write_sample_models(models_dir)
        payloads = build_payloads(index, models_dir, payload_keys())
        bench = Bench(wrk, work, models_dir, index, payloads, duration_s, policy, batch_delay_us)
        results = Results(versions=versions(wrk))
        measure_raw(bench, results)
        bench_trivial(bench, results)
        bench_agent(bench, results)
        bench_batching(bench, results)
        bench_resources(bench, results)
        return results


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving",
        description="Load the agent with wrk and compare it with baselines from the same run.",
    )
    parser.add_argument("--duration", type=int, default=8, metavar="S", help="seconds per run")
    parser.add_argument("--quick", action="store_true", help="3 s per run")
    add_output_option(parser)
    parser.add_argument("--policy", choices=["latency", "throughput"], default="throughput")
    parser.add_argument("--batch-delay-us", type=int, default=500, metavar="US")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, and update the Markdown file."""
    args = parse_args(argv)
    stop_on_sigterm()
    duration = 3 if args.quick else max(1, args.duration)
    command = command_line("bench.serving", argv)
    try:
        results = collect(duration, args.policy, args.batch_delay_us)
        section = render_section(results, command, duration, args.policy)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every server was stopped", file=sys.stderr)
        return 130
    say("\n" + section.split("\n", 2)[2].rsplit("\n", 1)[0])
    if args.output != "-":
        write_section(Path(args.output), SECTION, section)
        say(f"\nwrote {args.output}")
    failed = results.failed_runs()
    if failed:
        say(f"\n!!! REQUESTS FAILED in {', '.join(failed)}: those figures are invalid !!!")
    return 0


if __name__ == "__main__":
    sys.exit(main())
