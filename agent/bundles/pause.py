"""Named points where a test can freeze an activation, to kill the agent exactly there.

Only for tests: when the setting `bundles.test_pause_at` names a point, the agent writes
`<state_dir>/paused-at-<point>` on reaching it and waits forever, so a test can `kill -9` it
at a known moment of the bundle path and check what the restart does. Unset in production.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

log = logging.getLogger(__name__)

POINTS = ("downloading", "verifying", "staged", "validating", "warming", "probation", "committed")


class PausePoints:
    """Freezes the agent at one named point when configured to."""

    def __init__(self, state_dir: Path, pause_at: str = "") -> None:
        if pause_at and pause_at not in POINTS:
            raise ValueError(f"unknown pause point {pause_at!r}; known: {', '.join(POINTS)}")
        self.state_dir = state_dir
        self.pause_at = pause_at

    async def reach(self, point: str) -> None:
        """Return at once, unless this is the configured point: then never return."""
        if point != self.pause_at:
            return
        marker = self.state_dir / f"paused-at-{point}"
        marker.write_text("paused\n")  # tiny, and only in tests
        log.warning("test pause point '%s' reached; waiting to be killed", point)
        await asyncio.Event().wait()
