"""`GET /dashboard/events`: the server-sent-events stream behind a page's live parts.

    GET /dashboard/events?topic=rollout:12@<version>&topic=fleet@<version>

Each `update` event is `{"topic": ..., "html": ...}`, the part's new HTML; a comment line every
15 s keeps proxies from closing an idle stream. A stream lasts at most `MAX_STREAM_S`, then the
browser's EventSource reconnects, which checks the session again (a revoked token or an
expired session ends the live updates within that time). When the server stops, every stream
ends at once (`LiveFeed.close` on shutdown), so shutdown never waits for them.
"""

from __future__ import annotations

import asyncio
import contextlib

import orjson
from aiohttp import web

from control_plane.api.errors import InvalidRequest
from control_plane.dashboard.access import EVENTS_PATH, Page
from control_plane.dashboard.state import LIVE, USER

KEEPALIVE_S = 15.0
MAX_STREAM_S = 300.0
MAX_TOPICS = 8
RETRY_MS = 2000


async def stream_events(request: web.Request) -> web.StreamResponse:
    """Send each watched part's new HTML as it changes, until the stream's time is up."""
    feed = request.app[LIVE]
    versions: dict[str, str] = {}
    for raw in request.query.getall("topic", [])[: MAX_TOPICS + 1]:
        key, _, version = raw.rpartition("@")
        if feed.parse(key) is None:
            raise InvalidRequest(f"unknown live topic {key!r}")
        versions[key] = version
    if not versions or len(versions) > MAX_TOPICS:
        raise InvalidRequest(f"name between 1 and {MAX_TOPICS} topics")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-store",
            "X-Accel-Buffering": "no",  # nginx: pass events on as they come
        }
    )
    await response.prepare(request)
    subscription = feed.subscribe(request[USER].role, versions)
    loop = asyncio.get_running_loop()
    ends = loop.time() + MAX_STREAM_S
    try:
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        while (left := ends - loop.time()) > 0:
            pending: dict[str, str] | None = {}
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(KEEPALIVE_S, left)):
                    pending = await subscription.updates()
            if pending is None:
                break  # the server is stopping
            if not pending:
                await response.write(b": keepalive\n\n")
            for topic, html in pending.items():
                data = orjson.dumps({"topic": topic, "html": html}).decode()
                await response.write(f"event: update\ndata: {data}\n\n".encode())
    except ConnectionResetError:
        pass  # the page was closed
    finally:
        feed.unsubscribe(subscription)
    return response


PAGES = (Page("GET", EVENTS_PATH, stream_events),)
