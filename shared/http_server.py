"""Running an aiohttp application the way both EdgeFleet servers do.

`serve_until_stopped` binds the socket, reports the port actually bound (port 0 picks a free
one, which tests use), stops on SIGINT or SIGTERM when running in the main thread, or when the
caller sets `stop`, and always cleans the runner up.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable

from aiohttp import web

log = logging.getLogger(__name__)


async def serve_until_stopped(
    runner: web.AppRunner,
    host: str,
    port: int,
    describe: Callable[[int], str],
    stop: asyncio.Event | None = None,
    started: Callable[[int], None] | None = None,
) -> None:
    """Serve `runner` on host:port until stopped; `describe(port)` is logged once listening."""
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = bound_port(runner, port)
        log.info("%s", describe(bound))
        if stop is None:
            stop = asyncio.Event()
        if threading.current_thread() is threading.main_thread():
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
        if started is not None:
            started(bound)
        await stop.wait()
        log.info("stopping")
    finally:
        await runner.cleanup()


def bound_port(runner: web.AppRunner, requested: int) -> int:
    """The TCP port the runner listens on (the requested one unless that was 0)."""
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    return requested
