"""Helpers for the enrollment and inventory tests: a control plane with keys, tokens, devices."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.api.app import build_app, serve
from control_plane.db.engine import open_session
from control_plane.roles import Role
from control_plane.settings import ControlPlaneSettings
from control_plane.tokens import create_token
from shared.device_auth import DeviceRequestSigner
from shared.device_key import DeviceKey
from shared.key_directory import KeyDirectory

Client = TestClient[Any, Any]


def public_key_directory(path: Path) -> Path:
    """A key directory from `edgefleet keys init` holding only what a control plane may read.

    The private keys are removed: enrollment needs root.pub and keylist.json only, and without
    assignment.key the assignment service stays off.
    """
    keys = KeyDirectory(path)
    keys.create(time.time())
    for role in ("root", "release", "assignment"):
        keys.key_file(role).unlink()
    return path


def cp_settings(
    tmp_path: Path, database_url: str, keys: bool = True, **more: Any
) -> ControlPlaneSettings:
    """Settings on the test's database, with a key directory unless `keys` is False."""
    return ControlPlaneSettings.build(
        {},
        data_dir=tmp_path / "cp",
        database_url=database_url,
        keys_dir=public_key_directory(tmp_path / "keys") if keys else None,
        **more,
    )


@asynccontextmanager
async def api_client(settings: ControlPlaneSettings) -> AsyncIterator[Client]:
    """A client of the running API."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with TestClient(TestServer(build_app(settings))) as client:
        yield client


async def role_secrets(engine: AsyncEngine) -> dict[str, str]:
    """One operator token per role, named after it."""
    async with open_session(engine) as session:
        return {role.value: await create_token(session, role.value, role) for role in Role}


def bearer(secret: str) -> dict[str, str]:
    """The Authorization header of an operator token."""
    return {"Authorization": f"Bearer {secret}"}


async def new_enroll_token(client: Client, operator: str, **body: Any) -> str:
    """Issue an enrollment token through the API; return its secret."""
    response = await client.post("/api/v1/enroll-tokens", json=body, headers=bearer(operator))
    assert response.status == 201, await response.text()
    secret: str = (await response.json())["secret"]
    return secret


async def enroll(
    client: Client, token: str, device_id: str, key: DeviceKey | None = None
) -> tuple[int, dict[str, Any], DeviceKey]:
    """POST /api/v1/enroll with a CSR of `key` (a new one by default)."""
    key = key or DeviceKey.generate()
    body = {"token": token, "device_id": device_id, "csr": key.csr(device_id).decode()}
    response = await client.post("/api/v1/enroll", json=body)
    return response.status, await response.json(), key


@asynccontextmanager
async def device_session(key: DeviceKey, device_id: str) -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that signs every request as `device_id`."""
    async with aiohttp.ClientSession(middlewares=(DeviceRequestSigner(key, device_id),)) as s:
        yield s


@asynccontextmanager
async def serving(settings: ControlPlaneSettings) -> AsyncIterator[str]:
    """`cp serve` on this loop (port 0 picks a free one); yields its URL, stops it afterwards.

    The URL is https:// when the settings give a TLS certificate.
    """
    stop = asyncio.Event()
    port: asyncio.Future[int] = asyncio.get_running_loop().create_future()
    server = asyncio.create_task(serve(settings, stop, port.set_result))
    scheme = "https" if settings.tls_cert_file is not None else "http"
    try:
        yield f"{scheme}://127.0.0.1:{await asyncio.wait_for(port, 30)}"
    finally:
        stop.set()
        await asyncio.wait_for(server, 30)
