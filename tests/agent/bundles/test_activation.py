"""The bundle path of a live agent: install, swap under load, probation, rollback, refusals."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent.bundles.lifecycle import EventLog
from agent.runner import EVENTS_FILE
from agent.runtimes.registry import RuntimeRegistry
from shared.keys import PrivateKey
from tests.agent.bundles.factory import BuiltBundle, Fleet
from tests.agent.fakes import FakeRuntime
from tests.agent.harness import AgentThread

ROW = [1.0, 2.0, 3.0, 4.0]


class Device:
    """A production agent in a thread, following a fleet's assignment file."""

    def __init__(self, fleet: Fleet, state_dir: Path, **bundles: Any) -> None:
        self.fleet = fleet
        self.state_dir = state_dir
        self.thread = AgentThread(
            fleet.settings(state_dir, **bundles),
            RuntimeRegistry([FakeRuntime()]),
            production=True,
        ).start(wait_ready=False)

    def infer(self, model: str = "m") -> tuple[int, list[float] | str]:
        """One request: (status, output row) or (status, error message)."""
        body = json.dumps(
            {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
        ).encode()
        request = urllib.request.Request(
            f"http://{self.thread.url}/v2/models/{model}/infer", data=body, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                document = json.loads(response.read())
                return response.status, document["outputs"][0]["data"]
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())["error"]

    def states(self, digest: str) -> list[str]:
        """The lifecycle states logged for one bundle, in order."""
        log = EventLog(self.state_dir / EVENTS_FILE)
        return [event.state for event in log.read() if event.digest == digest]

    def events(self, digest: str) -> list[Any]:
        """The lifecycle events logged for one bundle."""
        return [e for e in EventLog(self.state_dir / EVENTS_FILE).read() if e.digest == digest]

    def stop(self) -> None:
        """Stop the agent."""
        self.thread.stop()


def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Poll `condition` until true, failing after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def device(fleet: Fleet, tmp_path: Path) -> Iterator[Device]:
    running = Device(fleet, tmp_path / "state")
    yield running
    running.stop()


def serves(device: Device, scale: float) -> bool:
    """True when the device answers x * scale."""
    status, data = device.infer()
    return status == 200 and data == pytest.approx([v * scale for v in ROW])


def installed(device: Device, bundle: BuiltBundle) -> None:
    """Wait until `bundle` is active."""
    until(lambda: "active" in device.states(bundle.digest))


def test_first_assignment_installs_and_serves(fleet: Fleet, device: Device) -> None:
    v1 = fleet.fake_bundle("m", 1, scale=2.0)
    fleet.assign(v1.assigned())
    installed(device, v1)
    assert device.states(v1.digest) == [
        "downloading",
        "verifying",
        "staged",
        "validating",
        "warming",
        "probation",
        "active",
    ]
    device.thread.wait_ready()
    assert serves(device, 2.0)
    assert (device.state_dir / "bundles" / "blobs" / f"{v1.digest}.bundle").is_file()


def test_swap_under_load_fails_no_request(fleet: Fleet, tmp_path: Path) -> None:
    # The gate's latency check is not what this test is about, and on a shared machine the
    # load itself can double a p95: only a failing version may be reverted here.
    device = Device(fleet, tmp_path / "swap-state", probation_max_latency_ratio=1000.0)
    try:
        _swap_under_load(fleet, device)
    finally:
        device.stop()


def _swap_under_load(fleet: Fleet, device: Device) -> None:
    v1 = fleet.fake_bundle("m", 1, scale=2.0)
    fleet.assign(v1.assigned())
    installed(device, v1)
    seen: list[tuple[int, Any]] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            seen.append(device.infer())

    clients = [threading.Thread(target=load) for _ in range(4)]
    for client in clients:
        client.start()
    try:
        until(lambda: len(seen) > 50)
        v2 = fleet.fake_bundle("m", 2, scale=3.0)
        fleet.assign(v2.assigned())
        installed(device, v2)
        count = len(seen)
        until(lambda: len(seen) > count + 50)
    finally:
        stop.set()
        for client in clients:
            client.join()
    failures = [s for s in seen if s[0] != 200]
    assert failures == []
    answers = {tuple(data) for _, data in seen}
    assert answers == {(2.0, 4.0, 6.0, 8.0), (3.0, 6.0, 9.0, 12.0)}, "both versions served"
    assert serves(device, 3.0)


def send_during_probation(device: Device, bundle: BuiltBundle, attempt: int = 1) -> list[int]:
    """Keep sending requests until the bundle's probation number `attempt` is decided."""
    statuses = []
    until(lambda: device.states(bundle.digest).count("probation") >= attempt)
    deadline = time.monotonic() + 30
    while device.states(bundle.digest)[-1] == "probation":
        assert time.monotonic() < deadline
        statuses.append(device.infer()[0])
    return statuses


def test_probation_reverts_a_version_that_errors(fleet: Fleet, device: Device) -> None:
    v1 = fleet.fake_bundle("m", 1, scale=2.0)
    fleet.assign(v1.assigned())
    installed(device, v1)
    # Passes selection, the golden vectors and warm-up, then fails on the test's requests.
    v2 = fleet.fake_bundle("m", 2, scale=3.0, fail_on=ROW[-1])
    fleet.assign(v2.assigned())
    statuses = send_during_probation(device, v2)
    assert 500 in statuses
    assert device.states(v2.digest)[-1] == "reverted"
    reason = device.events(v2.digest)[-1].reason
    assert "error rate" in reason
    assert serves(device, 2.0), "the previous version serves again"
    state = json.loads((device.state_dir / "state.json").read_text())
    assert state["models"]["m"]["active"]["version"] == 1
    assert v2.digest in state["models"]["m"]["failed"]
    # Polling the same assignment again does not retry it; a new assignment naming it does.
    services = device.thread.services
    assert services is not None
    polls = services.sync.polls
    until(lambda: services.sync.polls >= polls + 2)
    assert device.states(v2.digest).count("downloading") == 1
    fleet.assign(v2.assigned())
    send_during_probation(device, v2, attempt=2)
    assert device.states(v2.digest).count("downloading") == 2
    assert device.states(v2.digest)[-1] == "reverted"


def test_probation_reverts_a_slow_version(fleet: Fleet, tmp_path: Path) -> None:
    device = Device(fleet, tmp_path / "slow-state", probation_duration_s=1.0)
    try:
        v1 = fleet.fake_bundle("m", 1, scale=2.0)
        fleet.assign(v1.assigned())
        installed(device, v1)
        for _ in range(30):  # the previous version's latency is the baseline
            assert device.infer()[0] == 200
        v2 = fleet.fake_bundle("m", 2, scale=3.0, latency_ms=40)
        fleet.assign(v2.assigned())
        send_during_probation(device, v2)
        assert device.states(v2.digest)[-1] == "reverted"
        assert "p95 latency" in device.events(v2.digest)[-1].reason
        assert serves(device, 2.0)
    finally:
        device.stop()


def test_rollback_assignment_points_to_the_older_bundle(fleet: Fleet, device: Device) -> None:
    v1 = fleet.fake_bundle("m", 1, scale=2.0)
    v2 = fleet.fake_bundle("m", 2, scale=3.0)
    fleet.assign(v1.assigned())
    installed(device, v1)
    fleet.assign(v2.assigned())
    installed(device, v2)
    assert serves(device, 3.0)
    fleet.assign(v1.assigned())  # a higher serial, naming the older bundle
    until(lambda: device.states(v1.digest).count("active") == 2)
    assert serves(device, 2.0)
    # v2's `retired` follows v1's `active` in the log, and the commit that writes state.json.
    until(lambda: device.states(v2.digest)[-1] == "retired")
    state = json.loads((device.state_dir / "state.json").read_text())
    assert state["assignment_serial"] == 3
    assert state["models"]["m"]["active"] == {"version": 1, "digest": v1.digest}


def tamper(bundle: BuiltBundle) -> BuiltBundle:
    """The same bundle with one byte of the model file flipped (the digest still matches)."""
    data = bytearray(bundle.path.read_bytes())
    position = data.index(b'"scale"')
    data[position + 1] ^= 0x01
    path = bundle.path.with_name("tampered.bundle")
    path.write_bytes(bytes(data))
    return BuiltBundle(
        path, bundle.name, bundle.version, hashlib.sha256(data).hexdigest(), len(data)
    )


REFUSED_BUNDLES: list[tuple[str, str]] = [
    ("a flipped byte in the model file", "model.fake"),
    ("signed by a key not in the key list", "not a release key"),
    ("digest differs from the assignment", "hashes to"),
]


@pytest.mark.parametrize(("case", "message"), REFUSED_BUNDLES, ids=[c[0] for c in REFUSED_BUNDLES])
def test_bad_bundle_is_refused_and_the_previous_version_serves(
    fleet: Fleet, device: Device, case: str, message: str
) -> None:
    v1 = fleet.fake_bundle("m", 1, scale=2.0)
    fleet.assign(v1.assigned())
    installed(device, v1)
    if case.startswith("a flipped byte"):
        bad = tamper(fleet.fake_bundle("m", 2, scale=3.0))
        entry = bad.assigned()
    elif case.startswith("signed by"):
        bad = fleet.fake_bundle("m", 2, signer=PrivateKey.generate(), scale=3.0)
        entry = bad.assigned()
    else:
        bad = fleet.fake_bundle("m", 2, scale=3.0)
        other = fleet.fake_bundle("m", 3, scale=4.0)
        entry = bad.assigned(url=other.path.resolve().as_uri())
    fleet.assign(entry)
    until(lambda: "failed" in device.states(entry.digest))
    assert message in device.events(entry.digest)[-1].reason
    assert serves(device, 2.0)


@pytest.mark.parametrize(
    ("case", "kwargs"),
    [
        ("expired", {"expires_in": -1.0}),
        ("replayed serial", {"serial": 1}),
        ("another device", {"device_id": "edge-2"}),
        ("signed by an unknown key", {"signer": PrivateKey.generate()}),
    ],
)
def test_bad_assignment_is_refused_and_the_previous_version_serves(
    fleet: Fleet, device: Device, case: str, kwargs: dict[str, Any]
) -> None:
    v1 = fleet.fake_bundle("m", 1, scale=2.0)
    fleet.assign(v1.assigned())
    installed(device, v1)
    v2 = fleet.fake_bundle("m", 2, scale=3.0)
    fleet.assign(v2.assigned(), **kwargs)
    services = device.thread.services
    assert services is not None
    until(lambda: not services.sync.healthy)
    assert device.states(v2.digest) == [], "nothing of a refused assignment is installed"
    assert services.keeper.state.assignment_serial == 1
    assert serves(device, 2.0)
    assert services.sync.assignment is not None
    assert services.sync.assignment.serial == 1


def test_explicit_unload_and_load_use_only_verified_bundles(fleet: Fleet, device: Device) -> None:
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    v1 = fleet.fake_bundle("m", 1, scale=2.0)
    fleet.assign(v1.assigned())
    installed(device, v1)
    client = httpclient.InferenceServerClient(device.thread.url)
    client.unload_model("m")
    assert not client.is_model_ready("m")
    services = device.thread.services
    assert services is not None
    polls = services.sync.polls
    until(lambda: services.sync.polls >= polls + 2)  # the assignment must not bring it back
    assert not client.is_model_ready("m")
    # A file changed on disk is noticed and extracted again from the verified archive.
    extracted = device.state_dir / "bundles" / "models" / v1.digest / "model.fake"
    extracted.write_text('{"scale": 9.0}')
    client.load_model("m")
    assert serves(device, 2.0)
    # A damaged archive in the store is refused with a reason, never served.
    client.unload_model("m")
    blob = device.state_dir / "bundles" / "blobs" / f"{v1.digest}.bundle"
    data = bytearray(blob.read_bytes())
    data[600] ^= 0xFF
    blob.write_bytes(bytes(data))
    extracted.write_text('{"scale": 9.0}')
    with pytest.raises(InferenceServerException) as info:
        client.load_model("m")
    assert info.value.status() == "500"
    assert not client.is_model_ready("m")
    client.close()
