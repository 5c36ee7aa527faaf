"""The fleet simulator against a real control plane and Mosquitto, used as a gate test.

Simulated devices enroll, follow their signed assignments and report over MQTT; the rollout
engine must roll a canary back when the new version errors or fails to activate, and every
device must end up on v1 again.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from control_plane.client import ControlPlaneClient
from control_plane.db.engine import create_engine_for, open_session
from control_plane.db.migrate import upgrade
from control_plane.db.models import BundleRecord
from control_plane.roles import Role
from control_plane.settings import ControlPlaneSettings
from control_plane.sim import FleetSimulator, SimSettings
from control_plane.sim_reports import VersionBehaviour
from control_plane.tokens import create_token
from shared.key_directory import KeyDirectory
from shared.mqtt.broker import MosquittoBroker
from tests.agent.polling import until
from tests.control_plane.fleet import serving
from tests.shared.mqtt.conftest import mosquitto  # noqa: F401

FINAL = ("completed", "aborted", "rolled_back")


@dataclass
class ControlPlane:
    """A running control plane: its API URL and an admin token."""

    url: str
    token: str


@pytest.fixture
async def control_plane(
    tmp_path: Path,
    database_url: str,
    mosquitto: MosquittoBroker,  # noqa: F811
) -> AsyncIterator[ControlPlane]:
    keys = KeyDirectory(tmp_path / "keys")
    keys.create(time.time())
    await upgrade(database_url)
    engine = create_engine_for(database_url)
    try:
        async with open_session(engine) as session:
            token = await create_token(session, "sim-test", Role.ADMIN)
            for version in (1, 2):  # the simulator never downloads: records are enough
                session.add(
                    BundleRecord(
                        digest=str(version) * 64,
                        name="mlp",
                        version=version,
                        size=100,
                        signer_keyid="k",
                        manifest={},
                        uploaded_by="test",
                    )
                )
    finally:
        await engine.dispose()
    settings = ControlPlaneSettings.build(
        {},
        data_dir=tmp_path / "cp",
        database_url=database_url,
        keys_dir=keys.path,
        port=0,
        mqtt_url=mosquitto.url,
        rollout_tick_s=0.2,
        ingest_batch_delay_s=0.05,
    )
    settings.data_dir.mkdir()
    async with serving(settings) as url:
        yield ControlPlane(url, token)


@contextlib.asynccontextmanager
async def simulated_fleet(
    cp: ControlPlane, tmp_path: Path, behaviours: dict[int, VersionBehaviour]
) -> AsyncIterator[FleetSimulator]:
    settings = SimSettings(
        cp_url=cp.url,
        token=cp.token,
        devices=6,
        state_dir=tmp_path / "sim",
        prefix=f"sim{secrets.token_hex(3)}",
        groups=("sim",),
        backends={"x86-cpu": 2.0, "arm-cpu": 1.0},
        behaviours=behaviours,
        telemetry_interval_s=0.3,
        requests_per_s=100.0,
        long_poll_s=5.0,
        seed=4,
    )
    simulator = FleetSimulator(settings)
    await simulator.enroll()
    stop = asyncio.Event()
    task = asyncio.create_task(simulator.run(stop))
    try:
        await until(lambda: simulator.counts["assignments"] >= 6, 30)
        yield simulator
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def roll_out(client: ControlPlaneClient, body: dict[str, Any]) -> dict[str, Any]:
    """Create a rollout and follow it until it is final."""
    rollout = await client.post("/rollouts", body)
    state: dict[str, Any] = rollout

    async def final() -> bool:
        nonlocal state
        state = await client.get(f"/rollouts/{rollout['id']}")
        return state["state"] in FINAL

    deadline = time.monotonic() + 60
    while not await final():
        assert time.monotonic() < deadline, f"rollout did not finish: {state}"
        await asyncio.sleep(0.2)
    return state


def versions(simulator: FleetSimulator) -> list[int | None]:
    return [d.models["mlp"][0] if "mlp" in d.models else None for d in simulator.devices]


V2 = {"model": "mlp", "version": 2, "target": "group:sim"}
CANARY = {"kind": "canary", "canary": {"count": 1}, "waves": ["100%"], "wait_s": 1}


@pytest.mark.parametrize(
    ("behaviour", "gate"),
    [
        (VersionBehaviour(error_rate=0.5, activation_s=0), "error_rate"),
        (VersionBehaviour(fail_pct=100, activation_s=0), "failure"),
    ],
    ids=["errors", "activation-failures"],
)
async def test_a_bad_canary_is_rolled_back_and_the_fleet_stays_on_v1(
    control_plane: ControlPlane, tmp_path: Path, behaviour: VersionBehaviour, gate: str
) -> None:
    async with (
        simulated_fleet(control_plane, tmp_path, {2: behaviour}) as simulator,
        ControlPlaneClient(control_plane.url, control_plane.token) as client,
    ):
        first = await roll_out(
            client, {**V2, "version": 1, "strategy": {"kind": "all", "wait_s": 0}}
        )
        assert first["state"] == "completed", first
        assert versions(simulator) == [1] * 6
        second = await roll_out(client, {**V2, "strategy": CANARY, "gates": {"min_requests": 10}})
        assert second["state"] == "rolled_back", second
        assert f"{gate}:" in second["reason"]
        canary = second["waves"][0]
        assert canary["size"] == 2  # one per backend class
        assert not {g["gate"]: g for g in canary["gate_results"]["gates"]}[gate]["passed"]
        assert second["devices"]["rolled_back"] == 2
        assert second["devices"]["pending"] == 4  # the next wave never started
        # The canary devices get v1 back (those that activated v2 switch back).
        await until(lambda: versions(simulator) == [1] * 6, 30)


async def test_a_healthy_version_goes_through_canary_and_waves(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    async with (
        simulated_fleet(control_plane, tmp_path, {}) as simulator,
        ControlPlaneClient(control_plane.url, control_plane.token) as client,
    ):
        body = {**V2, "strategy": {**CANARY, "waves": ["50%", "100%"]}}
        done = await roll_out(client, body)
        assert done["state"] == "completed", done
        assert [w["state"] for w in done["waves"]] == ["passed"] * len(done["waves"])
        assert done["devices"]["active"] == 6
        await until(lambda: versions(simulator) == [2] * 6, 30)
