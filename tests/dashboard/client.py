"""An in-process control plane with the dashboard, and signing in to it without a browser."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from control_plane.api.app import build_app
from control_plane.db.engine import create_engine_for, default_database_url, open_session
from control_plane.db.migrate import upgrade
from control_plane.roles import Role
from control_plane.settings import ControlPlaneSettings
from control_plane.tokens import create_token, issue_token, revoke
from shared.key_directory import KeyDirectory

Client = TestClient[Any, Any]
CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]+)">')
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')


@dataclass
class Dashboard:
    """A client of the running app, its database URL, key directory and a token per role."""

    client: Client
    database_url: str
    keys: KeyDirectory
    secrets: dict[str, str]

    async def sign_in(self, role: str) -> str:
        """Sign in (replacing any session) with the role's token; return the CSRF token."""
        self.client.session.cookie_jar.clear()
        form = await (await self.client.get("/login")).text()
        match = CSRF_FIELD.search(form)
        assert match is not None
        response = await self.client.post(
            "/login",
            data={"csrf_token": match.group(1), "token": self.secrets[role], "next": "/"},
            allow_redirects=False,
        )
        assert response.status == 303, await response.text()
        return await self.csrf()

    async def csrf(self) -> str:
        """The CSRF token of the current session, read from a page."""
        page = await (await self.client.get("/")).text()
        match = CSRF_META.search(page)
        assert match is not None, page[:500]
        return match.group(1)


async def _tokens(database_url: str) -> dict[str, str]:
    await upgrade(database_url)
    engine = create_engine_for(database_url)
    try:
        async with open_session(engine) as session:
            issued = {role.value: await create_token(session, role.value, role) for role in Role}
            gone, issued["revoked"] = await issue_token(session, "gone", Role.ADMIN)
            await revoke(session, gone.id)
        return issued
    finally:
        await engine.dispose()


@asynccontextmanager
async def dashboard_app(work: Path, **settings: Any) -> AsyncIterator[Dashboard]:
    """The control plane (no broker) with keys, on a migrated SQLite database in `work`."""
    keys = KeyDirectory(work / "keys")
    await asyncio.to_thread(keys.create, time.time())
    database_url = default_database_url(work)
    secrets = await _tokens(database_url)
    built = ControlPlaneSettings.build(
        {}, data_dir=work / "cp", database_url=database_url, keys_dir=keys.path, **settings
    )
    async with TestClient(TestServer(build_app(built))) as client:
        yield Dashboard(client, database_url, keys, secrets)
