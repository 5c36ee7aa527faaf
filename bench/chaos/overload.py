"""Overload: ten times the measured capacity on the inference endpoint.

An agent serves the compute-bound model of `served_agent` (its capacity is set by inference, as
on an edge device). Its capacity C is measured closed-loop (`capacity`), then an open loop
offers `overload_factor` x C for `overload_s`: requests leave on schedule whatever the answers
do, over at most `MAX_IN_FLIGHT` connections (a request due while all are busy is not sent and
is counted). The bounded queue must turn the excess into quick 503s with Retry-After while the
admitted requests keep their latency bounded (about queue size / C), without 500s, resets or
memory growth; right after, the agent must be healthy and answer correctly, and its memory and
file descriptors must come back down.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bench.chaos.capacity import Capacity, measure_capacity
from bench.chaos.http_load import Tally, open_loop, percentile
from bench.chaos.outcome import ChaosOptions, Figure, Outcome
from bench.chaos.resource_log import ResourceLog, Settled, idle_baseline, settled
from bench.chaos.served_agent import (
    MIB,
    Resources,
    ServedModel,
    answer_error,
    healthy,
    log_errors_figure,
    serving,
    write_model,
)
from bench.processes import Server

LAYERS = 1024  # 300-350 req/s on 2 vCPUs with one intra-op thread
QUEUE = 256  # --max-queue-size (the agent's default, given explicitly)
MAX_IN_FLIGHT = 512  # the load generator's connections
SAMPLE_S = 0.1
# Memory the load may add: each connection may hold one 64 KiB read buffer (aiohttp's
# read_bufsize) and each queued request its decoded tensors (2 KiB), plus allocator slack.
RSS_BOUND = (QUEUE + MAX_IN_FLIGHT) * 64 * 1024 + 16 * MIB
# A collapse check, not a performance target: rejecting the excess must leave the model busy.
# The load generator and other work on a shared 2-vCPU machine have cost up to half of C alone.
GOODPUT_FLOOR = 0.2
FDS_MARGIN = 2  # log files and the like that may open after the baseline
SETTLE_S = 15.0


@dataclass(frozen=True)
class Overload:
    """What the open loop saw and what the agent did with it."""

    capacity: Capacity
    offered: float  # req/s asked of the generator
    tally: Tally
    duration_s: float
    idle: Resources
    log: ResourceLog
    healthy_after: bool
    answer_after: str | None  # why a normal request failed right after, or None
    settle: Settled
    log_errors: tuple[str, bool]  # the agent log's error lines, as a figure's value and verdict


def run(options: ChaosOptions) -> Outcome:
    """Measure capacity, offer `overload_factor` times it, and check the agent after."""
    model = write_model(options.work, LAYERS)
    with serving(options.work, model, ["--max-queue-size", str(QUEUE)]) as server:
        found = overload(server, model, options)
    return Outcome(
        "overload",
        "Overload: 10x the measured capacity",
        did(found, options),
        figures(found),
        notes(found),
    )


def overload(server: Server, model: ServedModel, options: ChaosOptions) -> Overload:
    """The measurement: capacity, idle resources, the open loop, then the checks after it."""
    pid = server.process.pid
    capacity = measure_capacity(server.port, model.raw_request(), options.quick_mode)
    idle = idle_baseline(pid)
    offered = options.overload_factor * capacity.rate
    log = ResourceLog(pid, SAMPLE_S)

    async def load() -> Tally:
        stop = asyncio.Event()
        sampler = asyncio.create_task(log.run(stop))
        try:
            return await open_loop(
                server.port, model.raw_request(), offered, options.overload_s, MAX_IN_FLIGHT
            )
        finally:
            stop.set()
            await sampler

    tally = asyncio.run(load())
    alive = server.process.poll() is None
    return Overload(
        capacity=capacity,
        offered=offered,
        tally=tally,
        duration_s=options.overload_s,
        idle=idle,
        log=log,
        healthy_after=alive and healthy(server.port),
        answer_after=answer_error(server.port, model) if alive else "the agent exited",
        settle=settled(pid, idle, RSS_BOUND // 4, FDS_MARGIN, SETTLE_S)
        if alive
        else Settled(idle, 0.0, False, False),
        log_errors=log_errors_figure(server.log),
    )


def did(found: Overload, options: ChaosOptions) -> str:
    """The scenario's sentence for the report."""
    return (
        f"An agent served a compute-bound model ({LAYERS} layers of a 512x512 matmul, "
        f"onnxruntime, one intra-op thread, `--max-queue-size {QUEUE}`). Its capacity C was "
        f"measured closed-loop ({found.capacity.clients} connections), then an open loop "
        f"offered {options.overload_factor:g}x C = {found.offered:,.0f} req/s of one-row "
        f"binary requests for {found.duration_s:g} s over at most {MAX_IN_FLIGHT} connections, "
        f"sampling the agent's RSS and fds every {SAMPLE_S:g} s; then health, a checked "
        f"answer, and RSS and fds polled back toward the idle baseline."
    )


def figures(found: Overload) -> list[Figure]:
    """The table: shares, latency, goodput, memory, and the state after."""
    tally, capacity = found.tally, found.capacity
    answered = max(1, tally.answered)
    rejected = tally.statuses[503]
    other = {s: n for s, n in tally.statuses.items() if s not in (200, 503)}
    failures = {k: n for k, n in tally.failures.items() if n}
    p99 = percentile(tally.ok_ms, 0.99)
    goodput = tally.statuses[200] / found.duration_s
    sent_rate = tally.sent / found.duration_s
    due = tally.sent + tally.not_sent
    peak = found.log.peak_rss
    settle = found.settle
    return [
        Figure("capacity C", capacity.describe()),
        Figure(
            "offered / sent",
            f"{found.offered:,.0f} / {sent_rate:,.0f} req/s; not sent "
            f"{tally.not_sent:,} of {due:,} ({tally.not_sent / max(1, due):.0%}, all "
            f"{MAX_IN_FLIGHT} connections busy)",
        ),
        Figure("answered 503", f"{rejected:,} of {tally.answered:,} ({rejected / answered:.1%})"),
        Figure(
            "503s with Retry-After",
            f"{tally.retry_after:,} of {rejected:,}",
            "all",
            tally.retry_after == rejected,
        ),
        Figure(
            "other errors (non-200/503, resets, timeouts)",
            f"{sum(other.values()) + sum(failures.values())} {other or ''}{failures or ''}".strip(),
            "0",
            not other and not failures,
        ),
        Figure(
            "p99 of admitted (200) vs at capacity",
            f"{p99:,.0f} ms vs {capacity.p99_ms:,.0f} ms = {p99 / capacity.p99_ms:.1f}x "
            f"(queue / goodput = {QUEUE / max(goodput, 1.0) * 1e3:,.0f} ms)",
        ),
        Figure(
            "goodput (200s) vs C",
            f"{goodput:,.0f} req/s = {goodput / capacity.rate:.2f}x",
            f">= {GOODPUT_FLOOR:g}x (no collapse)",
            goodput >= GOODPUT_FLOOR * capacity.rate,
        ),
        Figure(
            "peak RSS vs idle",
            f"{peak / MIB:,.0f} MiB vs {found.idle.rss_mib:,.0f} MiB "
            f"(+{(peak - found.idle.rss) / MIB:,.1f} MiB)",
            f"<= idle + {RSS_BOUND / MIB:,.0f} MiB",
            peak <= found.idle.rss + RSS_BOUND,
        ),
        Figure(
            "healthy and a correct answer right after",
            "yes"
            if found.healthy_after and found.answer_after is None
            else f"no: healthy {found.healthy_after}, answer {found.answer_after}",
            "yes",
            found.healthy_after and found.answer_after is None,
        ),
        Figure(
            "RSS after vs idle",
            f"+{(settle.after.rss - found.idle.rss) / MIB:,.1f} MiB after {settle.seconds:.1f} s",
            f"<= +{RSS_BOUND / 4 / MIB:,.0f} MiB within {SETTLE_S:g} s",
            settle.rss_back,
        ),
        Figure(
            "fds idle / peak / after",
            f"{found.idle.fds} / {found.log.peak_fds} / {settle.after.fds}",
            f"after <= idle + {FDS_MARGIN}",
            settle.fds_back,
        ),
        Figure("ERROR lines in the agent's log", found.log_errors[0], "0", found.log_errors[1]),
    ]


def notes(found: Overload) -> list[str]:
    """What a reader should know to interpret the table."""
    return [
        "Latency and goodput figures share 2 vCPUs between the agent and the load generator: "
        "compare the ratios, not the milliseconds. The p99 of admitted requests is reported "
        "without a target: the bounded queue caps the wait inside the agent near queue size / "
        "goodput plus one batch; the rest is time in socket buffers before the event loop "
        "reads the request.",
        f"Requests are timed from their send to their last byte; a request due while all "
        f"{MAX_IN_FLIGHT} connections wait is not sent (so the client stays bounded) and is "
        "counted above instead of queued behind the others.",
    ]
