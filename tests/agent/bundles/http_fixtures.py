"""What the bundle tests that talk HTTP share: a one-route test server and the agent's client.

A test module takes the fixtures by binding them at its top level
(`session = http_fixtures.session`): pytest finds fixtures by name in the module, and only the
modules that talk HTTP get them (a conftest.py would hand them to every bundle test).
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import ClassVar

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer


class OneRouteServer(abc.ABC):
    """A test HTTP server answering GET on one path, the way a subclass says."""

    route: ClassVar[str]

    @abc.abstractmethod
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one GET request for `route`."""

    def app(self) -> web.Application:
        """The aiohttp application serving `route`."""
        app = web.Application()
        app.router.add_get(self.route, self.handle)
        return app

    @asynccontextmanager
    async def running(self) -> AsyncIterator[str]:
        """Serve on a live server in the running loop; yield the URL of `route`."""
        server = TestServer(self.app())
        await server.start_server()
        try:
            yield str(server.make_url(self.route))
        finally:
            await server.close()


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    """Worker threads for the agent's blocking file work (reads, writes, hashing)."""
    pool = ThreadPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The HTTP client the agent would use."""
    async with aiohttp.ClientSession() as client:
        yield client
