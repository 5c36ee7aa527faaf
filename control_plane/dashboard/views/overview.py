"""The fleet overview: devices online and offline by region, group, backend and model version,
rollouts in progress, and recent failed activations, reverts and rolled-back rollouts.

All of it is one live part (`fleet`): counted with grouped queries over the inventory, so the
page costs about the same at ten thousand devices as at ten.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.api.state import ENGINE
from control_plane.dashboard.access import Page
from control_plane.dashboard.live import Topic
from control_plane.dashboard.render import live_part, render
from control_plane.dashboard.views.rollouts import active_rollouts, rollouts_in
from control_plane.db.engine import open_session
from control_plane.db.models import utcnow
from control_plane.device_history import recent_failures
from control_plane.devices import fleet_counts, group_counts, version_counts
from control_plane.rollouts import RolloutState

FAILURES_WINDOW = timedelta(hours=24)
FAILURES_SHOWN = 15
REVERTED_SHOWN = 5


async def load_overview(session: AsyncSession, argument: str) -> dict[str, Any]:
    """Everything the overview shows."""
    counts = await fleet_counts(session)
    return {
        "counts": counts,
        "groups": await group_counts(session),
        "versions": await version_counts(session),
        "rollouts": await active_rollouts(session),
        "failures": await recent_failures(session, utcnow() - FAILURES_WINDOW, FAILURES_SHOWN),
        "rolled_back": await rollouts_in(session, (RolloutState.ROLLED_BACK,), REVERTED_SHOWN),
    }


FLEET_TOPIC = Topic("fleet", "overview/_live.html", load_overview, argument=False)


async def overview(request: web.Request) -> web.Response:
    """The fleet at a glance, updated live."""
    async with open_session(request.app[ENGINE]) as session:
        context = await load_overview(session, "")
    part = live_part(request, FLEET_TOPIC, "fleet", context)
    return render(request, "overview.html", {"live": part})


PAGES = (Page("GET", "/", overview),)
