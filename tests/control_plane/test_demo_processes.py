"""The demo's children: they die with the demo, leftovers are stopped, failures show the log."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from control_plane.demo_processes import (
    DemoError,
    DemoProcesses,
    Recorded,
    port_in_use,
    recorded_processes,
    stop_stale,
)

WAIT_S = 20.0


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process that would run for a minute."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def record(pid_file: Path, demo: Recorded | None, *children: Recorded) -> None:
    """A pid file as a demo writes it."""
    document = {
        "demo": None if demo is None else vars_of(demo),
        "children": [vars_of(child) for child in children],
    }
    pid_file.write_text(json.dumps(document))


def vars_of(entry: Recorded) -> dict[str, object]:
    return {"name": entry.name, "pid": entry.pid, "started": entry.started}


def recorded(name: str, pid: int) -> Recorded:
    return Recorded(name, pid, psutil.Process(pid).create_time())


def wait_until_ended(entry: Recorded) -> bool:
    deadline = time.monotonic() + WAIT_S
    while entry.running() is not None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_previous_runs_children_are_stopped(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    pid_file = tmp_path / "pids.json"
    agent = recorded("agent", sleeper.pid)
    gone = Recorded("broker", 2**22 + 1, 0.0)  # no such process
    record(pid_file, None, agent, gone)
    assert stop_stale(pid_file) == ["agent"]
    assert agent.running() is None
    assert not pid_file.exists()


def test_a_recycled_pid_is_left_alone(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    pid_file = tmp_path / "pids.json"
    stranger = Recorded("agent", sleeper.pid, psutil.Process(sleeper.pid).create_time() - 100)
    record(pid_file, None, stranger)
    assert stop_stale(pid_file) == []
    assert sleeper.poll() is None


def test_a_running_demo_is_not_disturbed(tmp_path: Path, sleeper: subprocess.Popen[bytes]) -> None:
    pid_file = tmp_path / "pids.json"
    record(pid_file, recorded("demo", sleeper.pid))
    with pytest.raises(DemoError, match=f"already running .*pid {sleeper.pid}"):
        stop_stale(pid_file)
    assert sleeper.poll() is None
    assert pid_file.exists()


def test_a_torn_pid_file_is_ignored(tmp_path: Path) -> None:
    pid_file = tmp_path / "pids.json"
    pid_file.write_text('{"demo": {"pid": 1')
    assert recorded_processes(pid_file) == (None, [])
    assert stop_stale(pid_file) == []


def test_port_in_use() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert port_in_use("127.0.0.1", port)
    assert not port_in_use("127.0.0.1", port)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_children_die_with_the_demo_even_by_sigkill(tmp_path: Path) -> None:
    # A stand-in demo: starts one child the way the demo does, prints its pid, then waits.
    script = f"""
import asyncio, os, sys
from pathlib import Path
from control_plane.demo_processes import DemoProcesses

async def main():
    directory = Path({str(tmp_path)!r})
    processes = DemoProcesses(directory / "pids.json", os.environ)
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    child = await processes.start("sleeper", argv, directory / "sleeper.log")
    print(child.process.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""
    demo = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert demo.stdout is not None
        child = recorded("sleeper", int(demo.stdout.readline()))
        assert child.running() is not None
        demo.kill()
        assert wait_until_ended(child), "the child outlived its parent"
    finally:
        demo.kill()
        demo.wait()
        if demo.stdout is not None:
            demo.stdout.close()


async def test_a_failing_command_reports_its_log(tmp_path: Path) -> None:
    processes = DemoProcesses(tmp_path / "pids.json", {})
    command = [sys.executable, "-c", "print('no model here'); raise SystemExit(3)"]
    with pytest.raises(DemoError, match=r"(?s)status 3.*no model here"):
        await processes.run("`edgefleet bundle`", command, tmp_path / "bundle.log", 30)


async def test_children_are_stopped_newest_first(tmp_path: Path) -> None:
    processes = DemoProcesses(tmp_path / "pids.json", {})
    argv = [sys.executable, "-c", "import time; time.sleep(60)"]
    for name in ("broker", "control plane", "agent"):
        await processes.start(name, argv, tmp_path / f"{name}.log")
    _, children = recorded_processes(tmp_path / "pids.json")
    assert [c.name for c in children] == ["broker", "control plane", "agent"]
    assert await processes.stop_all() == ["agent", "control plane", "broker"]
    assert all(child.running() is None for child in children)
    assert not (tmp_path / "pids.json").exists()
