"""A PostgreSQL restart under a running engine: the first request afterwards must not fail.

Without `pool_pre_ping` the pooled connections are stale once the server restarted, and the
first session to check one out fails (asyncpg: "connection is closed"): an operator's request
answered 503, a rollout tick or an ingest batch retried. The chaos suite's cp-restart scenario
found it; this test restarts a server of its own, so the session's shared one is left alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from bench.postgres import PostgresServer, PostgresUnavailable
from control_plane.db.engine import create_engine_for, open_session


@pytest.fixture
def restartable_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own, which it may halt and resume."""
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as error:
        pytest.fail(str(error), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_the_first_session_after_a_restart_succeeds(
    restartable_server: PostgresServer, mode: str
) -> None:
    url = await restartable_server.create_database("restart")
    engine = create_engine_for(url)
    try:

        async def hold() -> None:  # three sessions at once leave three connections pooled
            async with open_session(engine) as session:
                await session.execute(text("SELECT pg_sleep(0.05)"))

        await asyncio.gather(hold(), hold(), hold())
        await asyncio.to_thread(restartable_server.halt, mode)
        await asyncio.to_thread(restartable_server.resume)
        for _ in range(3):
            async with open_session(engine) as session:
                assert (await session.execute(text("SELECT 1"))).scalar() == 1
    finally:
        await engine.dispose()
