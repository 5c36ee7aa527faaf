"""A real `edgefleet agent run` on its own state directory, started, killed and started again.

`AgentProcess` writes the agent's settings (follow an assignment file, trust a key directory,
fast polling and probation), starts the agent as a subprocess on a free port, kills it with
SIGKILL or stops it with SIGTERM, and asks it what it serves: `serves_verified` runs a
release's golden inputs through whichever version answers and checks the answer against that
version's golden outputs. Every wait polls with a deadline and notices an agent that exited.
The chaos scenarios (`bench.chaos.crash_update`, `bench.chaos.disk_full`) and the crash tests
of the bundle path (`tests/agent/bundles/test_crash_recovery.py`) drive devices through it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agent.bundles.lifecycle import EventLog, LifecycleEvent
from agent.bundles.state import AgentState, StateFile
from agent.runner import EVENTS_FILE
from bench import BenchError
from bench.processes import free_port
from shared.bundle import VerifiedBundle, extract_bundle
from shared.keylist import TrustStore

EDGEFLEET = [sys.executable, "-m", "shared.cli"]
DEADLINE_S = 60.0
POLL_S = 0.02


@dataclass(frozen=True)
class Golden:
    """A release's golden vectors: inputs, the outputs its model must give, and the tolerance."""

    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    tolerance: float

    @classmethod
    def of_bundle(
        cls, bundle: Path, files: Path, trust: TrustStore
    ) -> tuple[VerifiedBundle, Golden]:
        """Verify and extract `bundle` into `files`; its golden vectors, as the agent reads them."""
        verified = extract_bundle(bundle, files, trust)
        golden = verified.manifest.golden
        return verified, cls(
            load_arrays(files / golden.inputs_file),
            load_arrays(files / golden.expected_file),
            golden.tolerance,
        )

    def check(self, outputs: Mapping[str, np.ndarray]) -> str:
        """Empty if `outputs` match the expected ones within the tolerance, else what differs."""
        if outputs.keys() != self.expected.keys():
            return f"outputs {sorted(outputs)}, expected {sorted(self.expected)}"
        for name, expected in self.expected.items():
            got = outputs[name]
            if got.shape != expected.shape:
                return f"output {name} has shape {got.shape}, expected {expected.shape}"
            worst = float(np.max(np.abs(got - expected))) if got.size else 0.0
            if worst > self.tolerance:
                return f"output {name} differs by {worst:.3g} (tolerance {self.tolerance:.3g})"
        return ""


def gist(error: BaseException) -> str:
    """The first line of an error, and the last line of the agent output it may carry."""
    lines = [line for line in str(error).splitlines() if line.strip()] or [repr(error)]
    return lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}"


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file (never with pickle)."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


class AgentProcess:
    """A state directory, its settings, and `edgefleet agent run` started and killed on it."""

    def __init__(
        self,
        root: Path,
        *,
        device_id: str,
        model: str,
        keys: Path,
        goldens: Mapping[int, Golden],
        assignment: Path | None = None,
        state_dir: Path | None = None,
        **bundles: Any,
    ) -> None:
        self.model = model
        self.goldens = dict(goldens)
        self.state_dir = state_dir or root / "state"
        self.assignment = assignment or root / "assignment.json"
        self.config = root / "agent.toml"
        self.log = root / "agent.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        options: dict[str, Any] = {
            "assignment": str(self.assignment),
            "root_key": str(keys / "root.pub"),
            "keylist": str(keys / "keylist.json"),
            **bundles,
        }
        lines = [
            f"state_dir = {json.dumps(str(self.state_dir))}",
            f"device_id = {json.dumps(device_id)}",
            "[bundles]",
        ]
        lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
        lines += ["[selection]", "budget_s = 0.05"]
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, pause_at: str = "") -> None:
        """Start the agent on a fresh port; with `pause_at`, it freezes at that point."""
        if self.process is not None:
            raise BenchError("the agent is already running")
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        if pause_at:
            env["EDGEFLEET_AGENT_BUNDLES_TEST_PAUSE_AT"] = pause_at
        self.port = free_port()
        command = ["agent", "run", "--config", str(self.config), "--port", str(self.port)]
        with self.log.open("ab") as output:
            output.write(f"--- start (pause at {pause_at or 'nothing'})\n".encode())
            output.flush()
            self.process = subprocess.Popen(
                [*EDGEFLEET, *command],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # Ctrl-C reaches only the caller, which kills it
            )

    def wait_for(
        self, condition: Callable[[], bool], what: str, deadline_s: float = DEADLINE_S
    ) -> float:
        """Poll `condition` until it holds; return the seconds it took.

        Raises BenchError at the deadline, or as soon as the agent exits.
        """
        started = time.monotonic()
        while not condition():
            code = self.process.poll() if self.process is not None else "not started"
            if code is not None:
                raise BenchError(f"the agent exited ({code}) waiting for {what}:\n{self.tail()}")
            if time.monotonic() - started > deadline_s:
                raise BenchError(f"timed out after {deadline_s:.0f} s waiting for {what}")
            time.sleep(POLL_S)
        return time.monotonic() - started

    def ready(self) -> bool:
        """True when `/v2/health/ready` says every assigned model has a version serving."""
        try:
            return self.get("/v2/health/ready")[0] == 200
        except OSError:
            return False

    def wait_ready(self, deadline_s: float = DEADLINE_S) -> float:
        """Wait until the agent is ready; return the seconds it took."""
        return self.wait_for(self.ready, "readiness", deadline_s)

    def stop(self) -> None:
        """SIGTERM, which must end the agent cleanly."""
        process = self._running()
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
        self.process = None
        if code != 0:
            raise BenchError(f"SIGTERM ended the agent with {code}:\n{self.tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs."""
        process = self._running()
        process.kill()
        code = process.wait(30)
        self.process = None
        if code != -signal.SIGKILL:
            raise BenchError(f"the agent ended with {code} before SIGKILL:\n{self.tail()}")

    def close(self) -> None:
        """Kill the agent if it is still running (cleanup after a failure)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(30)
            self.process = None

    def _running(self) -> subprocess.Popen[bytes]:
        if self.process is None:
            raise BenchError("the agent is not running")
        return self.process

    def tail(self, chars: int = 4000) -> str:
        """The end of the agent's output, for failure messages."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def url(self, path: str) -> str:
        """The agent's URL for `path`."""
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, Any]:
        """GET a JSON document: (status, body)."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def events(self, digest: str | None = None) -> list[LifecycleEvent]:
        """The event log, in order (only one bundle's events when `digest` is given)."""
        events = EventLog(self.state_dir / EVENTS_FILE).read()
        return [e for e in events if digest is None or e.digest == digest]

    def state(self) -> AgentState:
        """The state file, loaded the way the agent loads it."""
        return StateFile(self.state_dir).load()

    def serves_verified(self) -> int:
        """Run the golden inputs through the served version, check the answer against that
        version's golden outputs, and return the version."""
        inputs = next(iter(self.goldens.values())).inputs
        body = {
            "inputs": [
                {
                    "name": name,
                    "shape": list(array.shape),
                    "datatype": "FP32",
                    "data": array.ravel().tolist(),
                }
                for name, array in inputs.items()
            ]
        }
        request = urllib.request.Request(
            self.url(f"/v2/models/{self.model}/infer"),
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        before = self.serving_version()
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        after = self.serving_version()
        version = int(answer["model_version"])
        # A swap may land between the calls, never outside them.
        if version not in (before, after):
            raise BenchError(f"v{version} answered, but v{before} then v{after} was serving")
        golden = self.goldens.get(version)
        if golden is None:
            raise BenchError(f"v{version} answered, which is none of the releases")
        outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}
        wrong = golden.check(outputs)
        if wrong:
            raise BenchError(f"v{version} does not match its golden vectors: {wrong}")
        return version

    def serving_version(self) -> int:
        """The version requests without one go to, as the model's configuration names it."""
        status, config = self.get(f"/v2/models/{self.model}/config")
        if status != 200:
            raise BenchError(f"GET config of {self.model}: {status} {config}")
        (version,) = config["version_policy"]["specific"]["versions"]
        return int(version)
