"""Run a real agent (HTTP server, runtimes, batcher) in a background thread for tests.

The thread owns its own event loop, so synchronous clients (tritonclient's default client)
and asyncio tests can both talk to it over a real loopback socket.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from agent.config import AgentSettings
from agent.runner import BundleServices, build_production_agent
from agent.runtimes.registry import RuntimeRegistry
from agent.server.app import Agent, build_agent, serve


class AgentThread:
    """A live agent on 127.0.0.1 and a free port, stopped with `stop()`."""

    def __init__(
        self,
        settings: AgentSettings,
        registry: RuntimeRegistry | None = None,
        production: bool = False,
    ) -> None:
        self.settings = replace(settings, server=replace(settings.server, host="127.0.0.1", port=0))
        self.registry = registry
        self.production = production  # `agent run` (signed bundles) instead of `agent serve`
        self.agent: Agent | None = None
        self.services: BundleServices | None = None
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="agent-under-test", daemon=True)

    @property
    def url(self) -> str:
        """`127.0.0.1:PORT`, as tritonclient wants it."""
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # reported to the test thread by start()
            self._error = error
            self._started.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        if self.production:
            self.agent = build_production_agent(
                self.settings, self.registry, on_services=self._keep_services
            )
        else:
            self.agent = build_agent(self.settings, self.registry)

        def started(port: int) -> None:
            self.port = port
            self._started.set()

        await serve(self.agent, self._stop, started)

    def _keep_services(self, services: BundleServices) -> None:
        self.services = services

    def run_soon(self, callback: Callable[[], object]) -> None:
        """Run `callback` on the agent's event loop (its state is only touched there)."""
        assert self._loop is not None
        self._loop.call_soon_threadsafe(callback)

    def start(self, wait_ready: bool = True, timeout: float = 120.0) -> AgentThread:
        """Start the server and, by default, wait until every model is loaded."""
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("the agent did not start listening")
        if self._error is not None:
            raise self._error
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll `/v2/health/ready` until it answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://{self.url}/v2/health/ready", timeout=5):
                    return
            except urllib.error.HTTPError as error:
                if error.code != 503:
                    raise
            time.sleep(0.05)
        raise TimeoutError("the agent's models did not become ready")

    def stop(self) -> None:
        """Stop the server and wait for the thread to end."""
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(60)


@contextmanager
def running_agent(
    settings: AgentSettings, registry: RuntimeRegistry | None = None
) -> Iterator[AgentThread]:
    """A context manager around `AgentThread`."""
    agent = AgentThread(settings, registry).start()
    try:
        yield agent
    finally:
        agent.stop()
