"""Rollout convergence: N simulated devices move to a new version, timed against a baseline.

Mosquitto, `edgefleet cp serve` (SQLite, loopback) and `edgefleet sim --devices N` run as
subprocesses. Two new versions of the sample MLP are built and pushed; the first is rolled out
to the simulator's group (strategy `all`, `wait_s` 0) until every device runs it; then the
second, which is what is timed: from `rollout create` to the rollout `completed` with every
device active, from the rollout's own timestamps (the control plane's clock), next to what
this process saw polling the rollout and, from the database afterwards, when the last
assignment was signed and when the first and the last device reported the version active.

The baseline, measured in the same run between the two rollouts: every simulated device
fetches its (unchanged) signed assignment once, all at once, and verifies it: the work a
rollout cannot skip, without the reissue, the activation, the ingest of the lifecycle events
and the controller's tick.

Enrolled identities, the keys and the control plane's database are kept in
`.bench/fleet/n<N>/` so that a rerun skips enrollment; a run that finds them incomplete (or the
port they are bound to taken) starts that directory afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import resource
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import func, select

from bench import BenchError, say
from bench.fleet_cp import Child, ControlPlane, child, clean_environment, control_plane, edgefleet
from bench.processes import REPO, free_port, tail
from control_plane.client import ControlPlaneClient
from control_plane.db.engine import create_engine_for, default_database_url, open_session
from control_plane.db.models import (
    AssignmentRecord,
    DeviceEvent,
    DeviceGroup,
)
from control_plane.sim import STATE_FILE, FleetSimulator, SimSettings
from shared.assignment import verify_assignment
from shared.device_auth import sign_request
from shared.mqtt.broker import MosquittoBroker

TARGET_S = 30.0
STATE_ROOT = REPO / ".bench" / "fleet"
GROUP = "fleet-bench"
PREFIX = "fbench"
MODEL = "mlp"
ONLINE_LINE = "devices online"
ROLLOUT_DEADLINE_S = 60.0  # plus 0.1 s per device
POLL_S = 0.2


@dataclass(frozen=True)
class Convergence:
    """The figures of one convergence run; seconds from `rollout create` unless noted."""

    devices: int
    tick_s: float | None  # the controller's tick, None: the control plane's default
    enrolled_s: float | None  # enrolling the devices; None when reused
    versions: tuple[int, int]
    first_rollout_s: float  # the untimed rollout that puts every device on the first version
    round_s: float  # the baseline: every device fetches its assignment once
    completed_s: float  # the rollout's created_at -> updated_at (completed)
    observed_s: float  # this process: before the POST -> a poll saw it completed
    signed_s: float | None  # -> the last device's new assignment was signed
    first_active_s: float | None  # -> the first device reported the version active
    last_active_s: float | None  # -> the last device did


@dataclass(frozen=True)
class StateDir:
    """What a rerun reuses: keys, sample models, the control plane's data, the identities."""

    root: Path

    @property
    def keys(self) -> Path:
        """`edgefleet keys init` output."""
        return self.root / "keys"

    @property
    def models(self) -> Path:
        """`edgefleet sample-models` output."""
        return self.root / "models"

    @property
    def data(self) -> Path:
        """The control plane's data directory (its SQLite database)."""
        return self.root / "cp"

    @property
    def sim(self) -> Path:
        """The simulator's `--state` directory."""
        return self.root / "sim"

    def enrolled(self) -> int:
        """How many identities the simulator saved (0 without a state file)."""
        try:
            document = json.loads((self.sim / STATE_FILE).read_text())
            return len(document["devices"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0

    def prepare(self, devices: int) -> tuple[int, bool]:
        """The port to serve on, and whether enrolled identities are reused."""
        port_file = self.root / "port"
        with contextlib.suppress(OSError, ValueError):
            port = int(port_file.read_text())
            if self.enrolled() >= devices and self.keys.is_dir() and _free(port):
                return port, True
        if self.root.exists():
            say(f"  starting {self.root} afresh (no complete set of enrolled devices to reuse)")
            shutil.rmtree(self.root)
        self.root.mkdir(parents=True)
        edgefleet("keys", "init", str(self.keys))
        port = free_port()
        port_file.write_text(str(port))
        return port, False


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def measure(devices: int, tick_s: float | None, scratch: Path) -> Convergence:
    """Start the broker, control plane and simulator; time two rollouts and the baseline."""
    state = StateDir(STATE_ROOT / f"n{devices}")
    port, reused = state.prepare(devices)
    if not (state.models / "mlp.onnx").is_file():
        edgefleet("sample-models", str(state.models))
    settings = {} if tick_s is None else {"EDGEFLEET_CP_ROLLOUT_TICK_S": str(tick_s)}
    (scratch / "broker").mkdir()
    broker = MosquittoBroker(scratch / "broker")
    broker.start()
    try:
        with control_plane(state.data, port, state.keys, broker.url, settings) as cp:
            started = time.monotonic()
            with simulator(cp, broker.url, devices, state, scratch) as sim:
                enrolled_s = None if reused else time.monotonic() - started
                return asyncio.run(_rollouts(cp, sim, devices, state, scratch, tick_s, enrolled_s))
    finally:
        broker.stop()


@contextlib.contextmanager
def simulator(
    cp: ControlPlane, broker_url: str, devices: int, state: StateDir, scratch: Path
) -> Iterator[Child]:
    """`edgefleet sim` for `devices` devices, once every one of them is online."""
    args = ["sim", "--cp", cp.url, "--devices", str(devices), "--mqtt", broker_url]
    args += ["--group", GROUP, "--prefix", PREFIX, "--state", str(state.sim)]
    env = clean_environment({"EDGEFLEET_TOKEN": cp.token})
    with child("edgefleet sim", args, scratch / "sim.log", env) as sim:
        say(f"  edgefleet sim --devices {devices} (enrolls the devices not in {state.sim})")
        started = time.monotonic()
        shown = time.monotonic()
        while ONLINE_LINE not in sim.log.read_text(errors="replace"):
            sim.check()
            if time.monotonic() - started > 60 + devices / 5:
                raise BenchError(f"the simulator is not online after {devices / 5 + 60:.0f} s")
            if time.monotonic() - shown >= 5:
                shown = time.monotonic()
                enrolled = asyncio.run(_group_size(cp))
                say(f"    {enrolled:,} of {devices:,} enrolled ({shown - started:.0f} s)")
            time.sleep(0.2)
        say(f"  {devices:,} simulated devices online after {time.monotonic() - started:.1f} s")
        yield sim


async def _group_size(cp: ControlPlane) -> int:
    async with ControlPlaneClient(cp.url, cp.token) as client:
        answer = await client.get("/devices", {"group": GROUP, "limit": "1"})
    return int(answer["total"])


async def _rollouts(
    cp: ControlPlane,
    sim: Child,
    devices: int,
    state: StateDir,
    scratch: Path,
    tick_s: float | None,
    enrolled_s: float | None,
) -> Convergence:
    async with ControlPlaneClient(cp.url, cp.token) as client:
        await _abort_leftovers(client)
        first, second = await _push_versions(client, state, scratch)
        say(f"  rollout of {MODEL} v{first} to every device (untimed: the starting point)")
        rollout, _ = await _roll_out(client, sim, first)
        first_s = _span(rollout["created_at"], rollout["updated_at"])
        say("  baseline: every device fetches its unchanged assignment once")
        round_s = await assignment_round(cp, state, devices)
        say(f"    {devices:,} assignments fetched and verified in {round_s:.2f} s")
        say(f"  rollout of {MODEL} v{second} (timed)")
        rollout, observed_s = await _roll_out(client, sim, second)
    created = datetime.fromisoformat(rollout["created_at"])
    signed, first_active, last_active = await _timeline(cp.data, second, created)
    return Convergence(
        devices=devices,
        tick_s=tick_s,
        enrolled_s=enrolled_s,
        versions=(first, second),
        first_rollout_s=first_s,
        round_s=round_s,
        completed_s=_span(rollout["created_at"], rollout["updated_at"]),
        observed_s=observed_s,
        signed_s=signed,
        first_active_s=first_active,
        last_active_s=last_active,
    )


async def _abort_leftovers(client: ControlPlaneClient) -> None:
    """Abort rollouts an interrupted run left running: they would refuse the new ones."""
    for state in ("running", "paused"):
        for rollout in (await client.get("/rollouts", {"state": state}))["rollouts"]:
            say(f"  aborting rollout {rollout['id']}, left {state} by an earlier run")
            await client.post(f"/rollouts/{rollout['id']}/abort")


async def _push_versions(
    client: ControlPlaneClient, state: StateDir, scratch: Path
) -> tuple[int, int]:
    """Build and push the next two versions of the MLP; return their numbers."""
    models = (await client.get("/models"))["models"]
    known = [v["version"] for m in models if m["name"] == MODEL for v in m["versions"]]
    first = max(known, default=0) + 1
    for version in (first, first + 1):
        bundle = scratch / f"{MODEL}-{version}.tar"
        edgefleet(
            "bundle", "build", "--name", MODEL, "--version", str(version),
            "--model", str(state.models / "mlp.onnx"), "--keys", str(state.keys),
            "-o", str(bundle),
        )  # fmt: skip
        await client.upload(bundle)
    say(f"  pushed {MODEL} v{first} and v{first + 1}")
    return first, first + 1


async def _roll_out(
    client: ControlPlaneClient, sim: Child, version: int
) -> tuple[dict[str, Any], float]:
    """Roll `version` out to the group at once; wait until every device runs it.

    Returns the final rollout document and the seconds from just before the POST until a
    poll saw it completed.
    """
    body = {
        "model": MODEL,
        "version": version,
        "target": f"group:{GROUP}",
        "strategy": {"kind": "all", "wait_s": 0},
    }
    started = time.perf_counter()
    rollout = await client.post("/rollouts", body)
    deadline_s = ROLLOUT_DEADLINE_S + 0.1 * rollout["devices"]["total"]
    shown = ""
    while True:
        rollout = await client.get(f"/rollouts/{rollout['id']}")
        elapsed = time.perf_counter() - started
        counts = rollout["devices"]
        line = f"    {elapsed:5.1f} s: {rollout['state']}, {counts['active']:,} active, "
        line += f"{counts['assigned']:,} assigned, {counts['failed']:,} failed"
        if line.split(":", 1)[1] != shown:
            shown = line.split(":", 1)[1]
            say(line)
        if rollout["state"] == "completed" and counts["active"] == counts["total"]:
            return rollout, elapsed
        if rollout["state"] not in ("running", "completed"):
            raise BenchError(
                f"rollout {rollout['id']} ended {rollout['state']}: {rollout['reason']}"
            )
        if rollout["state"] == "completed" or elapsed > deadline_s:
            raise BenchError(
                f"rollout {rollout['id']}: {counts} after {elapsed:.0f} s\n{tail(sim.log)}"
            )
        sim.check()
        await asyncio.sleep(POLL_S)


async def assignment_round(cp: ControlPlane, state: StateDir, devices: int) -> float:
    """Seconds for every simulated device to fetch and verify its signed assignment, at once."""
    settings = SimSettings(cp.url, cp.token, devices, state_dir=state.sim, prefix=PREFIX)
    fleet = FleetSimulator(settings)
    await fleet.enroll()  # reads the identities: every one is enrolled already
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < devices + 256:
        wanted = devices + 256 if hard == resource.RLIM_INFINITY else min(devices + 256, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))

    async def fetch(http: aiohttp.ClientSession, device: Any) -> None:
        path = f"/api/v1/devices/{device.device_id}/assignment"
        headers = sign_request(device.key, device.device_id, "GET", path)
        async with http.get(cp.url + path, headers=headers) as response:
            document = await response.read()
            if response.status != 200:
                raise BenchError(f"{device.device_id}: assignment answered {response.status}")
        verify_assignment(
            document, device.trust, device_id=device.device_id, last_serial=0, now=time.time()
        )

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        started = time.perf_counter()
        await asyncio.gather(*(fetch(http, device) for device in fleet.devices))
        return time.perf_counter() - started


async def _timeline(
    data: Path, version: int, created: datetime
) -> tuple[float | None, float | None, float | None]:
    """From the database: seconds from `created` to the last assignment signed for the group,
    and to the first and the last lifecycle `active` event of `version`."""
    engine = create_engine_for(default_database_url(data))
    members = select(DeviceGroup.device_id).where(DeviceGroup.group == GROUP)
    try:
        async with open_session(engine) as session:
            signed = await session.scalar(
                select(func.max(AssignmentRecord.issued_at)).where(
                    AssignmentRecord.device_id.in_(members)
                )
            )
            first, last = (
                await session.execute(
                    select(func.min(DeviceEvent.time), func.max(DeviceEvent.time)).where(
                        DeviceEvent.device_id.in_(members),
                        DeviceEvent.model == MODEL,
                        DeviceEvent.version == version,
                        DeviceEvent.name == "active",
                        DeviceEvent.time >= created,
                    )
                )
            ).one()
    finally:
        await engine.dispose()

    def since(moment: datetime | None) -> float | None:
        return None if moment is None else (moment - created).total_seconds()

    return since(signed), since(first), since(last)


def _span(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
