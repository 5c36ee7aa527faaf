"""The prose of the Bundles section: how each figure was measured, and what the run shows."""

from __future__ import annotations

import statistics

from bench.activations import POLL_INTERVAL_S, PROBATION_S
from bench.bundle_plan import (
    CONNECTIONS,
    TRIGGER_S,
    WARMUP_S,
    BundleResults,
    SwapRun,
    median_phase,
    median_to_serving,
)
from bench.verify_speed import MB


def ms(seconds: float) -> str:
    """`12.3 ms`, `1,234 ms`."""
    value = seconds * 1000
    return f"{value:,.1f} ms" if value < 100 else f"{value:,.0f} ms"


def mb_s(size: int, seconds: float) -> str:
    """`1,234 MB/s`."""
    return f"{size / MB / seconds:,.0f} MB/s"


def notes(results: BundleResults) -> list[str]:
    """How each figure was measured."""
    plan = results.plan
    return [
        "Verification: the three functions read the large bundle's archive, written just "
        "before, so every read comes from the page cache, for the baseline and the verifier "
        "alike (a device verifies right after the download, with the archive in cache too). "
        f"Median of {plan.rounds} rounds after a warm-up round; `extract_bundle` extracts into "
        "a fresh directory each round. MB = 10^6 bytes. Ratios of rates (MB/s) are value / "
        "baseline, so higher is better; ratios of times and latencies are value / baseline "
        "too, so lower is better.",
        "",
        "Activation: `edgefleet agent run` in a subprocess, following an assignment file it "
        f"polls every {POLL_INTERVAL_S:g} s, probation {PROBATION_S:g} s. Phases are gaps "
        "between consecutive events of `<state_dir>/events.jsonl`. Each release is a new "
        "version whose ONNX file carries a new doc string, so the selection measures every "
        "candidate again as it would for new weights: *load + select + golden* is loading and "
        "timing each candidate, then the golden vectors. Each gap also holds one fsynced event "
        "append and one fsynced state-file save; *state writes* is a gap with nothing else in "
        "it. No event closes the warm-up, so *warm + swap* holds the warm-up runs and the swap, "
        "a single dictionary assignment on the event loop. MLP rows are medians over "
        f"{plan.repeats} activation(s) per download scheme (phases after the download: over "
        "both schemes); the large bundle's rows come from one activation. HTTP downloads come "
        "from `bench/bundle_server.py` (aiohttp static files, sendfile) on 127.0.0.1; the "
        "download baseline is a plain aiohttp GET of the same file from the same server, the "
        "body discarded (median of 3). The *verify + extract* baseline is the in-process "
        "`extract_bundle` figure above.",
        "",
        f"Swap: `wrk -t1 -c{CONNECTIONS} -d{plan.window_s}s --latency` with `bench/wrk_post.lua`, "
        f"one-row MLP binary requests naming no version, after a {WARMUP_S} s warm-up; "
        f"{plan.swaps} pair(s) of windows: a steady one, then one of the same length in which "
        f"the next MLP release is assigned (HTTP) {TRIGGER_S:g} s in. The event log must show "
        "each activation inside its window. The table gives the medians of the p50, p99 and "
        "req/s of each kind of window, and the failed requests summed over the windows. "
        f"Probation lasts {PROBATION_S:g} s (the default is 60 s) so that it ends inside the "
        "window; under load a new version can fail it (its p95 against the previous version's), "
        "and the agent then swaps the previous version back within the same window, so those "
        "windows hold two swaps and are counted apart. wrk, the agent and the bundle server "
        "share the CPUs. Errors are non-2xx answers plus socket errors counted by wrk.",
    ]


def derived(results: BundleResults) -> list[str]:
    """Figures computed from the table that say where the time goes."""
    speed, large = results.speed, results.large
    second_pass = speed.extract_s - speed.verify_s
    phases = ("download", "verify + extract", "load + select + golden", "warm + swap")
    http = {name: median_phase(results.http, name) for name in phases}
    total = median_to_serving(results.http)
    biggest = max(http, key=lambda name: http[name])
    noticed = statistics.median(a.times["downloading"] - a.assigned_at for a in results.http)
    large_phases = {name: large.phase(name) for name in phases}
    return [
        f"- `verify_bundle` took {speed.verify_s / speed.sha256_s:.2f}x the time of one "
        f"SHA-256 pass. `extract_bundle` spent {ms(speed.verify_s)} verifying and "
        f"{ms(second_pass)} on its second pass (hash, write, fsync: "
        f"{mb_s(speed.size, second_pass)}). Extractions took "
        f"{ms(min(speed.every_extract_s))} to {ms(max(speed.every_extract_s))} over the "
        f"{len(speed.every_extract_s)} rounds, warm-up included (first: "
        f"{ms(speed.every_extract_s[0])}).",
        f"- MLP bundle over HTTP: {ms(total)} from the assignment file being written to the new "
        f"version serving. Noticing the assignment took {ms(noticed)} of it (polled every "
        f"{POLL_INTERVAL_S:g} s), the largest phase {ms(http[biggest])} ({biggest}), and the "
        f"four phases together {ms(sum(http.values()))}.",
        f"- {large.size / MB:,.0f} MB bundle over HTTP: {ms(large.to_serving_s)} to serving: "
        + ", ".join(f"{name} {ms(seconds)}" for name, seconds in large_phases.items())
        + f". Its download ran at {mb_s(large.size, large_phases['download'])}, the plain GET "
        f"at {mb_s(large.size, results.plain_download_s)}.",
        *(swap_line(number, swap) for number, swap in enumerate(results.swaps, 1)),
    ]


def swap_line(number: int, swap: SwapRun) -> str:
    """When the activation of one swap window happened, and the window's figures."""
    activation, start = swap.activation, swap.started
    busy = activation.serving_at - activation.times["downloading"]
    steady, swapping = swap.steady, swap.swapping
    verdict = "committed" if activation.outcome == "active" else f"**{activation.outcome}**"
    if activation.outcome != "active":
        verdict += f" by probation ({activation.reason})"
    return (
        f"- Swap window {number} ({swapping.duration_s:.1f} s): assignment written at "
        f"+{activation.assigned_at - start:.2f} s, download from "
        f"+{activation.times['downloading'] - start:.2f} s, new version serving from "
        f"+{activation.serving_at - start:.2f} s (`{activation.backend}`), {verdict} at "
        f"+{activation.ended_at - start:.2f} s; download to serving took {ms(busy)}, "
        f"{busy / swapping.duration_s:.0%} of the window. p99 {swapping.p99_ms:.2f} ms against "
        f"{steady.p99_ms:.2f} ms in the steady window before it "
        f"({swapping.p99_ms / steady.p99_ms:.2f}x); throughput "
        f"{round(100 * (swapping.rate / steady.rate - 1)):+d}%."
    )
