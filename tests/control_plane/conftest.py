"""Fixtures for the control plane: a migrated database, on SQLite and on a real PostgreSQL.

Every test that takes `database_url` (or `engine`) runs twice, `[sqlite]` and `[postgresql]`.
The PostgreSQL server starts once per session, on first use; each test gets its own database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.db.engine import create_engine_for, default_database_url
from control_plane.db.migrate import upgrade
from tests.postgres import PostgresServer, PostgresUnavailable

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server shared by the session, stopped and deleted at its end."""
    try:
        server = PostgresServer.start()
    except PostgresUnavailable as error:
        # Missing binaries fail loudly: a skipped backend would look like a passing one.
        pytest.fail(str(error), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=[SQLITE, POSTGRESQL])
def database_server(request: pytest.FixtureRequest) -> PostgresServer | None:
    """The backend under test: None for SQLite, else the session's PostgreSQL server."""
    if request.param == SQLITE:
        return None
    # Asked for here, not as a parameter, so a SQLite-only run never starts PostgreSQL.
    server: PostgresServer = request.getfixturevalue("postgres_server")
    return server


@pytest.fixture
async def database_url(
    database_server: PostgresServer | None, tmp_path: Path
) -> AsyncIterator[str]:
    """The URL of an empty database: a SQLite file in tmp_path, or a new PostgreSQL database."""
    if database_server is None:
        yield default_database_url(tmp_path)
        return
    async with database_server.scratch_database() as url:
        yield url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a database migrated to head, disposed after the test."""
    await upgrade(database_url)
    engine = create_engine_for(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()
