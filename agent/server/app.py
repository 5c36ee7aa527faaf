"""Builds the agent's aiohttp application and runs it until a signal stops it."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from agent.config import AgentSettings, ServerSettings
from agent.dataplane import DataPlane
from agent.hardware import probe_hardware
from agent.repository import ModelRepository
from agent.runtimes.registry import RuntimeRegistry
from agent.selection import AcceleratorSelector
from agent.selection_cache import SelectionCache
from agent.server.metrics import build_registry
from agent.server.middleware import error_middleware
from agent.server.routes import add_routes
from agent.server.state import DATAPLANE, METRICS, SETTINGS
from agent.server.status_line import status_line
from shared.http_server import serve_until_stopped
from shared.malformed_log import quiet_malformed_requests

if TYPE_CHECKING:
    from agent.telemetry.reporter import TelemetryReporter

log = logging.getLogger(__name__)

# How the HTTP server must run (tests start it with the same options). Besides these,
# handler_cancellation=True: a client that disconnects cancels its queued work.
RUNNER_OPTIONS: dict[str, Any] = {
    "access_log": None,  # an access log halves throughput; the metrics count requests
    "auto_decompress": False,  # decompression is ours, with a cap (gzip bombs)
}


def runner_options(server: ServerSettings) -> dict[str, Any]:
    """`RUNNER_OPTIONS` with the connection timeouts of the settings."""
    # aiohttp arms its keep-alive timer when a connection opens and after each answer, and closes
    # the connection if no complete request header has arrived when it fires: one setting bounds
    # idle keep-alive connections and slow headers alike (its default is over an hour).
    return {**RUNNER_OPTIONS, "keepalive_timeout": server.idle_timeout_s}


@dataclass
class Agent:
    """The pieces of a running agent, wired together."""

    settings: AgentSettings
    repository: ModelRepository
    dataplane: DataPlane
    executor: ThreadPoolExecutor
    app: web.Application
    reporter: TelemetryReporter | None = None  # when a broker is configured


def build_agent(settings: AgentSettings, registry: RuntimeRegistry | None = None) -> Agent:
    """Wire settings, runtimes, selection, repository and HTTP routes into one agent."""
    registry = registry or RuntimeRegistry.default()
    threads = settings.runtime.inference_threads or max(2, os.cpu_count() or 1)
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="edgefleet-infer")
    hardware = probe_hardware(registry, list_devices=False)
    selector = AcceleratorSelector(
        registry,
        settings.runtime_options(),
        SelectionCache(settings.state_dir / "selection-cache.json"),
        hardware.fingerprint(),
    )
    repository = ModelRepository(selector, executor)
    for spec in settings.models:
        repository.add(spec)
    dataplane = DataPlane(repository)
    app = web.Application(
        middlewares=[error_middleware], client_max_size=settings.server.max_body_bytes
    )
    app[SETTINGS] = settings
    app[DATAPLANE] = dataplane
    app[METRICS] = build_registry(repository)
    add_routes(app)
    agent = Agent(settings, repository, dataplane, executor, app)
    app.cleanup_ctx.append(_lifecycle(agent))
    from agent.telemetry.service import attach_telemetry

    attach_telemetry(agent)
    return agent


def _lifecycle(agent: Agent) -> Callable[[web.Application], AsyncIterator[None]]:
    """Load models when the server starts; unload them and stop the workers when it stops."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        agent.repository.start_loading()
        yield
        await agent.repository.close()
        agent.executor.shutdown(wait=True, cancel_futures=True)

    return lifecycle


async def serve(
    agent: Agent,
    stop: asyncio.Event | None = None,
    started: Callable[[int], None] | None = None,
) -> None:
    """Serve until `stop` is set (or SIGINT/SIGTERM in the main thread), then shut down cleanly.

    `started` is called with the bound port once the socket listens (port 0 picks a free one).
    Under systemd the agent reports READY once listening, its status line as readiness changes,
    and watchdog pings while `/v2/health/live` answers (`shared.http_server`).
    """
    settings = agent.settings
    if settings.runtime.cpu_affinity:
        os.sched_setaffinity(0, settings.runtime.cpu_affinity)
    quiet_malformed_requests()
    runner = web.AppRunner(agent.app, handler_cancellation=True, **runner_options(settings.server))
    host = settings.server.host
    await serve_until_stopped(
        runner,
        host,
        settings.server.port,
        lambda port: f"serving the inference API on http://{host}:{port}/v2",
        stop,
        started,
        live_path="/v2/health/live",
        status=lambda: status_line(agent.dataplane),
    )
