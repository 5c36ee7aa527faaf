"""Alembic migrations applied from code: no alembic.ini is needed at run time.

`upgrade` brings a database to the newest revision; `check_current` tells the server whether
it may start (it refuses a database that is behind or ahead of this code).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from control_plane.db.engine import create_engine_for, redact
from control_plane.errors import DatabaseError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    """An Alembic configuration pointing at the packaged migrations and at `url`."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # '%' is interpolation syntax in Alembic's config parser; URL-encoded passwords contain it.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


async def upgrade(url: str, revision: str = "head") -> None:
    """Apply every migration up to `revision` to the database at `url`.

    Alembic is synchronous and runs through `run_sync` on this loop: fine for `cp migrate` and
    tests, and the server itself only checks the revision (`check_current`).
    """
    config = alembic_config(url)
    engine = create_engine_for(url)

    def run(connection: Connection) -> None:
        # env.py picks the connection up from here instead of opening its own.
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    except (SQLAlchemyError, CommandError, OSError) as error:
        raise DatabaseError(f"cannot migrate {redact(url)}: {error}") from None
    finally:
        await engine.dispose()


async def check_current(url: str) -> bool:
    """Whether the database at `url` is exactly at the newest revision this code knows."""
    # Reading the revision scripts is file I/O; keep it off the event loop.
    expected = await asyncio.to_thread(_script_heads, url)
    engine = create_engine_for(url)
    try:
        async with engine.connect() as connection:
            current = await connection.run_sync(
                lambda sync: set(MigrationContext.configure(sync).get_current_heads())
            )
    # OSError: asyncpg's "cannot reach the server", which SQLAlchemy passes through unwrapped.
    except (SQLAlchemyError, OSError) as error:
        raise DatabaseError(f"cannot read the schema version of {redact(url)}: {error}") from None
    finally:
        await engine.dispose()
    return current == expected


def _script_heads(url: str) -> set[str]:
    return set(ScriptDirectory.from_config(alembic_config(url)).get_heads())
