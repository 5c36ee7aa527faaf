"""The end-to-end test's world: real processes driven the way an operator drives them.

`Deployment` owns everything the test starts (the control plane and the agents as
`edgefleet` subprocesses, the traffic threads) and stops all of it on the way out, also when
the test fails. Every wait is `Deployment.wait_for`: it polls with a deadline, fails at once if
a process died, and its failure message carries the control plane's rollout documents and the
end of every process log, so a red run says what the system was doing.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

EDGEFLEET = [sys.executable, "-m", "shared.cli"]
LOOPBACK = "127.0.0.1"
COMMAND_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
LOG_TAIL_CHARS = 3000
POLL_S = 0.1
MODEL_INPUT, MODEL_OUTPUT = "input", "probabilities"

T = TypeVar("T")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def clean_environment(**settings: str) -> dict[str, str]:
    """This process's environment without any EDGEFLEET_* variable, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    return env | settings


def edgefleet(*args: str, env: dict[str, str] | None = None) -> str:
    """Run an `edgefleet` command to completion; it must succeed; return its stdout."""
    try:
        result = subprocess.run(
            [*EDGEFLEET, *args],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
            env=env or clean_environment(),
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise AssertionError(
            f"`edgefleet {' '.join(args)}` did not finish within {COMMAND_TIMEOUT_S} s:\n"
            f"{error.stdout!r}{error.stderr!r}"
        ) from None
    assert result.returncode == 0, (
        f"`edgefleet {' '.join(args)}` exited with {result.returncode}:\n"
        f"{result.stdout}{result.stderr}"
    )
    return result.stdout


def get_json(url: str, token: str = "") -> tuple[int, Any]:
    """GET a JSON document (with a bearer token when given): (status, body)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


class Service:
    """A long-running `edgefleet` subprocess writing to its own log file."""

    def __init__(self, name: str, args: Sequence[str], env: dict[str, str], log: Path) -> None:
        self.name = name
        self.log = log
        with log.open("ab") as output:
            self.process = subprocess.Popen(
                [*EDGEFLEET, *args],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def exit_code(self) -> int | None:
        """None while it runs."""
        return self.process.poll()

    def stop(self) -> int:
        """SIGTERM, then SIGKILL if it does not end within STOP_TIMEOUT_S; its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait(STOP_TIMEOUT_S)

    def tail(self) -> str:
        """The end of its log."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-LOG_TAIL_CHARS:]


def sample_request(inputs: np.ndarray) -> list[httpclient.InferInput]:
    """The MLP's request for these rows."""
    tensor = httpclient.InferInput(MODEL_INPUT, list(inputs.shape), "FP32")
    tensor.set_data_from_numpy(inputs.astype(np.float32))
    return [tensor]


@dataclass
class EdgeAgent:
    """One enrolled device: its state directory and the port its `agent run` serves on."""

    device_id: str
    state_dir: Path
    port: int = 0

    @property
    def address(self) -> str:
        """`127.0.0.1:PORT`, as tritonclient wants it."""
        return f"{LOOPBACK}:{self.port}"

    @contextmanager
    def client(self) -> Iterator[httpclient.InferenceServerClient]:
        """A tritonclient of this agent, closed afterwards."""
        client = httpclient.InferenceServerClient(
            self.address, connection_timeout=5.0, network_timeout=10.0
        )
        try:
            yield client
        finally:
            client.close()

    def infer(self, model: str, inputs: np.ndarray) -> tuple[str, np.ndarray]:
        """Run `inputs` through the model's serving version: (that version, the output)."""
        with self.client() as client:
            result = client.infer(model, sample_request(inputs))
        output = result.as_numpy(MODEL_OUTPUT)
        assert output is not None, result.get_response()
        return str(result.get_response()["model_version"]), output

    def ready_versions(self, model: str) -> list[str]:
        """The versions the agent's model metadata lists as ready ([] when it has none)."""
        with self.client() as client:
            try:
                metadata = client.get_model_metadata(model)
            except InferenceServerException:
                return []
        return list(metadata["versions"])

    def configured_version(self, model: str) -> str | None:
        """The version requests without one go to, as the model's configuration names it."""
        with self.client() as client:
            try:
                config = client.get_model_config(model)
            except InferenceServerException:
                return None
        (version,) = config["version_policy"]["specific"]["versions"]
        return str(version)

    def serves(self, model: str, version: str) -> bool:
        """True when `version` is ready, is the configured one, and answers a plain request."""
        try:
            if version not in self.ready_versions(model):
                return False
            if self.configured_version(model) != version:
                return False
            return self.infer(model, np.zeros((1, 64), np.float32))[0] == version
        except (InferenceServerException, OSError):
            return False


class Traffic(threading.Thread):
    """Steady inference requests at one agent until stopped: paced, so the rate is bounded."""

    def __init__(self, agent: EdgeAgent, model: str, inputs: np.ndarray, interval_s: float) -> None:
        super().__init__(name=f"traffic-{agent.device_id}", daemon=True)
        self.agent = agent
        self.model = model
        self.inputs = inputs
        self.interval_s = interval_s
        self.answered: Counter[str] = Counter()  # successful answers by model version
        self.failures: Counter[str] = Counter()  # failed requests by error text
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        """Send one request per interval; count what answers."""
        with self.agent.client() as client:
            row = 0
            while not self._halt.wait(self.interval_s):
                batch = self.inputs[row % len(self.inputs)][None, :]
                row += 1
                try:
                    result = client.infer(self.model, sample_request(batch))
                    version = str(result.get_response()["model_version"])
                except Exception as error:  # counted, not raised: the thread must keep going
                    with self._lock:
                        self.failures[str(error)[:120]] += 1
                    continue
                with self._lock:
                    self.answered[version] += 1

    def snapshot(self) -> tuple[dict[str, int], dict[str, int]]:
        """(answers by version, failures by error) so far."""
        with self._lock:
            return dict(self.answered), dict(self.failures)

    def stop(self) -> None:
        """Stop and wait for the thread (bounded by one request's network timeout)."""
        self._halt.set()
        self.join(30)


class ControlPlane:
    """`edgefleet cp serve` on SQLite, with its keys and broker, and an operator token."""

    def __init__(self, root: Path, keys: Path, broker_url: str) -> None:
        self.data = root / "cp-data"
        self.keys = keys
        self.broker_url = broker_url
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.log = root / "cp.log"
        self.token = ""

    def start(self, **settings: str) -> Service:
        """Migrate, create the operator token, start serving (EDGEFLEET_CP_* `settings`)."""
        edgefleet("cp", "migrate", "--data", str(self.data))
        output = edgefleet("cp", "token", "create", "--data", str(self.data), "--role", "operator")
        self.token = output.split()[0]
        command = [
            "cp", "serve", "--data", str(self.data), "--keys", str(self.keys),
            "--mqtt", self.broker_url, "--host", LOOPBACK, "--port", str(self.port),
        ]  # fmt: skip
        env = clean_environment(**{f"EDGEFLEET_CP_{k.upper()}": v for k, v in settings.items()})
        return Service("control plane", command, env, self.log)

    def healthy(self) -> bool:
        """Whether the API answers its liveness route."""
        try:
            return get_json(f"{self.url}/api/v1/health")[0] == 200
        except OSError:
            return False

    def operator(self, *args: str) -> str:
        """An operator command (`edgefleet push ...`) against this control plane."""
        return edgefleet(
            *args, env=clean_environment(EDGEFLEET_CP=self.url, EDGEFLEET_TOKEN=self.token)
        )

    def operator_json(self, *args: str) -> Any:
        """An operator command with --json; its parsed output."""
        return json.loads(self.operator(*args, "--json"))

    def api(self, path: str) -> Any:
        """GET /api/v1/PATH as the operator; it must succeed."""
        status, body = get_json(f"{self.url}/api/v1/{path}", self.token)
        assert status == 200, f"GET {path}: {status} {body}"
        return body


class Deployment:
    """Everything the test runs, and waits that explain themselves when they time out."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cp: ControlPlane | None = None
        self.services: list[Service] = []
        self.traffic: list[Traffic] = []
        self.rollouts: list[int] = []  # their documents go into every failure message
        self.secrets: list[str] = []  # tokens handed out, which no log may hold

    def __enter__(self) -> Deployment:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()

    def add(self, service: Service) -> Service:
        """Track a started process so that it is stopped, and checked on every wait."""
        self.services.append(service)
        return service

    def close(self) -> dict[str, int]:
        """Stop the traffic, then every process, newest first; their exit codes by name."""
        try:
            for thread in self.traffic:
                thread.stop()
        finally:  # the processes are stopped whatever happened to the threads
            codes = {service.name: service.stop() for service in reversed(self.services)}
        return codes

    def private_keys(self) -> list[Path]:
        """Every PEM private key file under the deployment's root (operator, CA, devices)."""
        return [
            path
            for path in sorted(self.root.rglob("*"))
            if path.is_file()
            and path.suffix != ".log"
            and path.stat().st_size < 64_000
            and b"PRIVATE KEY-----" in path.read_bytes()
        ]

    def leaked_secrets(self, secrets: Sequence[str]) -> list[tuple[str, str]]:
        """(log file, secret) for every given secret or private key that a process log holds.

        Besides `secrets` (tokens), every private key file under the deployment's root is a
        secret: each line of its PEM body is looked for, so a key logged whole or in part shows.
        """
        needles = [s for s in secrets if s]
        keys = self.private_keys()
        assert keys, f"no private key file under {self.root}: nothing to look for"
        for path in keys:
            text = path.read_text(errors="ignore")
            needles += [line for line in text.splitlines() if line and "-----" not in line]
        return [
            (log.name, needle[:12] + "...")
            for log in sorted(self.root.rglob("*.log"))
            for needle in needles
            if needle in log.read_text(errors="replace")
        ]

    def report(self) -> str:
        """What the failure message shows: rollouts as the control plane has them, log tails."""
        parts = []
        for rollout_id in self.rollouts:
            try:
                assert self.cp is not None
                document = json.dumps(self.cp.api(f"rollouts/{rollout_id}"), indent=1)
            except (AssertionError, OSError, ValueError) as error:
                document = f"(cannot read it: {error})"
            parts.append(f"--- rollout {rollout_id}:\n{document}")
        for thread in self.traffic:
            answered, failures = thread.snapshot()
            parts.append(f"--- traffic at {thread.agent.device_id}: {answered} failed: {failures}")
        for service in self.services:
            state = service.exit_code()
            status = "running" if state is None else f"exited with {state}"
            parts.append(f"--- {service.name} ({status}), {service.log}:\n{service.tail()}")
        return "\n".join(parts)

    def check_alive(self, doing: str) -> None:
        """Fail if any process has exited."""
        dead = [s.name for s in self.services if s.exit_code() is not None]
        if dead:
            raise AssertionError(f"{', '.join(dead)} exited while {doing}\n{self.report()}")

    def wait_for(self, condition: Callable[[], T | None], what: str, seconds: float) -> T:
        """Poll `condition` until it returns something truthy, and return that.

        Fails when `seconds` pass, or as soon as a process has died, with `report()`.
        """
        deadline = time.monotonic() + seconds
        while True:
            self.check_alive(f"waiting for {what}")
            value = condition()
            if value:
                return value
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"timed out after {seconds} s waiting for {what}\n{self.report()}"
                )
            time.sleep(POLL_S)

    def follow_rollout(self, rollout_id: int, seconds: float) -> dict[str, Any]:
        """`edgefleet rollout status ID --watch --json` until the rollout is final; its last
        document."""
        assert self.cp is not None
        self.rollouts.append(rollout_id)
        lines = self.root / f"rollout-{rollout_id}.jsonl"
        env = clean_environment(EDGEFLEET_CP=self.cp.url, EDGEFLEET_TOKEN=self.cp.token)
        with lines.open("wb") as output:
            watcher = subprocess.Popen(
                [*EDGEFLEET, "rollout", "status", str(rollout_id), "--watch", "--json"],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
            )
        try:
            self.wait_for(
                lambda: watcher.poll() is not None,
                f"rollout {rollout_id} to reach a final state",
                seconds,
            )
        finally:
            if watcher.poll() is None:
                watcher.kill()
            code = watcher.wait(STOP_TIMEOUT_S)
        text = lines.read_text()
        assert code in (0, 2), f"the rollout watch failed ({code}):\n{text}\n{self.report()}"
        final: dict[str, Any] = json.loads(text.splitlines()[-1])
        return final
