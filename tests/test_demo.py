"""`edgefleet demo` as a user runs it: ready, an inference, the dashboard, Ctrl-C; then again.

Three runs in one demo directory on free ports: a fresh one, a second that reuses everything
and is then killed with SIGKILL, and a third started at once after it, which must stop what
the killed run left and come up again (on the embedded broker, so both brokers are covered
where Mosquitto is installed). After each Ctrl-C the demo must exit 0 with none of its
processes running and its ports free.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from control_plane.demo import PID_FILE, READY_LINE
from control_plane.demo_processes import Recorded, log_tail, port_in_use, recorded_processes
from shared.mqtt.broker import LOOPBACK

EDGEFLEET = [sys.executable, "-m", "shared.cli"]
FIRST_READY_S = 150.0  # writes the sample models, builds the bundle, selects a backend
READY_S = 90.0
STOP_S = 40.0  # the demo's own stop waits up to 10 s per child before SIGKILL
POLL_S = 0.1
# The demo passes these to the agent: a shorter probation and accelerator measurement than
# the demo's own (5 s and 3 s) only make the test quicker; the steps are the same.
TEST_PACING = {
    "EDGEFLEET_AGENT_BUNDLES_PROBATION_DURATION_S": "1",
    "EDGEFLEET_AGENT_SELECTION_BUDGET_S": "0.5",
}


class DemoRun:
    """One `edgefleet demo` process; a thread collects what it prints."""

    def __init__(self, directory: Path, ports: Sequence[int], *options: str) -> None:
        self.directory = directory
        self.ports = ports
        cp, agent, mqtt = (str(p) for p in ports)
        ports_options = ["--cp-port", cp, "--agent-port", agent, "--mqtt-port", mqtt]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
        env |= TEST_PACING
        self.process = subprocess.Popen(
            [*EDGEFLEET, "demo", "--dir", str(directory), *ports_options, *options],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._lock:
                self._lines.append(line)

    @property
    def output(self) -> str:
        """Everything printed so far."""
        with self._lock:
            return "".join(self._lines)

    def report(self) -> str:
        """The output and the end of every log, for a failure message."""
        parts = [f"--- demo output:\n{self.output}"]
        for log in sorted((self.directory / "logs").glob("*.log")):
            parts.append(f"--- {log.name}:\n{log_tail(log)}")
        return "\n".join(parts)

    def wait_ready(self, seconds: float) -> None:
        """Until the ready line; fails at once if the demo exits."""
        deadline = time.monotonic() + seconds
        while READY_LINE not in self.output:
            code = self.process.poll()
            assert code is None, f"the demo exited with {code}\n{self.report()}"
            assert time.monotonic() < deadline, f"not ready in {seconds} s\n{self.report()}"
            time.sleep(POLL_S)

    def children(self) -> list[Recorded]:
        """The processes the pid file records for this run."""
        demo, children = recorded_processes(self.directory / PID_FILE)
        assert demo is not None, self.report()
        assert demo.pid == self.process.pid, self.report()
        return children

    def interrupt(self) -> int:
        """Ctrl-C; the exit code."""
        self.process.send_signal(signal.SIGINT)
        try:
            code = self.process.wait(STOP_S)
        finally:
            self.kill()
        return code

    def kill(self) -> None:
        """SIGKILL if it still runs, and collect the reader."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(STOP_S)
        self._reader.join(STOP_S)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def runs() -> Iterator[list[DemoRun]]:
    """The demo runs a test starts, killed if the test fails midway."""
    started: list[DemoRun] = []
    yield started
    for run in started:
        run.kill()
        for child in recorded_processes(run.directory / PID_FILE)[1]:
            process = child.running()
            if process is not None:
                process.kill()


def free_ports(count: int) -> list[int]:
    """Ports free now, below Linux's ephemeral range so that no client connection takes one."""
    ports: set[int] = set()
    while len(ports) < count:
        port = random.randrange(20000, 32000)
        if not port_in_use(LOOPBACK, port):
            ports.add(port)
    return list(ports)


def check_inference(run: DemoRun) -> None:
    """The agent answers the sample MLP, version 1, through tritonclient."""
    client = httpclient.InferenceServerClient(f"{LOOPBACK}:{run.ports[1]}", network_timeout=10)
    try:
        tensor = httpclient.InferInput("input", [3, 64], "FP32")
        tensor.set_data_from_numpy(np.random.default_rng(7).standard_normal((3, 64), np.float32))
        result = client.infer("mlp", [tensor])
    finally:
        client.close()
    assert result.get_response()["model_version"] == "1"
    probabilities = result.as_numpy("probabilities")
    assert probabilities is not None
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


def check_control_plane(run: DemoRun) -> None:
    """`/` leads to the dashboard's sign-in page; the printed token works on the API."""
    base = f"http://{LOOPBACK}:{run.ports[0]}"
    with urllib.request.urlopen(f"{base}/", timeout=10) as response:  # follows the redirect
        page = response.read().decode()
        assert response.status == 200
    assert "Sign in" in page, page[:2000]
    assert 'name="token"' in page, page[:2000]
    token = (run.directory / "admin-token").read_text().strip()
    assert token in run.output  # the summary shows it
    request = urllib.request.Request(
        f"{base}/api/v1/devices", headers={"Authorization": f"Bearer {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        devices = json.loads(response.read())["devices"]
    assert [(d["id"], d["online"]) for d in devices] == [("demo-agent", True)]


def check_stopped(run: DemoRun, children: Sequence[Recorded]) -> None:
    """None of the recorded processes runs, the pid file is gone, the ports are free."""
    deadline = time.monotonic() + STOP_S
    while any(child.running() for child in children) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    assert [c.name for c in children if c.running()] == [], run.report()
    assert not (run.directory / PID_FILE).exists()
    assert [port for port in run.ports if port_in_use(LOOPBACK, port)] == []


def test_demo_runs_again_and_after_kill_9(tmp_path: Path, runs: list[DemoRun]) -> None:
    directory = tmp_path / "demo"
    ports = free_ports(3)

    first = DemoRun(directory, ports)
    runs.append(first)
    first.wait_ready(FIRST_READY_S)
    check_inference(first)
    check_control_plane(first)
    children = first.children()
    assert [c.name for c in children] == ["MQTT broker", "control plane", "agent"]
    assert first.interrupt() == 0, first.report()
    assert "stopped agent, control plane, MQTT broker" in first.output
    check_stopped(first, children)

    second = DemoRun(directory, ports)
    runs.append(second)
    second.wait_ready(READY_S)
    for reused in (
        "reused the admin token",
        "reused the identity",
        "rollout 1 to device:demo-agent reused (completed)",
    ):
        assert reused in second.output, second.report()
    check_inference(second)
    left_behind = second.children()
    second.process.kill()  # no chance to stop anything: the children must not survive it
    second.kill()

    third = DemoRun(directory, ports, "--broker", "embedded")
    runs.append(third)
    third.wait_ready(READY_S)
    check_inference(third)
    check_control_plane(third)
    children = third.children()
    assert third.interrupt() == 0, third.report()
    check_stopped(third, [*left_behind, *children])
