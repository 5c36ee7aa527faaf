"""The event-loop guard in conftest.py really fails a test that blocks the loop."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest_plugins = ["pytester"]


def test_blocking_call_fails_the_test(pytester: pytest.Pytester) -> None:
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(
        """
        import asyncio
        import time

        async def test_blocks():
            time.sleep(1.5)  # a synchronous call on the event loop
            await asyncio.sleep(0)

        async def test_cooperates():
            await asyncio.sleep(1.5)
        """
    )
    # A subprocess, so that the inner run's asyncio log records stay out of this test's guard.
    result = pytester.runpytest_subprocess(
        "-p",
        "asyncio",
        "-o",
        "asyncio_mode=auto",
        "-o",
        "asyncio_default_fixture_loop_scope=function",
    )
    # The blocking test itself passes; the guard turns it into an error at teardown.
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*the event loop was blocked*"])
