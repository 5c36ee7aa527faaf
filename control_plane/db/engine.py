"""Engines and sessions: SQLite in the data directory by default, PostgreSQL by URL.

This module and `control_plane.db.migrate` are the seam where SQLAlchemy's exceptions become
`DatabaseError`; nothing above them sees a vendor exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from control_plane.errors import DatabaseError

DATABASE_FILE = "control-plane.db"


def default_database_url(data_dir: Path) -> str:
    """The SQLite database inside the control plane's data directory."""
    return f"sqlite+aiosqlite:///{(data_dir / DATABASE_FILE).resolve()}"


def create_engine_for(url: str) -> AsyncEngine:
    """An async engine for `url`; SQLite connections get WAL and foreign keys switched on.

    A networked database's pooled connections are pinged when checked out: after the server
    restarted, a stale one is replaced there instead of failing the first request it serves.
    """
    try:
        parsed = async_driver(make_url(url))
        networked = parsed.get_backend_name() != "sqlite"
        engine = create_async_engine(parsed, pool_pre_ping=networked)
    except (ArgumentError, SQLAlchemyError, ImportError) as error:
        raise DatabaseError(f"cannot use database URL {redact(url)}: {error}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas)
    return engine


# The async driver each backend uses when a URL names none (`postgresql://` means psycopg2
# to SQLAlchemy, which cannot run under asyncio).
_ASYNC_DRIVERS = {"postgresql": "asyncpg", "sqlite": "aiosqlite"}


def async_driver(url: URL) -> URL:
    """`url` with the backend's async driver when it names no driver."""
    backend = url.get_backend_name()
    if url.drivername == backend and backend in _ASYNC_DRIVERS:
        return url.set(drivername=f"{backend}+{_ASYNC_DRIVERS[backend]}")
    return url


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets the API read while a writer commits; SQLite leaves foreign keys off unless asked.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


@asynccontextmanager
async def open_session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session whose work is committed on success and rolled back on error."""
    sessions = async_sessionmaker(engine, expire_on_commit=False)
    try:
        async with sessions() as session, session.begin():
            await _connect(session, engine)
            yield session
    except SQLAlchemyError as error:
        raise DatabaseError(f"database error: {error}") from None


async def _connect(session: AsyncSession, engine: AsyncEngine) -> None:
    # A networked database's driver (asyncpg) raises OSError, which SQLAlchemy does not wrap,
    # when the server is unreachable. Connecting before the caller's work starts keeps those
    # apart from OSErrors of the caller's own (blob files, say), which must pass through as-is.
    try:
        await session.connection()
    except OSError as error:
        url = engine.url.render_as_string(hide_password=True)
        raise DatabaseError(f"cannot connect to {url}: {error}") from None


def sqlite_file(url: str) -> Path | None:
    """The file behind a SQLite URL; None for other databases and in-memory SQLite."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database)


def redact(url: str) -> str:
    """The URL with any password hidden, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparseable URL>"
