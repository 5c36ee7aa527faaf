"""Fixtures for the control plane: a migrated SQLite database in a temporary directory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.db.engine import create_engine_for, default_database_url
from control_plane.db.migrate import upgrade


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """The URL of a (not yet created) SQLite database in the test's directory."""
    return default_database_url(tmp_path)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a database migrated to head, disposed after the test."""
    await upgrade(database_url)
    engine = create_engine_for(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()
