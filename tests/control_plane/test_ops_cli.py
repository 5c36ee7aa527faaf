"""The operator commands as an operator runs them: subprocesses against a running control plane."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from control_plane.db.engine import create_engine_for, default_database_url, open_session
from control_plane.db.migrate import upgrade
from control_plane.db.models import Device, DeviceGroup
from control_plane.roles import Role
from control_plane.settings import ControlPlaneSettings
from control_plane.tokens import create_token
from shared.key_directory import KeyDirectory
from tests.agent.bundles.factory import Fleet
from tests.control_plane.fleet import serving

EDGEFLEET = [sys.executable, "-m", "shared.cli"]


class Operator:
    """Runs `edgefleet ...` with the control plane's URL and a token in the environment."""

    def __init__(self, url: str, token: str, bundles: Fleet) -> None:
        self.env = {**os.environ, "EDGEFLEET_CP": url, "EDGEFLEET_TOKEN": token}
        self.bundles = bundles

    async def run(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *EDGEFLEET,
            *args,
            env=env or self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    async def json(self, *args: str) -> Any:
        code, out, err = await self.run(*args, "--json")
        assert code == 0, err
        return json.loads(out)


@pytest.fixture
async def operator(tmp_path: Path) -> AsyncIterator[Operator]:
    # The CLI only speaks HTTP: one database backend is enough here.
    database_url = default_database_url(tmp_path)
    keys = KeyDirectory(tmp_path / "keys")
    keys.create(time.time())
    await upgrade(database_url)
    engine = create_engine_for(database_url)
    try:
        async with open_session(engine) as session:
            token = await create_token(session, "alice", Role.OPERATOR)
            for device in ("edge-1", "edge-2"):
                session.add(Device(id=device, public_key="-", backend_class="x86-cpu"))
                session.add(DeviceGroup(device_id=device, group="lab"))
    finally:
        await engine.dispose()
    settings = ControlPlaneSettings.build(
        {}, data_dir=tmp_path / "cp", database_url=database_url, keys_dir=keys.path, port=0
    )
    settings.data_dir.mkdir()
    bundles = Fleet(tmp_path / "bundles")
    bundles.release_key = keys.load_key("release")
    async with serving(settings) as url:
        yield Operator(url, token, bundles)


async def test_push_list_enroll_token_and_a_rollout(operator: Operator) -> None:
    bundle = operator.bundles.fake_bundle("tiny", 1)
    code, out, err = await operator.run("push", str(bundle.path))
    assert code == 0, err
    assert f"tiny version 1 stored (digest {bundle.digest[:12]}" in out
    models = await operator.json("models", "ls")
    assert [(m["name"], [v["version"] for v in m["versions"]]) for m in models["models"]] == [
        ("tiny", [1])
    ]
    code, out, _ = await operator.run("models", "ls")
    assert out.splitlines()[0].split() == ["MODEL", "VERSION", "DIGEST", "SIZE", "UPLOADED", "BY"]
    code, out, err = await operator.run("enroll-token", "create", "--group", "lab")
    assert code == 0, err
    assert out.strip().startswith("efe_")
    assert "edgefleet agent enroll" in err
    devices = await operator.json("devices", "ls", "--group", "lab")
    assert [d["id"] for d in devices["devices"]] == ["edge-1", "edge-2"]
    rollout = await operator.json(
        "rollout", "create", "--model", "tiny", "--version", "1", "--target", "group:lab"
    )
    assert rollout["state"] == "running"
    assert rollout["strategy"]["kind"] == "all"
    code, out, err = await operator.run("rollout", "pause", str(rollout["id"]))
    assert code == 0, err
    assert "state: paused" in out
    listed = await operator.json("rollout", "ls", "--state", "paused")
    assert [r["id"] for r in listed["rollouts"]] == [rollout["id"]]


async def test_errors_say_what_to_do(operator: Operator, tmp_path: Path) -> None:
    no_token = {k: v for k, v in operator.env.items() if k != "EDGEFLEET_TOKEN"}
    code, _, err = await operator.run("models", "ls", env=no_token)
    assert code == 1
    assert "EDGEFLEET_TOKEN" in err
    wrong = {**operator.env, "EDGEFLEET_TOKEN": "efo_wrong"}
    code, _, err = await operator.run("models", "ls", env=wrong)
    assert code == 1
    assert "401" in err
    assert "--token" in err
    code, _, err = await operator.run("push", str(tmp_path / "missing.bundle"))
    assert code == 1
    assert "edgefleet bundle build" in err
    code, _, err = await operator.run("rollout", "status", "999")
    assert code == 1
    assert "404" in err
    nowhere = {**operator.env, "EDGEFLEET_CP": "http://127.0.0.1:9"}
    code, _, err = await operator.run("models", "ls", env=nowhere)
    assert code == 1
    assert "cannot reach the control plane" in err
