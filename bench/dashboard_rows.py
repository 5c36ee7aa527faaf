"""Helpers the dashboard benchmark's data modules share: digests and chunked inserts."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.db.engine import open_session

CHUNK = 2000


def digest(text: str) -> str:
    """The SHA-256 of `text`, hex: stable fake digests and fingerprints."""
    return hashlib.sha256(text.encode()).hexdigest()


async def insert_rows(engine: AsyncEngine, table: Any, rows: Sequence[dict[str, Any]]) -> int:
    """Insert `rows` into `table`, CHUNK at a time; return how many."""
    for start in range(0, len(rows), CHUNK):
        async with open_session(engine) as session:
            await session.execute(insert(table), list(rows[start : start + CHUNK]))
    return len(rows)
