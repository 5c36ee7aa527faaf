"""Builds the control plane's aiohttp application and runs it until a signal stops it."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from control_plane.api.auth import auth_middleware
from control_plane.api.middleware import error_middleware
from control_plane.api.openapi import ALL_ENDPOINTS
from control_plane.api.routes import add_routes
from control_plane.api.state import ACCESS, ENGINE, SETTINGS
from control_plane.db.engine import create_engine_for, redact, sqlite_file
from control_plane.db.migrate import check_current
from control_plane.errors import SchemaOutOfDate
from control_plane.settings import ControlPlaneSettings

log = logging.getLogger(__name__)


def build_app(settings: ControlPlaneSettings) -> web.Application:
    """The API with its routes; the database is opened (and checked) when the app starts."""
    app = web.Application(middlewares=[error_middleware, auth_middleware])
    app[SETTINGS] = settings
    app[ACCESS] = {}
    add_routes(app, ALL_ENDPOINTS)
    app.cleanup_ctx.append(_database)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    """Refuse to start on a database that is missing or not at the newest schema."""
    url = app[SETTINGS].database_url
    hint = "run `edgefleet cp migrate` first"
    file = sqlite_file(url)
    if file is not None and not await asyncio.to_thread(file.exists):
        raise SchemaOutOfDate(f"no database at {redact(url)}; {hint}")
    if not await check_current(url):
        raise SchemaOutOfDate(f"{redact(url)} is not at the newest schema; {hint}")
    engine = create_engine_for(url)
    app[ENGINE] = engine
    try:
        yield
    finally:
        await engine.dispose()


async def serve(
    settings: ControlPlaneSettings,
    stop: asyncio.Event | None = None,
    started: Callable[[int], None] | None = None,
) -> None:
    """Serve until `stop` is set (or SIGINT/SIGTERM in the main thread), then shut down."""
    runner = web.AppRunner(build_app(settings), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        port = _bound_port(runner, settings.port)
        log.info("serving the control plane API on http://%s:%d/api/v1", settings.host, port)
        if stop is None:
            stop = asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        if started is not None:
            started(port)
        await stop.wait()
        log.info("stopping the control plane API")
    finally:
        await runner.cleanup()


def _bound_port(runner: web.AppRunner, requested: int) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested
