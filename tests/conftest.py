"""Fixtures shared by every test: sample models, and a guard against blocking the event loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# Any single callback that holds the loop longer than this fails the test. It is a guard
# against blocking calls (runtime inference, file hashing, big decodes on the loop), set far
# above what any non-blocking callback takes even on a loaded machine. It was 0.5 s until the
# suite started PostgreSQL, Mosquitto, Chromium and agent processes beside the tests on CI's
# two cores: a step the OS deschedules there was measured at 0.6-0.7 s of wall time.
BLOCKED_LOOP_SECONDS = 1.0


class _SlowCallbackRecorder(logging.Handler):
    """Collects asyncio's debug-mode 'Executing ... took N seconds' reports."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.reports: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing ") and " took " in message:
            self.reports.append(message)


# aiosqlite runs each connection on a worker thread that hands results back to the loop that
# asked. A connection whose close (or failed open) is still queued when a test ends would hand
# its result to a closed loop, and the thread's "Event loop is closed" error would then fail
# whichever test runs next. Threads started by a test get this long to finish before its loop
# closes; threads of connections the test deliberately keeps open are left running after it.
AIOSQLITE_THREAD_GRACE_S = 2.0


def _aiosqlite_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


@pytest.fixture(autouse=True)
async def aiosqlite_threads_finish() -> AsyncIterator[None]:
    """Let the aiosqlite threads this test started finish while its event loop still runs."""
    before = _aiosqlite_threads()
    yield
    deadline = time.monotonic() + AIOSQLITE_THREAD_GRACE_S
    while any(t.is_alive() for t in _aiosqlite_threads() - before):
        if time.monotonic() > deadline:
            return
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
async def event_loop_blocking_guard() -> AsyncIterator[None]:
    """Fail the test if any callback on its event loop blocked for too long."""
    loop = asyncio.get_running_loop()
    loop.set_debug(True)
    loop.slow_callback_duration = BLOCKED_LOOP_SECONDS
    recorder = _SlowCallbackRecorder()
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addHandler(recorder)
    try:
        yield
    finally:
        asyncio_log.removeHandler(recorder)
    if recorder.reports:
        pytest.fail("the event loop was blocked:\n" + "\n".join(recorder.reports))


@pytest.fixture(scope="session")
def sample_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample models (MLP and CNN in every format), generated once per test session."""
    from agent.sample_models import write_sample_models

    directory = tmp_path_factory.mktemp("sample-models")
    write_sample_models(directory)
    return directory
