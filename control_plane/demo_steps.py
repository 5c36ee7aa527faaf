"""The eight steps of `edgefleet demo`, each reusing what an earlier run left in the demo dir.

    1 keys            `DIR/keys`, made once
    2 bundle          sample models and the signed `DIR/mlp-1.bundle`, built once
    3 broker          Mosquitto when installed, else the embedded amqtt broker (MQTT 3.1.1)
    4 control plane   migrated SQLite in `DIR/cp`, the admin token in `DIR/admin-token`
    5 enrollment      `DIR/agent` enrolled as `demo-agent` (again only if the URLs changed)
    6 agent           `agent run`, live and online in the control plane
    7 push, rollout   the push answers 200 for a stored bundle; a running or completed rollout
                      of v1 that is the model's newest is reused; done once v1 is committed
    8 inference       the input of examples/infer_mlp.py through tritonclient

The agent-side steps run `edgefleet` commands in child processes: the control plane never
imports the agent (tests/test_dependencies.py), and this is how an operator drives them too.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from control_plane import audit, tokens
from control_plane.client import ApiCallFailed, ControlPlaneClient
from control_plane.db.engine import create_engine_for, open_session
from control_plane.db.migrate import upgrade
from control_plane.demo_inference import (
    MODEL,
    VERSION,
    infer_with_tritonclient,
    sample_request,
    serves_v1,
)
from control_plane.demo_processes import Child, DemoError, DemoProcesses, log_tail
from control_plane.demo_settings import DemoSettings
from control_plane.roles import Role
from shared.atomic import PRIVATE, write_atomic
from shared.key_directory import KeyDirectory
from shared.mqtt.broker import LOOPBACK, MosquittoBroker

STEPS = 8
DEVICE_ID = "demo-agent"
GROUP = "demo"
VARIANTS = ("mlp.onnx", "mlp.xml", "mlp.tflite")  # whichever the installed runtimes could write
REUSABLE_ROLLOUTS = ("running", "completed")
COMMAND_TIMEOUT_S = 180.0  # one-shot commands: writing the sample models takes the longest
START_TIMEOUT_S = 60.0  # a service listening and answering
SERVE_TIMEOUT_S = 120.0  # assignment, download, verification, accelerator selection
POLL_S = 0.2


@dataclass(frozen=True)
class Ready:
    """What the summary shows once every step has passed."""

    token: str
    broker: str
    rollout: int
    answer: list[str]


class DemoSteps:
    """Runs the steps in order, printing one numbered progress line for each."""

    def __init__(self, settings: DemoSettings, processes: DemoProcesses, out: TextIO) -> None:
        self.settings = settings
        self.processes = processes
        self.out = out
        self.number = 0
        self.edgefleet = [settings.python, "-m", "shared.cli"]

    async def run(self) -> Ready:
        """Every step; `DemoError` (or the API client's `ApiCallFailed`) when one fails."""
        await self.keys()
        await self.bundle()
        broker = await self.broker()
        token = await self.control_plane()
        timeout = aiohttp.ClientTimeout(total=10)
        async with (
            ControlPlaneClient(self.settings.cp_url, token) as cp,
            aiohttp.ClientSession(timeout=timeout) as http,
        ):
            await self.enroll(cp)
            await self.agent(cp, http)
            rollout = await self.roll_out(cp, http)
            answer = await self.infer()
        return Ready(token, broker, rollout, answer)

    @contextmanager
    def step(self, title: str) -> Iterator[list[str]]:
        """`[n/8] title ... ` now, then the lines the body appended to the yielded list."""
        self.number += 1
        self.out.write(f"[{self.number}/{STEPS}] {title} ... ")
        self.out.flush()
        outcome: list[str] = []
        began = time.monotonic()
        try:
            yield outcome
        except asyncio.CancelledError:
            self.out.write("interrupted\n")
            raise
        except BaseException:
            self.out.write("failed\n")
            raise
        *lines, last = outcome or ["done"]
        lines.append(f"{last}  ({time.monotonic() - began:.1f} s)")
        self.out.write("".join([lines[0], "\n", *(f"      {line}\n" for line in lines[1:])]))
        self.out.flush()

    async def keys(self) -> None:
        """The root, release and assignment keys, made on the first run."""
        keys = KeyDirectory(self.settings.directory / "keys")
        with self.step("signing keys") as outcome:
            existing = await asyncio.to_thread(keys.existing)
            if len(existing) == 5:
                outcome.append(f"reused {keys.path}")
                return
            if existing:
                raise DemoError(f"{keys.path} is incomplete ({', '.join(existing)}): use --fresh")
            await asyncio.to_thread(keys.create, time.time())
            outcome.append(f"created in {keys.path}")

    async def bundle(self) -> None:
        """The sample models and the signed bundle of the MLP, built on the first run."""
        directory = self.settings.directory
        bundle, models = directory / f"{MODEL}-{VERSION}.bundle", directory / "models"
        with self.step(f"sample model bundle {MODEL} v{VERSION}") as outcome:
            if await asyncio.to_thread(bundle.is_file):
                outcome.append(f"reused {bundle}")
                return
            if not await asyncio.to_thread((models / "samples.json").is_file):
                await self._command("sample-models", ["sample-models", str(models)])
            variants = [models / v for v in VARIANTS if (models / v).is_file()]
            partial = bundle.with_name(bundle.name + ".partial")  # a killed build is not reused
            command = ["bundle", "build", "--name", MODEL, "--version", str(VERSION)]
            for path in variants:
                command += ["--model", str(path)]
            command += ["--keys", str(directory / "keys"), "-o", str(partial)]
            await self._command("bundle", command)
            await asyncio.to_thread(partial.replace, bundle)
            formats = ", ".join(p.suffix.lstrip(".") for p in variants)
            outcome.append(f"built and signed {bundle} ({formats})")

    async def broker(self) -> str:
        """Mosquitto, or the embedded broker; its name."""
        settings = self.settings
        with self.step(f"MQTT broker on {settings.mqtt_url}") as outcome:
            if settings.mosquitto is not None:
                name = "Mosquitto"
                config = MosquittoBroker(settings.directory / "broker", port=settings.mqtt_port)
                await asyncio.to_thread(_write, config.config_file, config.config().encode())
                argv = [settings.mosquitto, "-c", str(config.config_file)]
            else:
                name = "embedded amqtt broker, MQTT 3.1.1"
                argv = [settings.python, "-m", "control_plane.demo_broker"]
                argv += ["--port", str(settings.mqtt_port)]
            child = await self.processes.start("MQTT broker", argv, settings.logs / "broker.log")
            await self._wait(child, "accept connections", self._accepts_mqtt, START_TIMEOUT_S)
            outcome.append(f"{name} started (pid {child.process.pid})")
        return name

    async def control_plane(self) -> str:
        """Migrate, make or reuse the admin token, serve; the token."""
        settings = self.settings
        with self.step(f"control plane on {settings.cp_url}") as outcome:
            await asyncio.to_thread(settings.cp_data.mkdir, parents=True, exist_ok=True)
            await upgrade(settings.database_url)
            token, reused = await self._admin_token()
            argv = [
                *self.edgefleet, "cp", "serve", "--data", str(settings.cp_data),
                "--db", settings.database_url, "--keys", str(settings.directory / "keys"),
                "--mqtt", settings.mqtt_url, "--host", settings.host,
                "--port", str(settings.cp_port), "--public-url", settings.cp_url,
            ]  # fmt: skip
            log = settings.logs / "control-plane.log"
            child = await self.processes.start("control plane", argv, log)

            async def healthy() -> bool:
                async with ControlPlaneClient(settings.cp_url, token, timeout_s=5) as client:
                    return await _answers(client.get("/health"))

            await self._wait(child, "answer /api/v1/health", healthy, START_TIMEOUT_S)
            made = "reused the" if reused else "made an"
            outcome.append(f"serving (pid {child.process.pid}), SQLite in {settings.cp_data}")
            outcome.append(f"{made} admin token ({settings.token_file})")
        return token

    async def enroll(self, cp: ControlPlaneClient) -> None:
        """Enroll the agent, unless its identity still matches this control plane and broker."""
        settings = self.settings
        identity_file = settings.agent_state / "identity.json"
        with self.step(f"agent enrollment as {DEVICE_ID}") as outcome:
            identity = await asyncio.to_thread(_read_json, identity_file)
            device = await _get_or_none(cp, f"/devices/{DEVICE_ID}")
            enrolled = device is not None and device.get("revoked_at") is None
            if (
                enrolled
                and identity.get("api_url") == settings.cp_url
                and identity.get("mqtt_url") == settings.mqtt_url
            ):
                outcome.append(f"reused the identity in {settings.agent_state}")
                return
            if enrolled:  # the control plane or broker moved: a fresh certificate and URLs
                await cp.post(f"/devices/{DEVICE_ID}/revoke")
            secret = (await cp.post("/enroll-tokens", {"groups": [GROUP], "ttl_s": 600}))["secret"]
            command = [
                "agent", "enroll", "--cp", settings.cp_url, "--state", str(settings.agent_state),
                "--device-id", DEVICE_ID, "--root-key", str(settings.directory / "keys/root.pub"),
            ]  # fmt: skip
            if identity:
                command.append("--force")
            # The token goes through the environment: argv is visible to everyone in `ps`.
            await self._command("enroll", command, {"EDGEFLEET_ENROLL_TOKEN": secret})
            outcome.append(f"enrolled into group {GROUP}, identity in {settings.agent_state}")

    async def agent(self, cp: ControlPlaneClient, http: aiohttp.ClientSession) -> None:
        """`agent run`, until it answers and the control plane has it online."""
        settings = self.settings
        with self.step(f"agent on http://{settings.agent_address}") as outcome:
            argv = [
                *self.edgefleet, "agent", "run", "--state", str(settings.agent_state),
                "--host", settings.host, "--port", str(settings.agent_port),
            ]  # fmt: skip
            child = await self.processes.start("agent", argv, settings.logs / "agent.log")
            live = f"http://{settings.agent_address}/v2/health/live"

            async def online() -> bool:
                if not await _answers(_get_status(http, live)):
                    return False
                device = await _get_or_none(cp, f"/devices/{DEVICE_ID}")
                return bool(device and device.get("online"))

            what = "serve HTTP and be online in the control plane"
            await self._wait(child, what, online, START_TIMEOUT_S)
            outcome.append(f"running (pid {child.process.pid}), online in the control plane")

    async def roll_out(self, cp: ControlPlaneClient, http: aiohttp.ClientSession) -> int:
        """Push (200 when stored already), roll v1 out unless it was, wait until it is active.

        Ready means committed: a demo stopped while v1 is still on probation would count as an
        interrupted activation, and the agent gives a bundle up after three of those.
        """
        bundle = self.settings.directory / f"{MODEL}-{VERSION}.bundle"
        with self.step(f"push and roll out {MODEL} v{VERSION}") as outcome:
            stored = await cp.upload(bundle)
            outcome.append(f"pushed {bundle.name} (digest {stored['digest'][:12]})")
            rollout, how = await self._rollout(cp)
            outcome.append(f"rollout {rollout['id']} to device:{DEVICE_ID} {how}")
            url = f"{cp.url}/api/v1/rollouts/{rollout['id']}"
            request = sample_request()
            infer = f"http://{self.settings.agent_address}/v2/models/{MODEL}/infer"

            async def committed() -> bool:
                rollout.update(await cp.get(f"/rollouts/{rollout['id']}"))
                if rollout["state"] not in REUSABLE_ROLLOUTS:
                    raise DemoError(
                        f"rollout {rollout['id']} of {MODEL} v{VERSION} ended {rollout['state']} "
                        f"({rollout.get('reason')}); the next run of the demo starts a new one. "
                        f"See {url} and the end of the agent's log:\n"
                        f"{log_tail(self.processes.named('agent').log)}"
                    )
                return rollout["state"] == "completed" and await serves_v1(http, infer, request)

            what = f"serve {MODEL} v{VERSION} with the rollout completed"
            agent = self.processes.named("agent")
            await self._wait(agent, what, committed, SERVE_TIMEOUT_S)
            outcome.append(f"completed: the agent serves {MODEL} v{VERSION}")
            return int(rollout["id"])

    async def _rollout(self, cp: ControlPlaneClient) -> tuple[dict[str, Any], str]:
        """The model's newest rollout if it is v1's and running or completed, else a new one.

        Returns it with `created` or `reused (STATE)`.
        """
        rollouts = [r for r in (await cp.get("/rollouts"))["rollouts"] if r["model"] == MODEL]
        newest = max(rollouts, key=lambda r: int(r["id"]), default=None)
        if newest and newest["version"] == VERSION and newest["state"] in REUSABLE_ROLLOUTS:
            return dict(newest), f"reused ({newest['state']})"
        body = {
            "model": MODEL,
            "version": VERSION,
            "target": f"device:{DEVICE_ID}",
            "strategy": {"kind": "all", "wait_s": 0},
        }
        created: dict[str, Any] = await cp.post("/rollouts", body)
        return created, "created"

    async def infer(self) -> list[str]:
        """The sample input through tritonclient: the top classes, and who answered."""
        settings = self.settings
        with self.step("inference through tritonclient") as outcome:
            request = json.dumps(sample_request()).encode()
            await asyncio.to_thread(_write, settings.request_file, request)
            try:
                lines = await asyncio.to_thread(infer_with_tritonclient, settings.agent_address)
            except ImportError:
                lines = [
                    "skipped: tritonclient is not installed (pip install 'tritonclient[http]')"
                ]
            outcome += lines
        return lines

    async def _command(
        self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> None:
        log = self.settings.logs / f"{name}.log"
        argv = [*self.edgefleet, *args]
        await self.processes.run(f"`edgefleet {args[0]}`", argv, log, COMMAND_TIMEOUT_S, env)

    async def _wait(
        self, child: Child, what: str, ready: Callable[[], Awaitable[bool]], timeout_s: float
    ) -> None:
        """Poll `ready` until it holds; `DemoError` with the child's log when time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.processes.check_alive()
            if await ready():
                return
            if time.monotonic() >= deadline:
                raise DemoError(
                    f"the {child.name} did not {what} within {timeout_s:.0f} s; "
                    f"the end of {child.log}:\n{log_tail(child.log)}"
                )
            await asyncio.sleep(POLL_S)

    async def _accepts_mqtt(self) -> bool:
        try:
            _, writer = await asyncio.open_connection(LOOPBACK, self.settings.mqtt_port)
        except OSError:
            return False
        writer.close()
        await writer.wait_closed()
        return True

    async def _admin_token(self) -> tuple[str, bool]:
        """The saved admin token if the database still knows it, else a new one; (it, reused)."""
        saved = await asyncio.to_thread(_read_text, self.settings.token_file)
        engine = create_engine_for(self.settings.database_url)
        try:
            async with open_session(engine) as session:
                if saved and await tokens.authenticate(session, saved) is not None:
                    return saved, True
                token, secret = await tokens.issue_token(session, "demo", Role.ADMIN)
                change = tokens.describe(token)
                await audit.record(
                    session, "demo", "token.create", f"token:{token.id}", None, change
                )
        finally:
            await engine.dispose()
        await asyncio.to_thread(write_atomic, self.settings.token_file, secret.encode(), PRIVATE)
        return secret, False


async def _answers(call: Awaitable[Any]) -> bool:
    """Whether a request succeeded (connection refused or an error status: not yet)."""
    try:
        await call
    except (ApiCallFailed, aiohttp.ClientError, OSError, TimeoutError):
        return False
    return True


async def _get_status(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url) as response:
        response.raise_for_status()


async def _get_or_none(cp: ControlPlaneClient, path: str) -> dict[str, Any] | None:
    try:
        document: dict[str, Any] = await cp.get(path)
    except ApiCallFailed as error:
        if error.status == 404:
            return None
        raise
    return document


def _read_json(path: Path) -> dict[str, Any]:
    try:
        document = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _read_text(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)
