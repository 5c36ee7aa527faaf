"""Fixtures for the dashboard tests: one browser per session, in one event loop.

Every test here runs in the session's event loop (`pytestmark` in each module), because the
browser (Playwright driving Debian's Chromium) and a module's control plane outlive one test.
The event-loop guard of `tests/conftest.py` is redefined here for that loop, so these tests are
held to the same 0.5 s limit. Chromium and Playwright missing make the tests fail with the fix
(never skip): `make test` installs both.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from tests.conftest import BLOCKED_LOOP_SECONDS, _SlowCallbackRecorder

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "tests" / "artifacts" / "dashboard"
# Root needs --no-sandbox; the rest keeps Chromium from phoning home or doing background work.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--disable-extensions",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--metrics-recording-only",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
)


@pytest_asyncio.fixture(autouse=True, loop_scope="session")
async def event_loop_blocking_guard() -> AsyncIterator[None]:
    """Fail the test if any callback on the session's loop blocked for too long."""
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


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's headless Chromium, through Playwright, for the whole session."""
    if not await asyncio.to_thread(CHROMIUM.exists):
        pytest.fail(
            f"{CHROMIUM} is missing: run `make test`, which installs it (apt-get install chromium)",
            pytrace=False,
        )
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS), headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    """Where screenshots go (`tests/artifacts/dashboard`, ignored by git), emptied first."""
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    return ARTIFACTS
