"""Slow and hostile clients: slowloris, huge headers, endless bodies, idle connections.

A well-behaved client sends inference requests at a modest open-loop rate, first alone (the
baseline), then while the attacks of `attacks.attacks` run against the same agent. Each attack
must be ended by the server in bounded time: a header that never finishes and an idle keep-alive
connection by `server.idle_timeout_s`, a body that never finishes by `server.body_timeout_s`
(408) or by the size limit (413), an oversized header at once (400). aiohttp then keeps reading
and discarding the rest of an unfinished body for its lingering time before it closes the
connection, so that bound is added where a body is cut short. The full run uses the agent's
default timeouts; `--quick` sets them to 2 s in a settings file to keep the test short.
"""

from __future__ import annotations

import asyncio
import resource
from dataclasses import dataclass
from pathlib import Path

from agent.config import ServerSettings
from bench.chaos.attacks import Attack, Ending, attacks, launch
from bench.chaos.hostile_figures import FDS_MARGIN, Bounds, figures
from bench.chaos.http_load import Tally, open_loop
from bench.chaos.outcome import ChaosOptions, Outcome
from bench.chaos.resource_log import ResourceLog, Settled, idle_baseline, settled
from bench.chaos.served_agent import MIB, Resources, log_errors_figure, serving, write_model

LAYERS = 256
GOOD_RATE = 50.0  # the well-behaved client's requests per second
GOOD_IN_FLIGHT = 16
BASELINE_S, QUICK_BASELINE_S = 10.0, 3.0
SLOWLORIS, QUICK_SLOWLORIS = 400, 100
IDLE, QUICK_IDLE = 50, 20
QUICK_TIMEOUT_S = 2.0
LINGER_S = 10.0  # aiohttp's lingering_time, which the agent keeps
SLACK_S = 3.0  # scheduling slack on a busy 2-vCPU machine
SAMPLE_S = 0.25
FD_HEADROOM = 128  # descriptors left for everything but the attack's connections


@dataclass(frozen=True)
class Hostile:
    """What the scenario measured."""

    bounds: Bounds
    baseline: Tally
    during: Tally
    endings: list[tuple[Attack, list[Ending]]]
    idle: Resources
    log: ResourceLog
    after: Settled
    attack_s: float
    baseline_s: float
    log_errors: tuple[str, bool]  # the agent log's error lines, as a figure's value and verdict


def run(options: ChaosOptions) -> Outcome:
    """Baseline, then the attacks beside the well-behaved client, then the agent's resources."""
    server_settings = ServerSettings()
    flags: list[str] = []
    if options.quick_mode:
        config = write_settings(options.work)
        flags = ["--config", str(config)]
        server_settings = ServerSettings(
            idle_timeout_s=QUICK_TIMEOUT_S, body_timeout_s=QUICK_TIMEOUT_S
        )
    bounds = Bounds(
        server_settings.idle_timeout_s,
        server_settings.body_timeout_s,
        LINGER_S,
        SLACK_S,
        server_settings.max_body_bytes,
    )
    attack_s = max(bounds.idle_s, bounds.body_s + bounds.linger_s) + bounds.slack_s + 1
    chosen = attacks(*connection_counts(options.quick_mode))
    model = write_model(options.work, LAYERS)
    with serving(options.work, model, flags) as server:
        request, pid, port = model.raw_request(), server.process.pid, server.port
        baseline_s = QUICK_BASELINE_S if options.quick_mode else BASELINE_S
        baseline = asyncio.run(open_loop(port, request, GOOD_RATE, baseline_s, GOOD_IN_FLIGHT))
        idle = idle_baseline(pid)
        log = ResourceLog(pid, SAMPLE_S)

        async def attack() -> tuple[Tally, list[list[Ending]]]:
            deadline = asyncio.get_running_loop().time() + attack_s
            stop = asyncio.Event()
            sampler = asyncio.create_task(log.run(stop))
            hostile = [asyncio.create_task(launch(port, a, deadline)) for a in chosen]
            try:
                during = await open_loop(port, request, GOOD_RATE, attack_s, GOOD_IN_FLIGHT)
                return during, list(await asyncio.gather(*hostile))
            finally:
                for task in hostile:
                    task.cancel()
                await asyncio.gather(*hostile, return_exceptions=True)
                stop.set()
                await sampler

        during, endings = asyncio.run(attack())
        after = settled(pid, idle, 16 * MIB, FDS_MARGIN, 15.0)
        errors_logged = log_errors_figure(server.log)
    endings_by_attack = list(zip(chosen, endings, strict=True))
    found = Hostile(
        bounds,
        baseline,
        during,
        endings_by_attack,
        idle,
        log,
        after,
        attack_s,
        baseline_s,
        errors_logged,
    )
    return Outcome(
        "hostile-clients",
        "Slow and hostile clients",
        did(found),
        figures(found),
        [
            f"Timeouts: idle_timeout_s = {bounds.idle_s:g} s, body_timeout_s = "
            f"{bounds.body_s:g} s ({'set for --quick' if options.quick_mode else 'defaults'}); "
            f"aiohttp lingers up to {bounds.linger_s:g} s reading the rest of a body it cut "
            f"short; targets allow {bounds.slack_s:g} s of scheduling slack.",
            "Latency figures share 2 vCPUs between the agent, the attackers and the client: the "
            "p99 ratio is reported, not judged.",
        ],
    )


def connection_counts(quick: bool) -> tuple[int, int]:
    """Slowloris and idle connections: the scenario's numbers, within the fd limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    idle = QUICK_IDLE if quick else IDLE
    room = max(0, soft - FD_HEADROOM - idle)
    return min(QUICK_SLOWLORIS if quick else SLOWLORIS, room), idle


def write_settings(work: Path) -> Path:
    """A settings file with the quick setting's short connection timeouts."""
    path = work / "agent.toml"
    path.write_text(
        f"[server]\nidle_timeout_s = {QUICK_TIMEOUT_S}\nbody_timeout_s = {QUICK_TIMEOUT_S}\n"
    )
    return path


def did(found: Hostile) -> str:
    """The scenario's sentence for the report."""
    kinds = ", ".join(f"{a.count} x {a.name}" for a, _ in found.endings)
    return (
        f"A well-behaved client sent {GOOD_RATE:g} inference requests a second (open loop) to an "
        f"agent serving a small compute-bound model, for {found.baseline_s:g} s "
        f"alone, then for {found.attack_s:g} s beside these connections, all opened at once "
        f"on 127.0.0.1: {kinds}. The agent's RSS and fds were sampled every {SAMPLE_S:g} s; "
        f"after the attack every socket was closed and the fds polled back to the idle count."
    )
