"""The REST API in-process: authentication, roles, audit, startup checks and OpenAPI."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.api.app import build_app
from control_plane.api.routes import PREFIX
from control_plane.db.engine import default_database_url, open_session
from control_plane.errors import SchemaOutOfDate
from control_plane.roles import Role
from control_plane.settings import ControlPlaneSettings
from control_plane.tokens import create_token, issue_token, revoke

Client = TestClient[Any, Any]


@pytest.fixture
async def secrets(engine: AsyncEngine) -> dict[str, str]:
    """One live token per role, named after it, plus a revoked admin token."""
    async with open_session(engine) as session:
        issued = {role.value: await create_token(session, role.value, role) for role in Role}
        gone, issued["revoked"] = await issue_token(session, "gone", Role.ADMIN)
        await revoke(session, gone.id)
    return issued


@pytest.fixture
async def client(tmp_path: Path, database_url: str, engine: AsyncEngine) -> AsyncIterator[Client]:
    """A client of the API on the migrated database (SQLite or PostgreSQL)."""
    settings = ControlPlaneSettings.build({}, data_dir=tmp_path, database_url=database_url)
    async with TestClient(TestServer(build_app(settings))) as client:
        yield client


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


async def test_health_needs_no_token(client: Client) -> None:
    response = await client.get("/api/v1/health")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}


async def test_missing_token_is_401_with_challenge(client: Client) -> None:
    response = await client.get("/api/v1/audit")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "error" in await response.json()


@pytest.mark.parametrize("header", ["Bearer ef_not-a-token", "Bearer nope", "Basic abc"])
async def test_bad_token_is_401(client: Client, header: str) -> None:
    response = await client.get("/api/v1/audit", headers={"Authorization": header})
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_revoked_token_is_401(client: Client, secrets: dict[str, str]) -> None:
    response = await client.get("/api/v1/audit", headers=bearer(secrets["revoked"]))
    assert response.status == 401


async def test_viewer_reads_audit(client: Client, secrets: dict[str, str]) -> None:
    response = await client.get("/api/v1/audit", headers=bearer(secrets["viewer"]))
    assert response.status == 200
    assert (await response.json())["entries"] == []


@pytest.mark.parametrize("role", ["viewer", "operator"])
async def test_below_admin_cannot_create_tokens(
    client: Client, secrets: dict[str, str], role: str
) -> None:
    response = await client.post(
        "/api/v1/tokens", json={"role": "viewer"}, headers=bearer(secrets[role])
    )
    assert response.status == 403
    assert "admin" in (await response.json())["error"]


async def test_admin_creates_a_token_that_works(client: Client, secrets: dict[str, str]) -> None:
    response = await client.post(
        "/api/v1/tokens", json={"name": "ci", "role": "viewer"}, headers=bearer(secrets["admin"])
    )
    assert response.status == 201
    body = await response.json()
    assert body["token"]["role"] == "viewer"
    response = await client.get("/api/v1/audit", headers=bearer(body["secret"]))
    assert response.status == 200

    listing = await (await client.get("/api/v1/tokens", headers=bearer(secrets["admin"]))).json()
    assert "ci" in [t["name"] for t in listing["tokens"]]
    assert all("secret" not in t and "token_hash" not in t for t in listing["tokens"])


async def test_bad_requests_are_400_and_unknown_ids_404(
    client: Client, secrets: dict[str, str]
) -> None:
    admin = bearer(secrets["admin"])
    assert (await client.post("/api/v1/tokens", json={"role": "root"}, headers=admin)).status == 400
    assert (await client.post("/api/v1/tokens", data=b"{", headers=admin)).status == 400
    assert (await client.delete("/api/v1/tokens/999", headers=admin)).status == 404
    assert (await client.get("/api/v1/audit?limit=0", headers=admin)).status == 400


async def test_create_and_revoke_are_audited(client: Client, secrets: dict[str, str]) -> None:
    admin = bearer(secrets["admin"])
    created = await (
        await client.post("/api/v1/tokens", json={"name": "ci", "role": "operator"}, headers=admin)
    ).json()
    token_id = created["token"]["id"]
    response = await client.delete(f"/api/v1/tokens/{token_id}", headers=admin)
    assert response.status == 200
    assert (await response.json())["token"]["revoked_at"] is not None
    # Revoking again changes nothing and adds no entry.
    assert (await client.delete(f"/api/v1/tokens/{token_id}", headers=admin)).status == 200
    assert (await client.get("/api/v1/audit", headers=bearer(created["secret"]))).status == 401

    entries = (await (await client.get("/api/v1/audit", headers=admin)).json())["entries"]
    revoked, create = entries
    assert (revoked["actor"], revoked["action"], revoked["target"]) == (
        "admin", "token.revoke", f"token:{token_id}",
    )  # fmt: skip
    assert revoked["before"]["revoked_at"] is None
    assert revoked["after"]["revoked_at"] is not None
    assert (create["actor"], create["action"], create["before"]) == ("admin", "token.create", None)
    assert create["after"] == {"id": token_id, "name": "ci", "role": "operator", "revoked_at": None}

    limited = await (await client.get("/api/v1/audit?limit=1", headers=admin)).json()
    assert [e["action"] for e in limited["entries"]] == ["token.revoke"]


@pytest.mark.parametrize("create_file", [False, True])
async def test_unmigrated_database_refuses_to_start(tmp_path: Path, create_file: bool) -> None:
    if create_file:
        (tmp_path / "control-plane.db").touch()  # exists, but has no schema
    app = build_app(ControlPlaneSettings.build({}, data_dir=tmp_path))
    server = TestServer(app)
    with pytest.raises(SchemaOutOfDate, match="edgefleet cp migrate"):
        await server.start_server()
    await server.close()


async def test_openapi_lists_every_route(client: Client) -> None:
    response = await client.get("/api/v1/openapi.json")
    assert response.status == 200
    document = await response.json()
    assert document["openapi"].startswith("3.1")
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    documented = {
        (method.upper(), path) for path, ops in document["paths"].items() for method in ops
    }
    registered = {
        (route.method, route.resource.canonical)
        for route in client.app.router.routes()
        if route.resource is not None and route.resource.canonical.startswith(PREFIX)
    }
    assert documented == registered  # the dashboard's routes (`/`, ...) are not the API's
    admin_only = document["paths"]["/api/v1/tokens"]["post"]
    assert admin_only["security"] == [{"bearer": []}]
    assert admin_only["responses"]["403"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    assert document["paths"]["/api/v1/health"]["get"]["security"] == []
    download = document["paths"]["/api/v1/bundles/{digest}"]["get"]["responses"]
    assert list(download["200"]["content"]) == ["application/octet-stream"]
    assert "content" not in download["304"]  # not modified: no body


def test_settings_from_environment(tmp_path: Path) -> None:
    env = {"EDGEFLEET_CP_DATA_DIR": str(tmp_path), "EDGEFLEET_CP_PORT": "9000"}
    # Every interface is not loopback: TLS is terminated in front (tests/control_plane/
    # test_transport.py checks that rule).
    settings = ControlPlaneSettings.build(env, host="0.0.0.0", behind_tls_proxy=True)
    assert settings.database_url == default_database_url(tmp_path)
    assert (settings.host, settings.port) == ("0.0.0.0", 9000)
