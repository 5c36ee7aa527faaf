"""The images' health check against a service that serves HTTPS, as the control plane's does.

With `--tls-env VAR` and VAR naming the served certificate, the check asks over HTTPS and trusts
that chain only; without the variable it asks over plain HTTP. A real TLS server runs in this
event loop; the check runs as a subprocess, as Docker runs it.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from shared.tls import ServerTls
from tests.deploy.deploy_files import DEPLOY
from tests.shared.tls import HttpsPki, make_test_pki

HEALTHCHECK = DEPLOY / "container" / "healthcheck.py"


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


@pytest.fixture
async def https_port(tmp_path: Path) -> AsyncIterator[tuple[int, HttpsPki]]:
    pki = await asyncio.to_thread(make_test_pki, tmp_path)
    tls = await asyncio.to_thread(ServerTls.load, pki.server_cert, pki.server_key)
    app = web.Application()
    app.router.add_get("/api/v1/health", health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.context)
    await site.start()
    try:
        address = runner.addresses[0]
        yield int(address[1]), pki
    finally:
        await runner.cleanup()


async def check(port: int, certificate: Path | None) -> tuple[int, str]:
    """The check as the control plane's HEALTHCHECK runs it; its status and stderr."""
    env = {k: v for k, v in os.environ.items() if k != "SERVED_CERT"}
    if certificate is not None:
        env["SERVED_CERT"] = str(certificate)
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(HEALTHCHECK), "--tls-env", "SERVED_CERT", "--port", str(port),
        "/api/v1/health",
        env=env,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return process.returncode, err.decode()


async def test_the_check_asks_over_https_trusting_the_served_certificate(
    https_port: tuple[int, HttpsPki],
) -> None:
    port, pki = https_port
    assert await check(port, pki.server_cert) == (0, "")
    # Another chain than the served one is not trusted: the check proves the TLS works.
    code, err = await check(port, pki.other_ca)
    assert code == 1
    assert "CERTIFICATE_VERIFY_FAILED" in err
    # Without the variable the check speaks plain HTTP, which a TLS port does not answer.
    code, err = await check(port, None)
    assert code == 1
    assert f"unhealthy: http://127.0.0.1:{port}/api/v1/health" in err
