"""The agent and the control plane, run as real processes, tell a notify socket how they are.

This is what systemd sees of a `Type=notify` service with `WatchdogSec=`: the test binds the
socket, passes it in `NOTIFY_SOCKET` with `WATCHDOG_USEC`, and reads the datagrams.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.shared.notify_socket import NotifyListener, has

EDGEFLEET = [sys.executable, "-m", "shared.cli"]
WATCHDOG_USEC = "400000"  # pings every 0.2 s


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def supervised(
    args: list[str], listener: NotifyListener, log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run `edgefleet ARGS` as systemd would start it; SIGTERM it at the end if still running."""
    env = {**os.environ, "NOTIFY_SOCKET": listener.notify_socket, "WATCHDOG_USEC": WATCHDOG_USEC}
    with log.open("ab") as output:
        process = subprocess.Popen(
            [*EDGEFLEET, *args], stdout=output, stderr=subprocess.STDOUT, env=env
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


def stop_and_expect_stopping(
    process: subprocess.Popen[bytes], listener: NotifyListener, log: Path
) -> None:
    """SIGTERM, as `systemctl stop` sends it: STOPPING=1, then a clean exit."""
    process.send_signal(signal.SIGTERM)
    assert listener.wait_for(has("STOPPING", "1"))["STATUS"] == "stopping"
    assert process.wait(60) == 0, log.read_text()


def test_the_agent_says_ready_pings_and_says_stopping(sample_models: Path, tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "agent.log"
    args = [
        "agent",
        "serve",
        "--port",
        str(port),
        "--state-dir",
        str(tmp_path / "state"),
        "--model",
        f"mlp={sample_models / 'mlp.onnx'}",
        "--pin",
        "mlp=onnxruntime/CPU",
    ]
    with NotifyListener() as listener, supervised(args, listener, log) as agent:
        ready = listener.wait_for(has("READY"))
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(agent.pid)
        assert listening(port), "READY=1 came before the HTTP server listened"
        listener.wait_for(has("STATUS", "ready: serving 1 model"))
        for _ in range(3):
            listener.wait_for(has("WATCHDOG", "1"))
        stop_and_expect_stopping(agent, listener, log)
    statuses = [m["STATUS"] for m in listener.received if "STATUS" in m]
    assert statuses[0] in ("loading: 0 of 1 models serving", "ready: serving 1 model")


def test_the_control_plane_says_ready_after_the_database_check(tmp_path: Path) -> None:
    data = tmp_path / "data"
    migrate = subprocess.run(
        [*EDGEFLEET, "cp", "migrate", "--data", str(data)], capture_output=True, timeout=120
    )
    assert migrate.returncode == 0, migrate.stderr.decode()
    port = free_port()
    log = tmp_path / "cp.log"
    args = ["cp", "serve", "--data", str(data), "--port", str(port)]
    with NotifyListener(abstract=True) as listener, supervised(args, listener, log) as cp:
        ready = listener.wait_for(has("READY"))
        assert ready["STATUS"] == f"serving the control plane API on http://127.0.0.1:{port}/api/v1"
        assert listening(port)
        for _ in range(3):
            listener.wait_for(has("WATCHDOG", "1"))
        stop_and_expect_stopping(cp, listener, log)


def test_a_control_plane_without_its_database_never_says_ready(tmp_path: Path) -> None:
    log = tmp_path / "cp.log"
    args = ["cp", "serve", "--data", str(tmp_path / "empty"), "--port", str(free_port())]
    with NotifyListener() as listener, supervised(args, listener, log) as cp:
        assert cp.wait(120) == 1
        assert "cp migrate" in log.read_text()
        assert listener.drain() == []
