"""Alembic's environment: run migrations on the connection `control_plane.db.migrate` hands in.

Run from a developer shell (`alembic -x` style, e.g. `revision --autogenerate`) with no
connection given, it opens the async engine for `sqlalchemy.url` itself.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy import Connection

from control_plane.db.engine import create_engine_for
from control_plane.db.models import Base

target_metadata = Base.metadata


def run_migrations(connection: Connection) -> None:
    """Run the pending revisions inside one transaction on `connection`."""
    # Batch mode lets later ALTER TABLE revisions work on SQLite (copy-and-move).
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_with_own_engine(url: str) -> None:
    """Open the async engine for `url` and run the migrations on it."""
    engine = create_engine_for(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


def main() -> None:
    """Entry point Alembic calls when it loads this file."""
    given: Connection | None = context.config.attributes.get("connection")
    if given is not None:
        run_migrations(given)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url or run migrations through control_plane")
    if context.is_offline_mode():
        context.configure(url=url, target_metadata=target_metadata, literal_binds=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    asyncio.run(run_with_own_engine(url))


main()
