"""A real control plane for the API fuzzer: `cp serve` on its own event loop in a thread.

Schemathesis sends its requests synchronously (requests), so the server cannot share the test's
event loop; a thread with its own loop keeps start-up cheap (no second interpreter) and leaves
the test suite's loop guard alone. The database is a migrated SQLite file; one operator token
per role is issued before the server starts, and `seed` stores a model version and enrolls a
device through the API so that paths naming them resolve some of the time.
"""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import requests
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.api.app import serve
from control_plane.db.engine import create_engine_for, default_database_url, open_session
from control_plane.db.migrate import upgrade
from control_plane.roles import Role
from control_plane.settings import ControlPlaneSettings
from control_plane.tokens import issue_token
from shared.device_key import DeviceKey
from shared.key_directory import KeyDirectory
from tests.shared.builders import write_tiny_bundle

START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 30.0
SEED_DEVICE = "fuzz-device-1"
SEED_MODEL = "tiny"


@dataclass(frozen=True)
class Credentials:
    """One operator token per role: its secret and its id (which the fuzzer must not revoke)."""

    secrets: dict[Role, str]
    ids: dict[Role, int]


SeedValue = str | int


@dataclass(frozen=True)
class SeededFleet:
    """Objects the seed stored, as the path parameters and JSON body fields that name them."""

    path_values: dict[str, SeedValue]
    body_values: dict[str, SeedValue]


def control_plane_settings(directory: Path) -> ControlPlaneSettings:
    """Settings for a control plane on a free loopback port with keys (assignments on)."""
    keys = KeyDirectory(directory / "keys")
    keys.create(time.time())
    data_dir = directory / "cp"
    data_dir.mkdir(parents=True, exist_ok=True)
    return ControlPlaneSettings.build(
        {},
        data_dir=data_dir,
        database_url=default_database_url(data_dir),
        keys_dir=keys.path,
        host="127.0.0.1",
        port=0,
        long_poll_max_s=1.0,  # a fuzzed long poll never holds a request for a minute
    )


class ControlPlaneThread:
    """Migrate, issue tokens and serve the control plane in a background thread until closed."""

    def __init__(self, settings: ControlPlaneSettings) -> None:
        self.settings = settings
        self._ready = threading.Event()
        self._port = 0
        self._credentials: Credentials | None = None
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="fuzz-control-plane", daemon=True)

    @property
    def url(self) -> str:
        """The API's base URL (without `/api/v1`)."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def credentials(self) -> Credentials:
        """The tokens issued before the server started."""
        assert self._credentials is not None, "the control plane has not started"
        return self._credentials

    def __enter__(self) -> ControlPlaneThread:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise TimeoutError(f"the control plane did not start within {START_TIMEOUT_S} s")
        if self._error is not None:
            raise RuntimeError("the control plane failed to start") from self._error
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STOP_TIMEOUT_S)
        if self._thread.is_alive():
            raise TimeoutError(f"the control plane did not stop within {STOP_TIMEOUT_S} s")
        if self._error is not None and kind is None:
            raise RuntimeError("the control plane failed while serving") from self._error

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:
            self._error = error
        finally:
            self._ready.set()  # also when it failed before listening: __enter__ stops waiting

    async def _main(self) -> None:
        url = self.settings.database_url
        await upgrade(url)
        engine = create_engine_for(url)
        try:
            self._credentials = await _issue_tokens(engine)
        finally:
            await engine.dispose()
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await serve(self.settings, self._stop, self._listening)

    def _listening(self, port: int) -> None:
        self._port = port
        self._ready.set()


async def _issue_tokens(engine: AsyncEngine) -> Credentials:
    secrets: dict[Role, str] = {}
    ids: dict[Role, int] = {}
    async with open_session(engine) as session:
        for role in Role:
            token, secret = await issue_token(session, f"fuzz-{role.value}", role)
            secrets[role], ids[role] = secret, token.id
    return Credentials(secrets, ids)


def seed(server: ControlPlaneThread, directory: Path) -> SeededFleet:
    """Push a model version and enroll a device through the API; return the values naming them."""
    operator = {"Authorization": f"Bearer {server.credentials.secrets[Role.OPERATOR]}"}
    api = f"{server.url}/api/v1"
    assert server.settings.keys_dir is not None, "the seed signs its bundle with the release key"
    keys = KeyDirectory(server.settings.keys_dir)
    bundle = write_tiny_bundle(directory / "bundle", keys.load_key("release"), SEED_MODEL)
    with requests.Session() as http:
        uploaded = http.post(
            f"{api}/models", data=bundle.read_bytes(), headers=operator, timeout=REQUEST_TIMEOUT_S
        )
        assert uploaded.status_code == 201, uploaded.text
        model = uploaded.json()
        issued = http.post(
            f"{api}/enroll-tokens", json={}, headers=operator, timeout=REQUEST_TIMEOUT_S
        )
        assert issued.status_code == 201, issued.text
        csr = DeviceKey.generate().csr(SEED_DEVICE).decode()
        body = {"token": issued.json()["secret"], "device_id": SEED_DEVICE, "csr": csr}
        enrolled = http.post(f"{api}/enroll", json=body, timeout=REQUEST_TIMEOUT_S)
        assert enrolled.status_code == 201, enrolled.text
    name, version = model["name"], model["version"]
    return SeededFleet(
        path_values={
            "device_id": SEED_DEVICE,
            "name": name,
            "model": name,
            "version": version,
            "digest": model["digest"],
        },
        body_values={
            "device_id": SEED_DEVICE,
            "model": name,
            "version": version,
            "target": f"device:{SEED_DEVICE}",
        },
    )
