"""Running an aiohttp application the way both EdgeFleet servers do.

`serve_until_stopped` binds the socket, reports the port actually bound (port 0 picks a free
one, which tests use), stops on SIGINT or SIGTERM when running in the main thread, or when the
caller sets `stop`, and always cleans the runner up. Under systemd (`Type=notify`) it also
reports READY once listening, the server's status line as it changes, watchdog pings while the
server answers its liveness path, and STOPPING when told to stop (`shared.systemd`). With
`tls` it serves HTTPS, and the liveness check asks over HTTPS too (`shared.tls.ServerTls`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from shared.systemd import SystemdSettings, notifying_systemd
from shared.tls import ServerTls

log = logging.getLogger(__name__)


async def serve_until_stopped(
    runner: web.AppRunner,
    host: str,
    port: int,
    describe: Callable[[int], str],
    stop: asyncio.Event | None = None,
    started: Callable[[int], None] | None = None,
    *,
    live_path: str | None = None,
    status: Callable[[], str] | None = None,
    systemd: SystemdSettings | None = None,
    tls: ServerTls | None = None,
) -> None:
    """Serve `runner` on host:port until stopped; `describe(port)` is logged once listening.

    `live_path` answers 200 while the server lives: the systemd watchdog is pinged only while
    it does. `status` is the line `systemctl status` shows (default: `describe(port)`).
    `systemd` defaults to what the process environment says (nothing outside systemd).
    `tls`: serve HTTPS with its context; None serves plain HTTP.
    """
    if systemd is None:
        systemd = SystemdSettings.from_env(os.environ, os.getpid())
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, ssl_context=tls.context if tls else None)
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
        scheme = "https" if tls else "http"
        async with (
            aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=tls.self_check if tls else True)
            ) as probes,
            notifying_systemd(
                systemd,
                healthy=_liveness(probes, _probe_url(runner, host, bound, live_path, scheme)),
                status=status or (lambda: describe(bound)),
                main_pid=os.getpid(),
            ),
        ):
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


def _probe_url(
    runner: web.AppRunner, host: str, port: int, path: str | None, scheme: str
) -> str | None:
    """Where the server answers its own liveness check: a wildcard address via loopback."""
    if path is None:
        return None
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            host = str(address[0])
            break
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}{path}"


def _liveness(session: aiohttp.ClientSession, url: str | None) -> Callable[[], Awaitable[bool]]:
    """The watchdog's check: the liveness path answers 200 (or, without one, the loop turns)."""

    async def answers() -> bool:
        if url is None:
            return True  # running at all proves the event loop is not blocked
        try:
            async with session.get(url, allow_redirects=False) as response:
                return response.status == 200
        except aiohttp.ClientError:
            return False

    return answers
