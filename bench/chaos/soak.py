"""Soak: half the measured capacity for a long time; memory, file descriptors and errors over it.

An agent serves the compute-bound model of `served_agent` (fewer layers than overload, so more
requests cross the HTTP path per hour). Its capacity C is measured (`capacity`, which also warms
it up), then an open loop offers C / 2 for `soak_s` while a monitor samples the agent's RSS and
open fds about 60 times and, at each sample, also asks `/metrics` and `/v2/models/stats`, so
those paths soak too. A leak shows as RSS that keeps rising at a steady load, or fds that do not
come back once the load stops.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import numpy as np

from bench.chaos.capacity import Capacity, measure_capacity
from bench.chaos.http_load import Connection, Tally, one_request, open_loop
from bench.chaos.outcome import ChaosOptions, Outcome
from bench.chaos.resource_log import ResourceLog, Settled, idle_baseline, settled
from bench.chaos.served_agent import MIB, MODEL, Resources, serving, write_model
from bench.chaos.soak_figures import (
    FDS_MARGIN,
    IDLE_GROWTH_BOUND,
    MAX_IN_FLIGHT,
    errors,
    figures,
    notes,
)

LAYERS = 256  # 800-1,200 req/s on 2 vCPUs with one intra-op thread
LOAD_SHARE = 0.5
SAMPLES = 60
MIN_INTERVAL_S = 0.25
SETTLE_S = 15.0
POLLS = (
    b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    f"GET /v2/models/{MODEL}/stats HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode(),
)


@dataclass(frozen=True)
class Soak:
    """What the soak measured."""

    capacity: Capacity
    rate: float
    duration_s: float
    tally: Tally
    polls: Tally  # the answers of /metrics and the statistics endpoint
    start: Resources  # idle, after the warm-up
    log: ResourceLog  # during the load
    errors_at: list[tuple[float, int]]  # (seconds, errors so far) at each sample
    end: Settled  # idle again, after the load

    def rss_slope_mib_h(self) -> float:
        """Least-squares slope of the RSS samples of the second half of the load, MiB/hour."""
        half = [(t, r.rss) for t, r in self.log.samples if t >= self.duration_s / 2]
        if len(half) < 3:
            return 0.0
        t, rss = np.array(half, dtype=np.float64).T
        return float(np.polyfit(t / 3600.0, rss / MIB, 1)[0])


def run(options: ChaosOptions) -> Outcome:
    """Measure capacity, hold half of it for `soak_s`, and compare the start with the end."""
    model = write_model(options.work, LAYERS)
    with serving(options.work, model) as server:
        pid, port = server.process.pid, server.port
        capacity = measure_capacity(port, model.raw_request(), options.quick_mode)
        start = idle_baseline(pid)
        rate = LOAD_SHARE * capacity.rate
        interval = max(MIN_INTERVAL_S, options.soak_s / SAMPLES)
        log = ResourceLog(pid, interval)
        polls = Tally(started=time.monotonic())
        errors_at: list[tuple[float, int]] = []

        tally = Tally(started=time.monotonic())

        async def soak() -> None:
            stop = asyncio.Event()
            log.started = time.monotonic()
            monitor = asyncio.create_task(watch(port, log, polls, tally, errors_at, stop))
            try:
                await open_loop(
                    port, model.raw_request(), rate, options.soak_s, MAX_IN_FLIGHT, tally
                )
            finally:
                stop.set()
                await monitor

        asyncio.run(soak())
        end = settled(pid, start, IDLE_GROWTH_BOUND, FDS_MARGIN, SETTLE_S)
    found = Soak(capacity, rate, options.soak_s, tally, polls, start, log, errors_at, end)
    return Outcome(
        "soak",
        f"Soak: half the capacity for {duration(options.soak_s)}",
        (
            f"An agent served a compute-bound model ({LAYERS} layers of a 512x512 matmul, "
            f"onnxruntime, one intra-op thread). Its capacity C was measured closed-loop, then "
            f"an open loop offered C / 2 = {rate:,.0f} req/s for {options.soak_s:g} s while the "
            f"agent's RSS and open fds were sampled every {interval:.3g} s, each sample also "
            f"asking `/metrics` and `/v2/models/{MODEL}/stats`; after the load, RSS and fds "
            f"were polled back toward their idle values."
        ),
        figures(found),
        notes(found),
    )


async def watch(
    port: int,
    log: ResourceLog,
    polls: Tally,
    load: Tally,
    errors_at: list[tuple[float, int]],
    stop: asyncio.Event,
) -> None:
    """At each interval: sample resources, poll the metrics paths, note the errors so far."""
    pool: list[Connection] = []
    try:
        while not stop.is_set():
            if log.sample() is None:
                return
            for request in POLLS:
                kept = await one_request(pool, port, request, polls)
                if kept is not None:
                    pool.append(kept)
            errors_at.append((time.monotonic() - log.started, errors(load)))
            try:
                async with asyncio.timeout(log.interval_s):
                    await stop.wait()
            except TimeoutError:
                pass
    finally:
        for connection in pool:
            connection.close()


def duration(seconds: float) -> str:
    """`30 minutes`, `5 minutes` or `20 s`."""
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} s"
