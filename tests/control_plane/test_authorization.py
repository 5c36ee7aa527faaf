"""The authorization matrix, over every route of the API table (so a new route is covered).

No credentials -> 401 on every non-public route; a token whose role is below the route's
minimum -> 403, whatever the route would do with the request. The check runs before the
handler, so placeholder path values are enough.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.api.openapi import ALL_ENDPOINTS
from control_plane.api.routes import Endpoint
from control_plane.roles import Role
from control_plane.settings import ControlPlaneSettings
from shared.key_directory import KeyDirectory
from tests.control_plane.fleet import Client, api_client, bearer, role_secrets

RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def _path(endpoint: Endpoint) -> str:
    return re.sub(r"\{[^}]+\}", "1", endpoint.path)


async def _status(client: Client, endpoint: Endpoint, headers: dict[str, str]) -> int:
    response = await client.request(endpoint.method, _path(endpoint), headers=headers, json={})
    return response.status


@pytest.fixture
async def client(tmp_path: Path, database_url: str, engine: AsyncEngine) -> AsyncIterator[Client]:
    keys = KeyDirectory(tmp_path / "keys")
    keys.create(time.time())
    settings = ControlPlaneSettings.build(
        {}, data_dir=tmp_path / "cp", database_url=database_url, keys_dir=keys.path
    )
    async with api_client(settings) as running:
        yield running


async def test_every_protected_route_refuses_a_request_without_credentials(
    client: Client,
) -> None:
    protected = [e for e in ALL_ENDPOINTS if e.role is not None or e.device]
    assert len(protected) > 20
    refused = {f"{e.method} {e.path}": await _status(client, e, {}) for e in protected}
    assert refused == dict.fromkeys(refused, 401)


async def test_every_route_refuses_roles_below_its_minimum(
    client: Client, engine: AsyncEngine
) -> None:
    secrets = await role_secrets(engine)
    checked = 0
    for endpoint in ALL_ENDPOINTS:
        if endpoint.role is None:
            continue
        for role in Role:
            if RANK[role] < RANK[endpoint.role]:
                status = await _status(client, endpoint, bearer(secrets[role.value]))
                assert status == 403, f"{role.value} got {status} on {endpoint.path}"
                checked += 1
    assert checked > 15  # every mutating route is at least operator


async def test_no_route_that_changes_anything_is_open_to_viewers() -> None:
    for endpoint in ALL_ENDPOINTS:
        if endpoint.method in ("POST", "PUT", "PATCH", "DELETE") and endpoint.path != (
            "/api/v1/enroll"  # the one-time token in the body authenticates it
        ):
            assert endpoint.role in (Role.OPERATOR, Role.ADMIN), endpoint.path
