"""Registers the dashboard on the control plane's application: routes, static files, services.

The dashboard's routes sit beside `/api/v1` but are not part of it: they are not in the OpenAPI
document, and the API's bearer-token middleware lets them through (they are registered as
public there) because each is guarded by the dashboard's own session, role and CSRF checks
(`control_plane.dashboard.access`). Started with the application: the session key (read or
created in the data directory), the compiled templates, and the live feed's poller, which
ends every open stream on shutdown so stopping the server never waits for a browser.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial

from aiohttp import web

from control_plane.api.state import ACCESS, ENGINE, SETTINGS
from control_plane.dashboard.access import Page, guarded
from control_plane.dashboard.live import DEFAULT_INTERVAL_S, LiveFeed, Topic
from control_plane.dashboard.render import (
    STATIC_DIR,
    STATIC_PREFIX,
    asset_versions,
    build_environment,
    preload,
)
from control_plane.dashboard.session import SessionSigner, load_or_create_key
from control_plane.dashboard.state import ASSET_VERSIONS, LIVE, SIGNER, TEMPLATES
from control_plane.dashboard.views import admin, devices, events, models, overview, rollouts, signin

PAGES: tuple[Page, ...] = (
    *signin.PAGES,
    *overview.PAGES,
    *devices.PAGES,
    *models.PAGES,
    *rollouts.PAGES,
    *admin.PAGES,
    *events.PAGES,
)
TOPICS: dict[str, Topic] = {
    topic.kind: topic
    for topic in (overview.FLEET_TOPIC, devices.DEVICE_TOPIC, rollouts.ROLLOUT_TOPIC)
}


def setup_dashboard(app: web.Application, live_interval_s: float = DEFAULT_INTERVAL_S) -> None:
    """Add the dashboard to `app`; call it after the services it reads (the database)."""
    app[TEMPLATES] = build_environment()
    access = app[ACCESS]
    for page in PAGES:
        route = app.router.add_route(page.method, page.path, guarded(page))
        access[route] = None  # not the API's bearer token: `guarded` checks the session
    for route in app.router.add_static(STATIC_PREFIX, STATIC_DIR):
        access[route] = None
    app.cleanup_ctx.append(partial(_dashboard, live_interval_s))
    app.on_shutdown.append(_end_streams)


async def _dashboard(live_interval_s: float, app: web.Application) -> AsyncIterator[None]:
    env = app[TEMPLATES]
    key = await asyncio.to_thread(load_or_create_key, app[SETTINGS].data_dir)
    await asyncio.to_thread(preload, env)
    app[ASSET_VERSIONS] = await asyncio.to_thread(asset_versions)
    app[SIGNER] = SessionSigner(key)
    feed = LiveFeed(app[ENGINE], env, TOPICS, live_interval_s)
    app[LIVE] = feed
    task = asyncio.create_task(feed.run(), name="edgefleet-dashboard-live")
    try:
        yield
    finally:
        feed.close()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _end_streams(app: web.Application) -> None:
    feed = app.get(LIVE)
    if feed is not None:
        feed.close()
