"""A full disk under the bundle path: refused early, cleaned up, reported, and survived at start.

Found by the chaos suite's disk-full scenario (`bench/chaos/disk_full.py`): a download that ran
out of space left its partial file filling the disk, so the agent could write neither its state
nor its event log (the failure was never recorded and the disk stayed full), and an agent
restarted on the full disk exited at once (it rewrote the kept key list at every start) or,
past that, could not log what the restart found and never became ready. These tests make the
disk fill up at the seam where bytes are written (the partial download, the state file) or
make a file unwritable, so they need neither root nor a small file system; the scenario does
the same against a real size-capped tmpfs.
"""

from __future__ import annotations

import errno
import json
import shutil
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.bundles import download
from agent.bundles.download import BundleDownloader
from agent.bundles.lifecycle import EventLog, LifecycleEvent
from agent.bundles.space import disk_full
from agent.bundles.state import AgentState, StateFile
from agent.bundles.store import BundleStore
from agent.errors import DownloadFailed
from agent.runner import EVENTS_FILE, TRUSTED_KEYLIST, load_trust
from agent.runtimes.registry import RuntimeRegistry
from tests.agent.bundles import http_fixtures
from tests.agent.bundles.factory import BuiltBundle, Fleet
from tests.agent.fakes import FakeRuntime
from tests.agent.harness import AgentThread

executor = http_fixtures.executor
session = http_fixtures.session

ROW = [1.0, 2.0, 3.0, 4.0]


def no_space() -> OSError:
    """What a write on a full file system raises."""
    return OSError(errno.ENOSPC, "No space left on device")


def until(condition: Callable[[], bool], seconds: float = 30.0) -> None:
    """Poll `condition` until it holds, failing after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


class Device:
    """A production agent in a thread on a state directory, following a fleet's assignment."""

    def __init__(self, fleet: Fleet, state_dir: Path, **bundles: Any) -> None:
        self.state_dir = state_dir
        self.stopped = False
        self.thread = AgentThread(
            fleet.settings(state_dir, **bundles), RuntimeRegistry([FakeRuntime()]), production=True
        ).start(wait_ready=False)

    def events(self, bundle: BuiltBundle) -> list[LifecycleEvent]:
        """The events logged for one bundle."""
        log = EventLog(self.state_dir / EVENTS_FILE)
        return [event for event in log.read() if event.digest == bundle.digest]

    def states(self, bundle: BuiltBundle) -> list[str]:
        """The states logged for one bundle, in order."""
        return [event.state for event in self.events(bundle)]

    def scale(self) -> float:
        """What the served version multiplies by (the fake model's scale)."""
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
        request = urllib.request.Request(
            f"http://{self.thread.url}/v2/models/m/infer", data=json.dumps(body).encode()
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return float(json.loads(response.read())["outputs"][0]["data"][0]) / ROW[0]

    def stop(self) -> None:
        """Stop the agent (once)."""
        if not self.stopped:
            self.stopped = True
            self.thread.stop()


@pytest.fixture
def devices(fleet: Fleet, tmp_path: Path) -> Iterator[Callable[..., Device]]:
    """Start devices on one state directory (one at a time); stop them all at the end."""
    started: list[Device] = []

    def start(**bundles: Any) -> Device:
        device = Device(fleet, tmp_path / "state", **bundles)
        started.append(device)
        return device

    yield start
    for device in started:
        device.stop()


def install(fleet: Fleet, device: Device, bundle: BuiltBundle) -> None:
    """Assign `bundle` and wait until it is active."""
    fleet.assign(bundle.assigned())
    until(lambda: "active" in device.states(bundle))


def test_a_full_disk_is_recognised_behind_the_error_it_caused() -> None:
    def translated() -> None:
        try:
            raise no_space()
        except OSError:
            raise DownloadFailed("the download stopped") from None

    with pytest.raises(DownloadFailed) as raised:
        translated()
    assert disk_full(raised.value)  # through __context__, which `from None` keeps
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(DownloadFailed("HTTP 404"))


async def test_a_download_that_cannot_fit_is_refused_before_it_starts(
    tmp_path: Path, session: aiohttp.ClientSession, executor: ThreadPoolExecutor
) -> None:
    store = BundleStore(tmp_path / "bundles")
    source = tmp_path / "huge.bundle"
    source.write_bytes(b"x" * 1000)
    size = shutil.disk_usage(tmp_path).free  # the archive fits, its extraction would not
    downloader = BundleDownloader(store, session, executor)
    with pytest.raises(DownloadFailed, match="not enough disk space") as refused:
        await downloader.fetch(source.as_uri(), "a" * 64, size)
    assert refused.value.retryable
    assert store.part("a" * 64).stat().st_size == 0  # not one byte was copied


def test_a_disk_that_fills_up_mid_download_is_cleaned_up_and_reported(
    fleet: Fleet, devices: Callable[..., Device], monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = fleet.fake_bundle("m", 1, scale=2.0)
    v2 = fleet.fake_bundle("m", 2, scale=3.0)
    device = devices(poll_interval_s=0.1)
    install(fleet, device, v1)
    write = download._Part.write

    def fill_up(part: Any, data: bytes) -> None:
        """Half the chunk lands, then the disk is full."""
        write(part, data[: len(data) // 2])
        raise no_space()

    monkeypatch.setattr(download._Part, "write", fill_up)
    fleet.assign(v2.assigned())
    until(lambda: "failed" in device.states(v2))
    failed = device.events(v2)[-1]
    assert failed.reason.startswith("the disk is full: no space left in ")
    assert "discarded what this attempt wrote" in failed.reason
    assert failed.reason.endswith("(will retry at the next sync)")
    store = BundleStore(device.state_dir / "bundles")
    assert not store.part(v2.digest).exists()  # the space it took is free again
    assert StateFile(device.state_dir).load().model("m").activation is None
    assert device.scale() == 2.0  # v1 serves throughout

    monkeypatch.setattr(download._Part, "write", write)  # room again: the next sync installs v2
    until(lambda: "active" in device.states(v2))
    assert device.scale() == 3.0


def test_a_state_write_refused_for_lack_of_space_is_logged_and_the_sync_goes_on(
    fleet: Fleet, devices: Callable[..., Device], monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = fleet.fake_bundle("m", 1, scale=2.0)
    v2 = fleet.fake_bundle("m", 2, scale=3.0)
    device = devices(poll_interval_s=0.1)
    install(fleet, device, v1)
    save = StateFile.save
    refusals = [no_space()]

    def full_once(state_file: StateFile, state: AgentState) -> None:
        """The write that starts v2's attempt finds the disk full."""
        activation = state.model("m").activation
        if refusals and activation is not None and activation.digest == v2.digest:
            raise refusals.pop()
        save(state_file, state)

    monkeypatch.setattr(StateFile, "save", full_once)
    fleet.assign(v2.assigned())
    # The attempt failed at its very first write, before it logged its start: it used to log
    # an illegal transition (none -> failed), an AssertionError that ended the sync loop.
    until(lambda: "active" in device.states(v2))
    states = device.states(v2)
    assert states[:2] == ["downloading", "failed"]
    assert device.events(v2)[1].reason.startswith("the disk is full")
    assert device.scale() == 3.0


def test_a_restart_serves_the_committed_version_when_the_event_log_cannot_be_written(
    fleet: Fleet, devices: Callable[..., Device], monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = fleet.fake_bundle("m", 1, scale=2.0)
    v2 = fleet.fake_bundle("m", 2, scale=3.0)
    device = devices()
    install(fleet, device, v1)
    device.stop()
    device = devices(test_pause_at="verifying")
    fleet.assign(v2.assigned())
    until((device.state_dir / "paused-at-verifying").exists)
    device.stop()  # v2's activation is under way in the state file, as after a kill
    assert StateFile(device.state_dir).load().model("m").activation is not None

    def full(log: EventLog, event: LifecycleEvent) -> None:
        """The disk is full: the event log can be read, not appended to."""
        raise no_space()

    monkeypatch.setattr(EventLog, "append", full)
    restarted = devices(test_pause_at="verifying")
    restarted.thread.wait_ready(30)
    assert restarted.scale() == 2.0


def test_a_restart_does_not_rewrite_the_kept_key_list(fleet: Fleet, tmp_path: Path) -> None:
    settings = fleet.settings(tmp_path / "state")
    load_trust(settings)
    kept = tmp_path / "state" / TRUSTED_KEYLIST
    before = kept.stat().st_ino
    load_trust(settings)  # a restart: a write would need free space, and a full disk has none
    assert kept.stat().st_ino == before


def test_an_assignment_that_arrives_while_the_disk_is_full_is_taken_once_there_is_room(
    fleet: Fleet, devices: Callable[..., Device], monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = fleet.fake_bundle("m", 1, scale=2.0)
    v2 = fleet.fake_bundle("m", 2, scale=3.0)
    device = devices(poll_interval_s=0.1)
    install(fleet, device, v1)
    save = StateFile.save
    refused: list[AgentState] = []

    def full(state_file: StateFile, state: AgentState) -> None:
        """Every write finds the disk full."""
        refused.append(state)
        raise no_space()

    monkeypatch.setattr(StateFile, "save", full)
    fleet.assign(v2.assigned())
    until(lambda: len(refused) >= 2)  # accepting it was tried, and tried again
    monkeypatch.setattr(StateFile, "save", save)  # room again
    until(lambda: "active" in device.states(v2))
    assert StateFile(device.state_dir).load().assignment_serial == fleet.serial
