"""`serve_until_stopped` under systemd: READY once listening, pings while the server answers.

Over HTTPS too: the liveness check then asks through TLS, trusting the served certificate.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from shared.http_server import serve_until_stopped
from shared.systemd import SystemdSettings
from shared.tls import ServerTls, client_context
from tests.shared.notify_socket import NotifyListener, has
from tests.shared.tls import make_test_pki


@pytest.fixture
def listener() -> Iterator[NotifyListener]:
    with NotifyListener() as bound:
        yield bound


class LiveEndpoint:
    """`GET /live`: 200 or 503 as the test says, counting the requests."""

    def __init__(self) -> None:
        self.status = 200
        self.requests = 0
        self.asked = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        self.asked.set()
        return web.Response(status=self.status)

    async def asked_times(self, count: int) -> None:
        """Wait until `count` more requests arrived."""
        target = self.requests + count
        async with asyncio.timeout(10):
            while self.requests < target:
                self.asked.clear()
                await self.asked.wait()


def _runner(live: LiveEndpoint) -> web.AppRunner:
    app = web.Application()
    app.router.add_get("/live", live.handle)
    return web.AppRunner(app, access_log=None)


async def test_ready_once_listening_pings_while_live_stopping_at_the_end(
    listener: NotifyListener,
) -> None:
    live = LiveEndpoint()
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve_until_stopped(
            _runner(live),
            "0.0.0.0",  # a wildcard address: the check goes through the loopback
            0,
            lambda bound: f"listening on {bound}",
            stop,
            port.set_result,
            live_path="/live",
            systemd=SystemdSettings(listener.notify_socket, 0.02),
        )
    )
    try:
        ready = await listener.next()
        assert port.done(), "READY=1 came before the socket listened"
        assert ready["READY"] == "1"
        assert ready["STATUS"] == f"listening on {port.result()}"
        # The socket accepted connections when READY was sent.
        _, writer = await asyncio.open_connection("127.0.0.1", port.result())
        writer.close()
        await writer.wait_closed()
        for _ in range(2):
            assert await listener.next() == {"WATCHDOG": "1"}
        assert live.requests >= 2, "each ping follows a request to the liveness path"

        live.status = 503
        await live.asked_times(2)  # the first check after the change has answered
        listener.drain()
        await live.asked_times(2)
        assert not [m for m in listener.drain() if "WATCHDOG" in m]

        live.status = 200
        await listener.next_matching(has("WATCHDOG"))
    finally:
        stop.set()
        await server
    await listener.next_matching(has("STOPPING", "1"))


async def test_a_server_that_cannot_bind_never_says_ready(listener: NotifyListener) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with pytest.raises(OSError, match="address already in use"):
            await serve_until_stopped(
                _runner(LiveEndpoint()),
                "127.0.0.1",
                busy,
                str,
                asyncio.Event(),
                live_path="/live",
                systemd=SystemdSettings(listener.notify_socket, 0.02),
            )
    assert listener.drain() == []


async def test_over_https_the_liveness_check_trusts_the_served_certificate(
    listener: NotifyListener, tmp_path: Path
) -> None:
    pki = make_test_pki(tmp_path)
    tls = ServerTls.load(pki.server_cert, pki.server_key)
    assert tls.context.minimum_version is ssl.TLSVersion.TLSv1_2
    live = LiveEndpoint()
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(
        serve_until_stopped(
            _runner(live),
            "0.0.0.0",  # the check goes to 127.0.0.1, a name the certificate need not carry
            0,
            lambda bound: f"listening on {bound}",
            stop,
            port.set_result,
            live_path="/live",
            systemd=SystemdSettings(listener.notify_socket, 0.02),
            tls=tls,
        )
    )
    try:
        assert (await listener.next())["READY"] == "1"
        for _ in range(2):
            assert await listener.next() == {"WATCHDOG": "1"}
        assert live.requests >= 2, "each ping follows an HTTPS request to the liveness path"
        # What clients see: HTTPS with the served chain, verified against the CA.
        connector = aiohttp.TCPConnector(ssl=client_context(pki.ca))
        async with (
            aiohttp.ClientSession(connector=connector) as session,
            session.get(f"https://localhost:{port.result()}/live") as response,
        ):
            assert response.status == 200
    finally:
        stop.set()
        await server
    await listener.next_matching(has("STOPPING", "1"))
