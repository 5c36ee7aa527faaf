"""`kill -9` of `edgefleet agent run` at every named point of an activation, then a restart.

Real bundles (v1 from mlp.onnx, v2 from mlp.tflite) are built, signed and assigned with the
command line once per module. For each pause point of `agent.bundles.pause.POINTS` a device
installs v1, is told to move to v2, is frozen at the point (`bundles.test_pause_at`), killed
with SIGKILL and started again. Every restart must serve a verified version (an inference
matches the golden vectors of the version that answered), account for the interrupted attempt
in the event log, and then finish the move to v2, because the sync loop retries it. The agent
process is `bench.chaos.device.AgentProcess`, which the chaos suite's crash scenario
(`bench/chaos/crash_update.py`) also drives, at random moments instead of named points.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.bundles.lifecycle import LifecycleEvent
from agent.bundles.pause import POINTS
from agent.bundles.state import Activation, InstalledVersion
from bench.chaos.device import EDGEFLEET, AgentProcess, Golden
from shared.key_directory import KeyDirectory

DEVICE_ID = "edge-crash-1"
MODEL = "mlp"
# The states an attempt logs before it commits, in order (`pause.POINTS` less `committed`).
PATH = ["downloading", "verifying", "staged", "validating", "warming", "probation"]


@dataclass(frozen=True)
class Release:
    """One signed bundle of the model, an assignment naming it, and its golden vectors."""

    version: int
    digest: str
    assignment: Path  # signed for DEVICE_ID with serial == version
    golden: Golden

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


def edgefleet(*args: str) -> None:
    """Run an `edgefleet` command as the operator would; it must succeed."""
    result = subprocess.run(
        [*EDGEFLEET, *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, f"edgefleet {' '.join(args)}:\n{result.stdout}{result.stderr}"


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
        verified, golden = Golden.of_bundle(bundle, root / f"mlp-v{version}", trust)
        releases.append(Release(version, verified.digest, assignment, golden))
    v1, v2 = releases
    assert v1.digest != v2.digest
    # One request checks whichever version answers it.
    assert v1.golden.inputs.keys() == v2.golden.inputs.keys()
    for name in v1.golden.inputs:
        np.testing.assert_array_equal(v1.golden.inputs[name], v2.golden.inputs[name])
    return Kit(keys, v1, v2)


class Device(AgentProcess):
    """`edgefleet agent run` on its own state directory (see `bench.chaos.device`), with fast
    polling and probation, following the assignment file the test copies in."""

    def __init__(self, root: Path, kit: Kit, **bundles: Any) -> None:
        options: dict[str, Any] = {"poll_interval_s": 0.2, "probation_duration_s": 0.3}
        super().__init__(
            root,
            device_id=DEVICE_ID,
            model=MODEL,
            keys=kit.keys,
            goldens={r.version: r.golden for r in (kit.v1, kit.v2)},
            **{**options, **bundles},
        )
        self.kit = kit

    def assign(self, release: Release) -> None:
        """Hand the device the operator's signed assignment for `release`."""
        shutil.copyfile(release.assignment, self.assignment)

    def events_of(self, release: Release) -> list[LifecycleEvent]:
        """The events of one release, in order."""
        return self.events(release.digest)

    def logged(self, release: Release, state: str, reason: str = "") -> bool:
        """True once the event log shows `release` reaching `state` (with `reason` in it)."""
        return any(e.state == state and reason in e.reason for e in self.events_of(release))


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

    events = device.events_of(v2)
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
    assert [event.state for event in device.events_of(v1)][-2:] == ["active", "retired"]
    assert events[-1].time <= device.events_of(v1)[-1].time  # v1 retires after v2 is active


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
    events = device.events_of(v2)
    assert events[-1].reason == f"gave up after {max_attempts} interrupted attempts"
    restarts = [e for e in events if e.reason == "the agent restarted during validating"]
    assert len(restarts) == max_attempts
    assert not device.logged(v2, "probation")  # it never served
    assert [event.state for event in device.events_of(v1)][-1] == "active"
