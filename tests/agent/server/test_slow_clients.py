"""Slow and idle clients are cut off in bounded time: headers, bodies and keep-alive.

Before `server.idle_timeout_s` and `server.body_timeout_s` the agent inherited aiohttp's
defaults: a connection that sent its header a byte at a time was closed only after 3,630 s, and
a body that trickled in (or declared 10 GiB) held its handler until the client gave up. The
chaos suite found both (`bench.chaos.hostile_clients`); these tests pin the bounds down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from agent.config import AgentSettings, SelectionSettings, ServerSettings
from agent.model import ModelSpec
from agent.server.app import build_agent, runner_options
from tests.agent.fakes import fake_registry, write_fake_model

TIMEOUT_S = 0.5
MAX_BODY_MB = 1.0
INFER = "/v2/models/echo/infer"


@pytest.fixture
async def port(tmp_path: Path) -> AsyncIterator[int]:
    """An agent with half-second connection timeouts, listening on a free port."""
    registry, _ = fake_registry()
    model = write_fake_model(tmp_path / "echo.fake")
    settings = AgentSettings(
        state_dir=tmp_path / "state",
        server=ServerSettings(
            max_body_mb=MAX_BODY_MB, idle_timeout_s=TIMEOUT_S, body_timeout_s=TIMEOUT_S
        ),
        selection=SelectionSettings(budget_s=0.1),
        models=(ModelSpec("echo", 1, (model,), pin="fake/CPU"),),
    )
    agent = build_agent(settings, registry)
    server = TestServer(agent.app, host="127.0.0.1")
    await server.start_server(**runner_options(settings.server))
    try:
        assert server.port is not None
        await wait_ready(server.port)
        yield server.port
    finally:
        await server.close()


async def wait_ready(port: int) -> None:
    """Poll readiness until the model is loaded (or 30 s have passed)."""
    async with asyncio.timeout(30), aiohttp.ClientSession() as session:
        while True:
            async with session.get(f"http://127.0.0.1:{port}/v2/health/ready") as response:
                if response.status == 200:
                    return
            await asyncio.sleep(0.02)


async def connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection to the agent."""
    return await asyncio.open_connection("127.0.0.1", port)


async def seconds_until_closed(reader: asyncio.StreamReader, limit_s: float) -> float:
    """Read until the server closes the connection; return how long that took."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with asyncio.timeout(limit_s):
        while await reader.read(65536):
            pass
    return loop.time() - started


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Status, lower-case headers and body of one answer."""
    async with asyncio.timeout(10):
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        headers = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name:
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
    return int(head[0].split(" ")[1]), headers, body


def request_head(path: str, **headers: Any) -> bytes:
    """A POST head with these extra headers (underscores become dashes)."""
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def test_a_header_sent_a_byte_at_a_time_is_cut_off(port: int) -> None:
    reader, writer = await connect(port)
    try:
        writer.write(b"GET /v2/health/live HTTP/1.1\r\nX-Slow: ")

        async def trickle() -> None:
            while True:
                writer.write(b"a")
                await asyncio.sleep(0.05)

        feeder = asyncio.create_task(trickle())
        try:
            took = await seconds_until_closed(reader, limit_s=TIMEOUT_S + 5)
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        assert took >= TIMEOUT_S * 0.8
    finally:
        writer.close()


async def test_an_idle_keep_alive_connection_is_closed(port: int) -> None:
    reader, writer = await connect(port)
    try:
        writer.write(b"GET /v2/health/live HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, _, _ = await answer(reader)
        assert status == 200
        took = await seconds_until_closed(reader, limit_s=TIMEOUT_S + 5)
        assert took >= TIMEOUT_S * 0.8
    finally:
        writer.close()


async def test_a_trickling_body_gets_408_and_the_connection_closes(port: int) -> None:
    reader, writer = await connect(port)
    try:
        writer.write(request_head(INFER, content_length=1000) + b'{"inputs": ')
        status, headers, body = await answer(reader)
        assert status == 408
        assert headers.get("connection") == "close"
        assert b"did not arrive within 0.5 s" in body
    finally:
        writer.close()


async def test_an_endless_chunked_body_under_the_limit_gets_408(port: int) -> None:
    reader, writer = await connect(port)
    try:
        writer.write(request_head(INFER, transfer_encoding="chunked") + b"1\r\n{\r\n")
        status, _, _ = await answer(reader)
        assert status == 408
    finally:
        writer.close()


async def test_a_body_declared_over_the_limit_is_refused_before_it_is_read(port: int) -> None:
    reader, writer = await connect(port)
    try:
        writer.write(request_head(INFER, content_length=10 * 1024**3) + b"{")
        loop = asyncio.get_running_loop()
        started = loop.time()
        status, _, body = await answer(reader)
        assert status == 413
        assert loop.time() - started < TIMEOUT_S  # not after waiting for the body
        assert b"larger than the limit" in body
    finally:
        writer.close()


async def test_a_request_within_the_limits_is_still_served(port: int) -> None:
    reader, writer = await connect(port)
    try:
        body = (
            b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1,2,3,4]}]}'
        )
        writer.write(request_head(INFER, content_length=len(body)) + body)
        status, _, answer_body = await answer(reader)
        assert status == 200, answer_body
    finally:
        writer.close()
