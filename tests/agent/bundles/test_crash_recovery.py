"""`kill -9` of `edgefleet agent run` at every named point of an activation, then a restart.

Real bundles (v1 from mlp.onnx, v2 from mlp.tflite) are built, signed and assigned with the
command line once per module. For each pause point of `agent.bundles.pause.POINTS` a device
installs v1, is told to move to v2, is frozen at the point (`bundles.test_pause_at`), killed
with SIGKILL and started again. Every restart must serve a verified version (an inference
matches the golden vectors of the version that answered), account for the interrupted attempt
in the event log, and then finish the move to v2, because the sync loop retries it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.bundles.lifecycle import EventLog, LifecycleEvent
from agent.bundles.pause import POINTS
from agent.bundles.state import Activation, AgentState, InstalledVersion, StateFile
from agent.runner import EVENTS_FILE
from shared.bundle import extract_bundle
from shared.key_directory import KeyDirectory

EDGEFLEET = [sys.executable, "-m", "shared.cli"]
DEVICE_ID = "edge-crash-1"
MODEL = "mlp"
DEADLINE_S = 60.0
# The states an attempt logs before it commits, in order (`pause.POINTS` less `committed`).
PATH = ["downloading", "verifying", "staged", "validating", "warming", "probation"]


@dataclass(frozen=True)
class Release:
    """One signed bundle of the model, an assignment naming it, and its golden vectors."""

    version: int
    digest: str
    assignment: Path  # signed for DEVICE_ID with serial == version
    inputs: dict[str, np.ndarray]
    expected: dict[str, np.ndarray]
    tolerance: float

    @property
    def installed(self) -> InstalledVersion:
        """How the state file names this release once committed."""
        return InstalledVersion(self.version, self.digest)


@dataclass(frozen=True)
class Kit:
    """What an operator prepared: keys, and the two releases a device moves between."""

    keys: Path
    v1: Release
    v2: Release

    def release(self, version: int) -> Release:
        """The release with this version number."""
        return {1: self.v1, 2: self.v2}[version]


def edgefleet(*args: str) -> None:
    """Run an `edgefleet` command as the operator would; it must succeed."""
    result = subprocess.run(
        [*EDGEFLEET, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"edgefleet {' '.join(args)}:\n{result.stdout}{result.stderr}"


def load_arrays(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an .npz file."""
    with np.load(path, allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


@pytest.fixture(scope="module")
def kit(sample_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Kit:
    """Keys, v1 (ONNX) and v2 (TFLite) built and signed by the CLI, once for every case."""
    root = tmp_path_factory.mktemp("operator")
    keys = root / "keys"
    edgefleet("keys", "init", str(keys))
    trust = KeyDirectory(keys).trust_store()
    releases = []
    for version, model in ((1, "mlp.onnx"), (2, "mlp.tflite")):
        bundle = root / f"mlp-v{version}.bundle"
        edgefleet(
            "bundle", "build", "--name", MODEL, "--version", str(version),
            "--model", str(sample_models / model), "--keys", str(keys), "-o", str(bundle),
        )  # fmt: skip
        assignment = root / f"assignment-v{version}.json"
        edgefleet(
            "assignment", "sign", "--keys", str(keys), "--device", DEVICE_ID,
            "--serial", str(version), "--bundle", str(bundle), "-o", str(assignment),
        )  # fmt: skip
        # The golden vectors come from the verified bundle itself, not from the sample files.
        files = root / f"mlp-v{version}"
        verified = extract_bundle(bundle, files, trust)
        golden = verified.manifest.golden
        releases.append(
            Release(
                version=version,
                digest=verified.digest,
                assignment=assignment,
                inputs=load_arrays(files / golden.inputs_file),
                expected=load_arrays(files / golden.expected_file),
                tolerance=golden.tolerance,
            )
        )
    v1, v2 = releases
    assert v1.digest != v2.digest
    # One request checks whichever version answers it.
    assert v1.inputs.keys() == v2.inputs.keys()
    for name in v1.inputs:
        np.testing.assert_array_equal(v1.inputs[name], v2.inputs[name])
    return Kit(keys, v1, v2)


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Device:
    """A state directory, its settings, and `edgefleet agent run` started and killed on it."""

    def __init__(self, root: Path, kit: Kit, **bundles: Any) -> None:
        self.kit = kit
        self.state_dir = root / "state"
        self.assignment = root / "assignment.json"
        self.config = root / "agent.toml"
        self.log = root / "agent.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        options: dict[str, Any] = {
            "assignment": str(self.assignment),
            "root_key": str(kit.keys / "root.pub"),
            "keylist": str(kit.keys / "keylist.json"),
            "poll_interval_s": 0.2,
            "probation_duration_s": 0.3,
            **bundles,
        }
        lines = [
            f"state_dir = {json.dumps(str(self.state_dir))}",
            f"device_id = {json.dumps(DEVICE_ID)}",
            "[bundles]",
        ]
        lines += [f"{key} = {json.dumps(value)}" for key, value in options.items()]
        lines += ["[selection]", "budget_s = 0.05"]
        self.config.write_text("\n".join(lines) + "\n")

    def assign(self, release: Release) -> None:
        """Hand the device the operator's signed assignment for `release`."""
        shutil.copyfile(release.assignment, self.assignment)

    def start(self, pause_at: str = "") -> None:
        """Start the agent on a fresh port; with `pause_at`, it freezes at that point."""
        assert self.process is None
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_AGENT_")}
        if pause_at:
            env["EDGEFLEET_AGENT_BUNDLES_TEST_PAUSE_AT"] = pause_at
        self.port = free_port()
        with self.log.open("ab") as output:
            output.write(f"--- start (pause at {pause_at or 'nothing'})\n".encode())
            output.flush()
            self.process = subprocess.Popen(
                [
                    *EDGEFLEET,
                    "agent",
                    "run",
                    "--config",
                    str(self.config),
                    "--port",
                    str(self.port),
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def wait_for(self, condition: Callable[[], bool], what: str) -> None:
        """Poll `condition` until it holds, failing at the deadline or if the agent exits."""
        deadline = time.monotonic() + DEADLINE_S
        while not condition():
            assert self.process is not None
            code = self.process.poll()
            assert code is None, f"the agent exited ({code}) waiting for {what}:\n{self.tail()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{self.tail()}"
            time.sleep(0.02)

    def wait_ready(self) -> None:
        """Wait until `/v2/health/ready` says every assigned model has a version serving."""

        def ready() -> bool:
            try:
                return self.get("/v2/health/ready")[0] == 200
            except OSError:
                return False

        self.wait_for(ready, "readiness")

    def stop(self) -> None:
        """SIGTERM, which must end the agent cleanly."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(30)
        self.process = None
        assert code == 0, f"SIGTERM ended the agent with {code}:\n{self.tail()}"

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs."""
        assert self.process is not None
        self.process.kill()
        assert self.process.wait(30) == -signal.SIGKILL
        self.process = None

    def close(self) -> None:
        """Kill the agent if a failed test left it running."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(30)
            self.process = None

    def tail(self) -> str:
        """The end of the agent's output, for failure messages."""
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def get(self, path: str) -> tuple[int, Any]:
        """GET a JSON document: (status, body)."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=10) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def url(self, path: str) -> str:
        """The agent's URL for `path`."""
        return f"http://127.0.0.1:{self.port}{path}"

    def events(self, release: Release | None = None) -> list[LifecycleEvent]:
        """The event log, in order (only `release`'s events when given)."""
        events = EventLog(self.state_dir / EVENTS_FILE).read()
        return [e for e in events if release is None or e.digest == release.digest]

    def logged(self, release: Release, state: str, reason: str = "") -> bool:
        """True once the event log shows `release` reaching `state` (with `reason` in it)."""
        return any(e.state == state and reason in e.reason for e in self.events(release))

    def state(self) -> AgentState:
        """The state file, loaded the way the agent loads it."""
        return StateFile(self.state_dir).load()

    def serves_verified(self) -> int:
        """Run the golden inputs through the served version; check the answer against that
        version's golden outputs; return the version."""
        inputs = self.kit.v1.inputs
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
            self.url(f"/v2/models/{MODEL}/infer"),
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        before = self.serving_version()
        with urllib.request.urlopen(request, timeout=10) as response:
            answer = json.loads(response.read())
        after = self.serving_version()
        # A swap may land between the calls, never outside them.
        assert int(answer["model_version"]) in (before, after)
        release = self.kit.release(int(answer["model_version"]))
        outputs = {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in answer["outputs"]}
        assert outputs.keys() == release.expected.keys()
        for name, expected in release.expected.items():
            np.testing.assert_allclose(outputs[name], expected, atol=release.tolerance, rtol=0)
        return release.version

    def serving_version(self) -> int:
        """The version requests without one go to, as the model's configuration names it."""
        status, config = self.get(f"/v2/models/{MODEL}/config")
        assert status == 200, config
        (version,) = config["version_policy"]["specific"]["versions"]
        return int(version)


@pytest.fixture
def make_device(tmp_path: Path, kit: Kit) -> Iterator[Callable[..., Device]]:
    """Devices for one test, each in its own directory, killed at the end if still running."""
    devices: list[Device] = []

    def make(**bundles: Any) -> Device:
        root = tmp_path / f"device-{len(devices)}"
        root.mkdir()
        device = Device(root, kit, **bundles)
        devices.append(device)
        return device

    yield make
    for device in devices:
        device.close()


def install_v1(device: Device) -> None:
    """A device that serves a committed v1, stopped cleanly, then told to move to v2."""
    kit = device.kit
    device.assign(kit.v1)
    device.start()
    device.wait_ready()
    device.wait_for(lambda: device.logged(kit.v1, "active"), "v1 to be committed")
    assert device.serves_verified() == 1
    device.stop()
    device.assign(kit.v2)


def kill_at(device: Device, point: str) -> None:
    """Start the agent frozen at `point`, kill it there, and clear the marker it left."""
    device.start(pause_at=point)
    marker = device.state_dir / f"paused-at-{point}"
    device.wait_for(marker.exists, f"the pause at '{point}'")
    device.kill()
    marker.unlink()


@pytest.mark.parametrize("point", POINTS)
def test_a_kill_at_any_point_of_an_activation_restarts_on_a_verified_version(
    make_device: Callable[..., Device], kit: Kit, point: str
) -> None:
    device = make_device()
    v1, v2 = kit.v1, kit.v2
    install_v1(device)
    kill_at(device, point)

    # What the kill left on disk: a loadable state whose committed version is whole.
    state = device.state()
    assert state.assignment_serial == 2
    record = state.model(MODEL)
    if point == "committed":
        assert record.active == v2.installed
        assert record.history == (v1.installed,)
        assert record.activation is None
    else:
        assert record.active == v1.installed
        assert record.activation == Activation(2, v2.digest, point, attempts=1)
    assert not (device.state_dir / "state.corrupt").exists()

    device.start()
    device.wait_ready()
    # Verified whichever it is: v1 (recovered), or v2 if committed or already swapped in again.
    serving = device.serves_verified()
    if point == "committed":
        assert serving == 2
    # The sync loop retries the assignment (if needed) until v2 is committed.
    device.wait_for(lambda: device.logged(v2, "active"), "v2 to be committed")
    assert device.serves_verified() == 2
    device.stop()

    state = device.state()
    assert state.model(MODEL).active == v2.installed
    assert state.model(MODEL).history == (v1.installed,)
    assert state.model(MODEL).activation is None
    assert state.model(MODEL).failed == ()

    events = device.events(v2)
    states = [event.state for event in events]
    if point == "committed":
        # Killed between the commit and its event: the restart logs what it found.
        assert states == [*PATH, "active"]
        assert "restarted" in events[-1].reason
    else:
        first = PATH[: PATH.index(point) + 1]
        outcome = "reverted" if point == "probation" else "failed"
        assert states == [*first, outcome, *PATH, "active"]
        interrupted = events[len(first)]
        assert interrupted.previous == point
        assert interrupted.reason == f"the agent restarted during {point}"
        assert events[0].details == {"attempt": 1}
        assert events[len(first) + 1].details == {"attempt": 2}
    assert [event.state for event in device.events(v1)][-2:] == ["active", "retired"]
    assert events[-1].time <= device.events(v1)[-1].time  # v1 retires after v2 is active


def test_an_activation_killed_max_attempts_times_is_given_up(
    make_device: Callable[..., Device], kit: Kit
) -> None:
    max_attempts = 2
    device = make_device(max_attempts=max_attempts)
    v1, v2 = kit.v1, kit.v2
    install_v1(device)
    for attempt in range(1, max_attempts + 1):
        kill_at(device, "validating")
        assert device.state().model(MODEL).activation == Activation(
            2, v2.digest, "validating", attempts=attempt
        )

    device.start()
    device.wait_ready()
    device.wait_for(lambda: device.logged(v2, "failed", "gave up"), "v2 to be given up")
    assert device.serves_verified() == 1
    device.stop()

    record = device.state().model(MODEL)
    assert record.active == v1.installed
    assert record.activation is None
    assert record.failed == (v2.digest,)
    events = device.events(v2)
    assert events[-1].reason == f"gave up after {max_attempts} interrupted attempts"
    restarts = [e for e in events if e.reason == "the agent restarted during validating"]
    assert len(restarts) == max_attempts
    assert not device.logged(v2, "probation")  # it never served
    assert [event.state for event in device.events(v1)][-1] == "active"
