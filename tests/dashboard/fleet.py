"""A running control plane, Mosquitto and simulated devices for the browser tests.

The control plane serves on a free port (`serve`, in the test's loop), with a key directory
(so it verifies bundles and signs assignments), the session's Mosquitto and fast rollout ticks.
One token per role is issued, version 1 of `mlp` is uploaded as a real signed bundle and rolled
out to every simulated device, so the fleet starts where an operator would find it: all
devices online on v1, with telemetry flowing.
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

from control_plane.client import ControlPlaneClient
from control_plane.db.engine import create_engine_for, default_database_url, open_session
from control_plane.db.migrate import upgrade
from control_plane.roles import Role
from control_plane.settings import ControlPlaneSettings
from control_plane.sim import FleetSimulator, SimSettings
from control_plane.sim_reports import VersionBehaviour
from control_plane.tokens import create_token
from shared.key_directory import KeyDirectory
from shared.mqtt.broker import MosquittoBroker
from tests.agent.bundles.factory import BuiltBundle, Fleet
from tests.agent.polling import until
from tests.control_plane.fleet import serving

DEVICES = 6
FINAL = ("completed", "aborted", "rolled_back")


@dataclass
class DashboardFleet:
    """The control plane's URL, a token per role, the simulator and signed bundles of `mlp`."""

    url: str
    secrets: dict[str, str]
    simulator: FleetSimulator
    group: str
    bundles: dict[int, BuiltBundle]
    tampered: Path

    def client(self) -> ControlPlaneClient:
        """An API client with the admin token."""
        return ControlPlaneClient(self.url, self.secrets["admin"])

    def versions(self) -> list[int | None]:
        """The version of `mlp` each simulated device runs."""
        return [d.models["mlp"][0] if "mlp" in d.models else None for d in self.simulator.devices]


async def _issue_tokens(database_url: str) -> dict[str, str]:
    await upgrade(database_url)
    engine = create_engine_for(database_url)
    try:
        async with open_session(engine) as session:
            return {role.value: await create_token(session, role.value, role) for role in Role}
    finally:
        await engine.dispose()


def _bundles(directory: Path, keys: KeyDirectory) -> tuple[dict[int, BuiltBundle], Path]:
    """Signed bundles of mlp v1 and v2, and a copy of v2 with one byte changed."""
    release = keys.load_key("release")
    factory = Fleet(directory)
    built = {v: factory.fake_bundle("mlp", v, signer=release, scale=float(v)) for v in (1, 2)}
    tampered = directory / "mlp-v2-tampered.bundle"
    data = bytearray(built[2].path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    return built, tampered


async def roll_out_everywhere(fleet: DashboardFleet, version: int) -> dict[str, Any]:
    """Roll `version` out to the fleet's group at once and wait until it is final."""
    body = {
        "model": "mlp",
        "version": version,
        "target": f"group:{fleet.group}",
        "strategy": {"kind": "all", "wait_s": 0},
    }
    async with fleet.client() as client:
        rollout: dict[str, Any] = await client.post("/rollouts", body)
        deadline = time.monotonic() + 60
        while rollout["state"] not in FINAL:
            assert time.monotonic() < deadline, f"rollout did not finish: {rollout}"
            await asyncio.sleep(0.2)
            rollout = await client.get(f"/rollouts/{rollout['id']}")
    return rollout


@contextlib.asynccontextmanager
async def running_fleet(work: Path, broker: MosquittoBroker) -> AsyncIterator[DashboardFleet]:
    """Everything above, started; stopped and cleaned up when the block ends."""
    keys = KeyDirectory(work / "keys")
    await asyncio.to_thread(keys.create, time.time())
    bundles, tampered = await asyncio.to_thread(_bundles, work / "bundles", keys)
    database_url = default_database_url(work)
    tokens = await _issue_tokens(database_url)
    settings = ControlPlaneSettings.build(
        {},
        data_dir=work / "cp",
        database_url=database_url,
        keys_dir=keys.path,
        port=0,
        mqtt_url=broker.url,
        rollout_tick_s=0.2,
        ingest_batch_delay_s=0.05,
    )
    settings.data_dir.mkdir()
    async with serving(settings) as url:
        group = f"dash{secrets.token_hex(3)}"  # the session's broker keeps retained messages
        simulator = FleetSimulator(
            SimSettings(
                cp_url=url,
                token=tokens["admin"],
                devices=DEVICES,
                state_dir=work / "sim",
                prefix=group,
                groups=(group,),
                labels={"site": "lab"},
                backends={"x86-cpu": 2.0, "arm-cpu": 1.0},
                behaviours={2: VersionBehaviour(latency_ms=6.0, activation_s=2.5)},
                telemetry_interval_s=0.5,
                requests_per_s=40.0,
                long_poll_s=5.0,
                seed=7,
            )
        )
        await simulator.enroll()
        fleet = DashboardFleet(url, tokens, simulator, group, bundles, tampered)
        async with fleet.client() as client:
            await client.upload(bundles[1].path)
        stop_sim = asyncio.Event()
        sim_task = asyncio.create_task(simulator.run(stop_sim))
        try:
            await until(lambda: simulator.counts["assignments"] >= DEVICES, 30)
            first = await roll_out_everywhere(fleet, 1)
            assert first["state"] == "completed", first
            await until(lambda: fleet.versions() == [1] * DEVICES, 30)
            yield fleet
        finally:
            stop_sim.set()
            await asyncio.wait_for(sim_task, 30)
