"""The dashboard's parts on their own: session signing, the live feed, and the SVG charts."""

from __future__ import annotations

import asyncio
import stat
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jinja2
import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from control_plane.dashboard.charts import Series, line_chart, nice_ceiling
from control_plane.dashboard.live import LiveFeed, Topic, render_fragment
from control_plane.dashboard.session import (
    KEY_FILE,
    SESSION_LIFETIME_S,
    SessionSigner,
    load_or_create_key,
)
from control_plane.db.engine import create_engine_for
from control_plane.db.models import OperatorToken
from control_plane.roles import Role

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = b"k" * 32


def token(token_id: int = 3, token_hash: str = "a" * 64) -> OperatorToken:
    return OperatorToken(id=token_id, name="alice", role=Role.OPERATOR, token_hash=token_hash)


async def test_a_session_cookie_is_bound_to_its_key_token_and_lifetime() -> None:
    now = [1_000_000.0]
    signer = SessionSigner(KEY, clock=lambda: now[0])
    value = signer.issue(token())
    claims = signer.read(value)
    assert claims is not None
    assert claims.token_id == 3
    assert signer.belongs_to(claims, token())
    assert not signer.belongs_to(claims, token(token_hash="b" * 64))  # another token, same id
    other = SessionSigner(b"o" * 32, clock=lambda: now[0]).read(value)
    assert other is not None
    assert not SessionSigner(b"o" * 32).belongs_to(other, token())  # another key
    for broken in ("", "v1.3", value.replace("v1.", "v2.", 1), "v1.x.1.n.m", value * 10):
        assert signer.read(broken) is None
    now[0] += SESSION_LIFETIME_S + 1
    assert signer.read(value) is None  # expired
    with pytest.raises(ValueError, match="at least 32"):
        SessionSigner(b"short")


async def test_csrf_tokens_and_sealed_values() -> None:
    signer = SessionSigner(KEY)
    assert signer.csrf_ok("n1", signer.csrf_token("n1"))
    assert not signer.csrf_ok("n2", signer.csrf_token("n1"))
    assert not signer.csrf_ok("n1", None)
    sealed = signer.seal("Rollout 4 started.")
    assert signer.unseal(sealed) == "Rollout 4 started."
    assert signer.unseal(sealed[:-1] + ("A" if sealed[-1] != "A" else "B")) is None
    assert signer.unseal("bm90IHNpZ25lZA.x") is None
    assert signer.unseal(None) is None


async def test_the_session_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    first, second = await asyncio.gather(
        asyncio.to_thread(load_or_create_key, tmp_path / "cp"),
        asyncio.to_thread(load_or_create_key, tmp_path / "cp"),
    )
    assert first == second
    assert len(first) == 32
    assert stat.S_IMODE((tmp_path / "cp" / KEY_FILE).stat().st_mode) == 0o600
    assert await asyncio.to_thread(load_or_create_key, tmp_path / "cp") == first
    assert [p.name for p in (tmp_path / "cp").iterdir()] == [KEY_FILE]  # no temporary left


@pytest_asyncio.fixture(loop_scope="session")
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine_for(f"sqlite+aiosqlite:///{tmp_path / 'live.db'}")
    try:
        yield engine
    finally:
        await engine.dispose()


class Counter:
    """A live topic whose data is a number the test sets; it counts its loads."""

    def __init__(self) -> None:
        self.value = 0
        self.loads = 0

    async def load(self, session: AsyncSession, argument: str) -> dict[str, Any]:
        self.loads += 1
        return {"value": self.value, "argument": argument}


TEMPLATES = jinja2.Environment(
    loader=jinja2.DictLoader(
        {"count.html": "{{ argument }}={{ value }}{% if can_operate %} [edit]{% endif %}"}
    ),
    autoescape=True,
)


async def test_the_live_feed_loads_each_topic_once_and_sends_only_changes(
    engine: AsyncEngine,
) -> None:
    counter = Counter()
    topic = Topic("count", "count.html", counter.load, argument=True)
    feed = LiveFeed(engine, TEMPLATES, {"count": topic}, interval_s=60)
    assert feed.parse("count:a") is not None
    for bad in ("count", "other:a", "count:", "count:a b", "count:" + "x" * 200):
        assert feed.parse(bad) is None
    page = render_fragment(TEMPLATES, topic, "count:a", {"value": 0, "argument": "a"}, Role.VIEWER)
    viewer = feed.subscribe(Role.VIEWER, {"count:a": page.version})
    operator = feed.subscribe(Role.OPERATOR, {"count:a": "stale"})
    await feed.tick()
    assert counter.loads == 1  # once per tick, however many watch it
    assert viewer.pending == {}  # the page shows this version already
    assert operator.pending == {"count:a": "a=0 [edit]"}  # rendered for the operator's role
    async with asyncio.timeout(1):
        assert await operator.updates() == {"count:a": "a=0 [edit]"}
    counter.value = 1
    await feed.tick()
    await feed.tick()  # two changes unread coalesce into the newest
    async with asyncio.timeout(1):
        assert await viewer.updates() == {"count:a": "a=1"}
    feed.unsubscribe(viewer)
    feed.close()
    async with asyncio.timeout(1):
        assert await operator.updates() is None
    assert feed.subscribe(Role.VIEWER, {"count:a": ""}).closed  # nothing new after close


async def test_the_live_feed_polls_only_while_somebody_watches(engine: AsyncEngine) -> None:
    counter = Counter()
    topic = Topic("count", "count.html", counter.load, argument=True)
    feed = LiveFeed(engine, TEMPLATES, {"count": topic}, interval_s=0.05)
    task = asyncio.create_task(feed.run())
    try:
        await asyncio.sleep(0)  # the feed waits for a subscriber
        assert counter.loads == 0
        subscription = feed.subscribe(Role.VIEWER, {"count:a": ""})
        async with asyncio.timeout(5):
            await subscription.updates()
        assert counter.loads >= 1
        feed.unsubscribe(subscription)
        feed.wake()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_charts_break_lines_at_gaps_and_scale_to_a_round_ceiling() -> None:
    assert [nice_ceiling(v) for v in (0, 0.7, 3, 7.5, 12, 260)] == [1, 1, 5, 10, 20, 500]
    start = datetime(2026, 1, 1, tzinfo=UTC)
    points: list[tuple[datetime, float | None]] = [
        (start + timedelta(minutes=m), float(m)) for m in (0, 1, 2, 10, 11)
    ]
    points.append((start + timedelta(minutes=12), None))
    points.append((start + timedelta(minutes=20), 5.0))
    svg = line_chart(
        "A <chart>", [Series("x", points)], start, start + timedelta(minutes=30), "ms", 90
    )
    assert svg.count("<polyline") == 2  # 0-2 and 10-11; the lone point at 20 is a dot
    assert svg.count("<circle") == 1
    assert "A &lt;chart&gt;" in svg
    empty = line_chart("none", [], start, start + timedelta(hours=1), "ms", 60)
    assert "<polyline" not in empty
