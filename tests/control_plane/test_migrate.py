"""Migrations applied from code on a fresh SQLite file, and the server's "at head?" check."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect, text
from sqlalchemy.engine import make_url

from control_plane.db.engine import async_driver, create_engine_for, open_session, sqlite_file
from control_plane.db.migrate import check_current, upgrade
from control_plane.db.models import Base
from control_plane.errors import DatabaseError


async def test_upgrade_creates_the_schema_and_check_current_flips(database_url: str) -> None:
    assert await check_current(database_url) is False
    await upgrade(database_url)
    assert await check_current(database_url) is True
    engine = create_engine_for(database_url)
    try:
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
            if sqlite_file(database_url) is not None:  # the pragmas are SQLite's alone
                journal = await connection.scalar(text("PRAGMA journal_mode"))
                foreign_keys = await connection.scalar(text("PRAGMA foreign_keys"))
                assert (journal, foreign_keys) == ("wal", 1)
    finally:
        await engine.dispose()
    assert tables == {"alembic_version", *Base.metadata.tables}


async def test_upgrade_twice_is_harmless(database_url: str) -> None:
    await upgrade(database_url)
    await upgrade(database_url)
    assert await check_current(database_url) is True


async def test_the_migration_matches_the_models(database_url: str) -> None:
    await upgrade(database_url)

    def differences(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async def compare() -> list[object]:
        engine = create_engine_for(database_url)
        try:
            async with engine.connect() as connection:
                return await connection.run_sync(differences)
        finally:
            await engine.dispose()

    # Reflecting the schema is synchronous work: on a loop of its own, in a worker thread.
    assert await asyncio.to_thread(asyncio.run, compare()) == []


async def test_an_unreachable_database_is_a_database_error(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/missing-directory/control-plane.db"
    with pytest.raises(DatabaseError, match="cannot migrate"):
        await upgrade(url)


async def test_an_unreachable_server_is_a_database_error() -> None:
    with socket.socket() as probe:  # a loopback port nothing listens on once it is closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"postgresql+asyncpg://cp:secret@127.0.0.1:{port}/cp"
    with pytest.raises(DatabaseError, match="cannot read the schema version") as raised:
        await check_current(url)
    assert "secret" not in str(raised.value)
    engine = create_engine_for(url)
    try:
        with pytest.raises(DatabaseError, match="cannot connect"):
            async with open_session(engine):
                pass
    finally:
        await engine.dispose()


def test_an_unknown_driver_is_a_database_error() -> None:
    with pytest.raises(DatabaseError, match="cannot use database URL"):
        create_engine_for("nosuchdb://user:secret@host/db")


def test_sqlite_file_is_only_for_sqlite_files(tmp_path: Path) -> None:
    assert sqlite_file(f"sqlite+aiosqlite:///{tmp_path}/x.db") == tmp_path / "x.db"
    assert sqlite_file("sqlite+aiosqlite:///:memory:") is None
    assert sqlite_file("postgresql+asyncpg://u:p@db/cp") is None


def test_urls_without_a_driver_get_the_async_one() -> None:
    assert async_driver(make_url("postgresql://cp@db/edgefleet")).drivername == "postgresql+asyncpg"
    assert async_driver(make_url("sqlite:///x.db")).drivername == "sqlite+aiosqlite"
    named = make_url("postgresql+psycopg://cp@db/edgefleet")
    assert async_driver(named) == named  # a driver the operator chose is kept
