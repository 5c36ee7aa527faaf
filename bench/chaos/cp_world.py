"""The cp-restart scenario's world: PostgreSQL, Mosquitto, `cp serve` and a simulated fleet.

`chaos_fleet()` starts, in a scratch directory: keys, signed bundles of the sample MLP (one
per version the scenario will roll out), a throwaway PostgreSQL (`bench.postgres`) with one
migrated database and an admin token, Mosquitto, a witness subscribed to every device topic
(`bench.chaos.witness`: what the devices published), `edgefleet cp serve` on that database,
and `edgefleet sim` (through `bench.chaos.sim_process`, which logs the devices' failed polls)
enrolled into one group. Everything is stopped on the way out, also on failure.

`ControlPlaneProcess` is `cp serve` that can be killed with SIGKILL and started again on the
same port; `Operator` is the operator's side of the API, synchronous and bearer-authenticated.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import http.client
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.bundle_builder import BuildRequest, build_bundle
from agent.runtimes.registry import RuntimeRegistry
from agent.sample_models import write_sample_models
from bench import BenchError
from bench.chaos.witness import Witness
from bench.fleet_cp import clean_environment
from bench.http_client import http_request
from bench.postgres import PostgresServer, PostgresUnavailable
from bench.processes import REPO, edgefleet_executable, free_port, stop, tail
from control_plane import tokens
from control_plane.db.engine import create_engine_for, open_session
from control_plane.db.migrate import upgrade
from control_plane.roles import Role
from shared.key_directory import KeyDirectory
from shared.mqtt.broker import MosquittoBroker
from shared.mqtt.errors import BrokerError
from shared.mqtt.topics import device_filter

GROUP = PREFIX = "chaos"
MODEL = "mlp"
TICK_S = 1.0  # the rollout controller's tick (the default, 5 s, would only make it slower)
SIM_TELEMETRY_S = 2.0
ACTIVATION_S = 1.5  # a simulated activation: long enough for a fault to land in the middle
READY_DEADLINE_S = 60.0
POLL_S = 0.05
LOG_TIME = "%Y-%m-%d %H:%M:%S,%f"  # logging's asctime, in local time (shared.cli)


class ApiError(BenchError):
    """The control plane refused a request, or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ControlPlaneProcess:
    """`edgefleet cp serve` on a fixed port; `kill()` and `start()` again at will."""

    def __init__(self, work: Path, database_url: str, keys: Path, mqtt_url: str) -> None:
        self.port = free_port()
        self.log = work / "cp-serve.log"
        self.args = ["cp", "serve", "--data", str(work / "cp"), "--db", database_url]
        self.args += ["--keys", str(keys), "--mqtt", mqtt_url, "--port", str(self.port)]
        self.args += ["--host", "127.0.0.1"]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The base URL (without /api/v1)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        """Start it and wait until `/api/v1/health` answers; return the seconds that took."""
        env = clean_environment({"EDGEFLEET_CP_ROLLOUT_TICK_S": str(TICK_S)})
        started = time.monotonic()
        with self.log.open("ab") as sink:
            self.process = subprocess.Popen(
                [str(edgefleet_executable()), *self.args],
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=env,
                start_new_session=True,
            )
        while not self.healthy():
            self.check()
            if time.monotonic() - started > READY_DEADLINE_S:
                raise BenchError(f"cp serve not healthy after {READY_DEADLINE_S:.0f} s")
            time.sleep(POLL_S)
        return time.monotonic() - started

    def healthy(self) -> bool:
        """Whether the liveness endpoint answers 200."""
        with contextlib.suppress(OSError, http.client.HTTPException):
            return http_request(self.port, "GET", "/api/v1/health", timeout=1.0).status == 200
        return False

    def check(self) -> None:
        """BenchError, with the log's tail, if the process has exited."""
        code = None if self.process is None else self.process.poll()
        if self.process is None or code is not None:
            raise BenchError(f"cp serve exited ({code}):\n{tail(self.log)}")

    def complaints_since(self, moment: float) -> tuple[str, ...]:
        """The WARNING and ERROR lines it logged from `moment` (time.time()) on."""
        since = datetime.datetime.fromtimestamp(moment)
        found = []
        for line in self.log.read_text(errors="replace").splitlines():
            level = line[24:31].strip()  # "2026-01-01 12:00:00,000 WARNING name: ..."
            if level not in ("WARNING", "ERROR", "CRITICAL"):
                continue
            with contextlib.suppress(ValueError):
                if datetime.datetime.strptime(line[:23], LOG_TIME) >= since:
                    found.append(line)
        return tuple(found)

    def kill(self) -> None:
        """SIGKILL, as a crash, and reap it."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s)."""
        if self.process is not None:
            stop(self.process)


class Operator:
    """Synchronous calls to `/api/v1` with an admin token."""

    def __init__(self, cp: ControlPlaneProcess, token: str) -> None:
        self.cp = cp
        self.token = token

    def call(self, method: str, path: str, body: Any = None, timeout: float = 30.0) -> Any:
        """One JSON request; ApiError for an error status or an unreachable control plane."""
        headers = {"Authorization": f"Bearer {self.token}"}
        data = None
        if isinstance(body, bytes):
            data, headers["Content-Type"] = body, "application/octet-stream"
        elif body is not None:
            data, headers["Content-Type"] = json.dumps(body).encode(), "application/json"
        try:
            reply = http_request(self.cp.port, method, f"/api/v1{path}", data, headers, timeout)
        except (OSError, http.client.HTTPException) as error:
            raise ApiError(f"{method} {path}: {error}") from None
        if reply.status >= 400:
            raise ApiError(f"{method} {path}: {reply.status} {reply.body[:300]!r}", reply.status)
        return json.loads(reply.body) if reply.body else None


@dataclass
class Fleet:
    """Everything `chaos_fleet` started."""

    work: Path
    postgres: PostgresServer
    database_url: str
    broker: MosquittoBroker
    witness: Witness
    cp: ControlPlaneProcess
    operator: Operator
    sim: subprocess.Popen[bytes]
    sim_log: Path
    devices: int
    versions: dict[int, str]  # version -> bundle digest, as pushed

    def sim_log_text(self) -> str:
        """The simulator's log so far."""
        return self.sim_log.read_text(errors="replace")

    def check(self) -> None:
        """BenchError if the simulator has exited (the control plane is checked by its own)."""
        if self.sim.poll() is not None:
            raise BenchError(f"edgefleet sim exited ({self.sim.poll()}):\n{tail(self.sim_log)}")


@contextlib.contextmanager
def chaos_fleet(work: Path, devices: int, versions: int) -> Iterator[Fleet]:
    """Start the world with `versions` versions of the MLP pushed; stop it all afterwards."""
    bundles = _bundles(work, versions)
    try:
        postgres = PostgresServer.start(durable=True)  # it is crashed on purpose
    except PostgresUnavailable as error:  # no PostgreSQL: the scenario cannot run
        raise BenchError(str(error)) from None
    with contextlib.ExitStack() as stack:
        stack.callback(postgres.stop)
        url = asyncio.run(postgres.create_database("edgefleet"))
        token = asyncio.run(_migrate_and_token(url))
        broker = MosquittoBroker(work / "broker")
        try:
            broker.start()
        except BrokerError as error:
            raise BenchError(str(error)) from None
        stack.callback(broker.stop)
        witness = Witness(broker.port, device_filter(None, None), "chaos-witness")
        witness.start()
        stack.callback(witness.stop)
        cp = ControlPlaneProcess(work, url, work / "keys", broker.url)
        stack.callback(cp.stop)
        cp.start()
        operator = Operator(cp, token)
        pushed = {}
        for version, bundle in bundles.items():
            pushed[version] = operator.call("POST", "/models", bundle.read_bytes())["digest"]
        sim_log = work / "sim.log"
        sim = _start_sim(cp, token, broker.url, devices, work, sim_log, list(bundles))
        stack.callback(stop, sim)
        fleet = Fleet(
            work, postgres, url, broker, witness, cp, operator, sim, sim_log, devices, pushed
        )
        _wait_online(fleet)
        yield fleet


def _bundles(work: Path, versions: int) -> dict[int, Path]:
    """Keys, the sample models and a signed MLP bundle for versions 1..`versions`."""
    keys = KeyDirectory(work / "keys")
    keys.create(time.time())
    release_key = keys.load_key("release")
    models = work / "models"
    write_sample_models(models)
    registry = RuntimeRegistry.default()
    bundles = {}
    for version in range(1, versions + 1):
        path = work / f"{MODEL}-{version}.bundle"
        build_bundle(
            BuildRequest(MODEL, version, (models / "mlp.onnx",)), path, release_key, registry
        )
        bundles[version] = path
    return bundles


async def _migrate_and_token(url: str) -> str:
    await upgrade(url)
    engine = create_engine_for(url)
    try:
        async with open_session(engine) as session:
            _, secret = await tokens.issue_token(session, "chaos", Role.ADMIN)
    finally:
        await engine.dispose()
    return secret


def _start_sim(
    cp: ControlPlaneProcess,
    token: str,
    mqtt_url: str,
    devices: int,
    work: Path,
    log: Path,
    versions: list[int],
) -> subprocess.Popen[bytes]:
    args = [sys.executable, "-m", "bench.chaos.sim_process", "--cp", cp.url]
    args += ["--devices", str(devices), "--mqtt", mqtt_url, "--group", GROUP, "--prefix", PREFIX]
    args += ["--state", str(work / "sim"), "--telemetry-interval", str(SIM_TELEMETRY_S)]
    for version in versions:
        args += ["--behaviour", f"{version}:activation={ACTIVATION_S}"]
    with log.open("ab") as sink:
        return subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=clean_environment({"EDGEFLEET_TOKEN": token}),
            start_new_session=True,
        )


def _wait_online(fleet: Fleet, deadline_s: float = 120.0) -> None:
    started = time.monotonic()
    while "devices online" not in fleet.sim_log_text():
        fleet.check()
        fleet.cp.check()
        if time.monotonic() - started > deadline_s:
            raise BenchError(f"the simulator is not online after {deadline_s:.0f} s")
        time.sleep(POLL_S * 4)
