"""Numbers too big for an INTEGER column are refused at the API, never passed to a query.

Found by the API fuzzer (tests/fuzz/test_api_fuzz.py): ids and versions beyond 64 bits made
SQLite's driver raise OverflowError (500), and beyond 32 bits asyncpg refuses them too. A path
version such as "²" (superscript two) passed `str.isdigit()` and then failed in `int()` (500).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.db.models import INTEGER_MAX
from control_plane.settings import ControlPlaneSettings
from shared.key_directory import KeyDirectory
from tests.control_plane.fleet import Client, api_client, bearer, role_secrets

HUGE = [INTEGER_MAX + 1, 2**63, 2**100]


@pytest.fixture
async def client(tmp_path: Path, database_url: str, engine: AsyncEngine) -> AsyncIterator[Client]:
    """A client of an API that can sign assignments (so PUT .../models/{model} validates)."""
    keys = KeyDirectory(tmp_path / "keys")
    keys.create(time.time())
    settings = ControlPlaneSettings.build(
        {}, data_dir=tmp_path / "cp", database_url=database_url, keys_dir=keys.path
    )
    async with api_client(settings) as running:
        yield running


@pytest.fixture
async def admin(engine: AsyncEngine) -> dict[str, str]:
    """The Authorization header of an admin token."""
    return bearer((await role_secrets(engine))["admin"])


async def _refused(
    client: Client, method: str, path: str, admin: dict[str, str], **more: Any
) -> int:
    response = await client.request(method, path, headers=admin, **more)
    body = await response.json()
    assert isinstance(body.get("error"), str), body
    return response.status


@pytest.mark.parametrize("number", HUGE)
async def test_out_of_range_ids_and_query_numbers_are_400(
    client: Client, admin: dict[str, str], number: int
) -> None:
    for method, path in [
        ("DELETE", f"/api/v1/tokens/{number}"),
        ("DELETE", f"/api/v1/tokens/-{number + 1}"),
        ("GET", f"/api/v1/rollouts/{number}"),
        ("POST", f"/api/v1/rollouts/{number}/pause"),
        ("GET", f"/api/v1/devices?offset={number}"),
    ]:
        assert await _refused(client, method, path, admin) == 400, path


@pytest.mark.parametrize("number", HUGE)
async def test_out_of_range_versions_in_bodies_are_400(
    client: Client, admin: dict[str, str], number: int
) -> None:
    assign = {"version": number}
    rollout = {"model": "tiny", "version": number, "target": "all"}
    assert await _refused(client, "PUT", "/api/v1/devices/d/models/m", admin, json=assign) == 400
    assert await _refused(client, "POST", "/api/v1/rollouts", admin, json=rollout) == 400


@pytest.mark.parametrize(
    "version", [str(INTEGER_MAX + 1), str(2**63), "9" * 5000, "\u00b2", "\u0661"]
)
async def test_a_version_no_column_holds_names_no_model_version(
    client: Client, admin: dict[str, str], version: str
) -> None:
    path = f"/api/v1/models/tiny/versions/{version}"
    assert await _refused(client, "GET", path, admin) == 404
