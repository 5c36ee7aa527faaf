"""Waiting for a condition that another thread changes, with a deadline instead of a sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Return once `condition()` is true; raise TimeoutError after `seconds`.

    Worker threads change what is checked here, so it is polled rather than awaited.
    """
    async with asyncio.timeout(seconds):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)
