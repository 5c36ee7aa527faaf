"""`/api/v1/rollouts` through the real application: roles, validation, status and actions."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.db.engine import open_session
from control_plane.db.models import BundleRecord, Device, DeviceGroup
from control_plane.settings import ControlPlaneSettings
from shared.key_directory import KeyDirectory
from tests.control_plane.fleet import Client, api_client, bearer, cp_settings, role_secrets

DEVICES = ("edge-1", "edge-2", "edge-3")


async def _fleet(engine: AsyncEngine) -> None:
    async with open_session(engine) as session:
        for device in DEVICES:
            session.add(Device(id=device, public_key="-", backend_class="x86-cpu"))
            session.add(DeviceGroup(device_id=device, group="eu"))
        for version in (1, 2):
            session.add(
                BundleRecord(
                    digest=str(version) * 64,
                    name="mlp",
                    version=version,
                    size=10,
                    signer_keyid="k",
                    manifest={},
                    uploaded_by="test",
                )
            )


def _settings(tmp_path: Path, database_url: str) -> ControlPlaneSettings:
    keys = KeyDirectory(tmp_path / "keys")
    keys.create(time.time())  # with assignment.key: assignments and rollouts are on
    return ControlPlaneSettings.build(
        {}, data_dir=tmp_path / "cp", database_url=database_url, keys_dir=keys.path
    )


async def _post(client: Client, path: str, secret: str, body: Any = None) -> tuple[int, Any]:
    response = await client.post(path, json=body or {}, headers=bearer(secret))
    return response.status, await response.json()


async def test_an_operator_starts_watches_and_pauses_a_rollout(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    await _fleet(engine)
    secrets = await role_secrets(engine)
    async with api_client(_settings(tmp_path, database_url)) as client:
        body = {
            "model": "mlp",
            "version": 2,
            "target": "group:eu",
            "strategy": {"kind": "canary", "canary": {"count": 1}, "waves": ["100%"]},
            "gates": {"max_error_rate": 0.01},
        }
        status, created = await _post(client, "/api/v1/rollouts", secrets["viewer"], body)
        assert status == 403
        status, created = await _post(client, "/api/v1/rollouts", secrets["operator"], body)
        assert status == 201, created
        assert created["state"] == "running"
        assert [w["size"] for w in created["waves"]] == [1, 2]
        assert created["devices"]["assigned"] == 1  # the canary is assigned at once
        rollout = created["id"]
        response = await client.get(
            f"/api/v1/rollouts/{rollout}", headers=bearer(secrets["viewer"])
        )
        shown = await response.json()
        assert [d["state"] for d in shown["device_states"]].count("assigned") == 1
        status, paused = await _post(
            client, f"/api/v1/rollouts/{rollout}/pause", secrets["operator"]
        )
        assert (status, paused["state"]) == (200, "paused")
        status, error = await _post(client, f"/api/v1/rollouts/{rollout}/pause", secrets["admin"])
        assert status == 409
        assert "cannot pause" in error["error"]
        status, error = await _post(client, f"/api/v1/rollouts/{rollout}/explode", secrets["admin"])
        assert status == 400
        response = await client.get(
            "/api/v1/rollouts?state=paused", headers=bearer(secrets["viewer"])
        )
        assert [r["id"] for r in (await response.json())["rollouts"]] == [rollout]


async def test_bad_requests_say_what_is_wrong(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    await _fleet(engine)
    operator = (await role_secrets(engine))["operator"]
    base = {"model": "mlp", "version": 2, "target": "group:eu"}
    cases = [
        ({**base, "version": "2"}, 400, "version"),
        ({**base, "target": "region:eu"}, 400, "unknown target kind"),
        ({**base, "version": 7}, 404, "push it first"),
        ({**base, "strategy": {"kind": "canary", "canary": "0%"}}, 400, "above 0"),
        ({**base, "gates": {"max_error_rate": 5}}, 400, "max_error_rate"),
        ({**base, "extra": 1}, 400, "unknown fields"),
    ]
    async with api_client(_settings(tmp_path, database_url)) as client:
        for body, expected, words in cases:
            status, answer = await _post(client, "/api/v1/rollouts", operator, body)
            assert status == expected, (body, answer)
            assert words in answer["error"]
        response = await client.get("/api/v1/rollouts/999", headers=bearer(operator))
        assert response.status == 404


async def test_without_an_assignment_key_rollouts_answer_503(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    await _fleet(engine)
    operator = (await role_secrets(engine))["operator"]
    body = {"model": "mlp", "version": 2, "target": "all"}
    async with api_client(cp_settings(tmp_path, database_url)) as client:
        status, answer = await _post(client, "/api/v1/rollouts", operator, body)
    assert status == 503
    assert "--keys" in answer["error"]
