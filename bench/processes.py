"""Server subprocesses for a benchmark: how to launch them, readiness, stopping, their logs."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench import BenchError
from bench.http_client import http_request

REPO = Path(__file__).resolve().parents[1]
AGENT_READY_PATH = "/v2/health/ready"
TRIVIAL_READY_PATH = "/ready"
FIRST_READY_DEADLINE_S = 180.0  # a first start measures every variant of every model
READY_DEADLINE_S = 60.0

Command = Callable[[int], list[str]]  # the command line of a server listening on a port


@dataclass
class Server:
    """A server process started by the benchmark."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    ready_s: float = 0.0  # from Popen to the first 200 on the ready path


@contextlib.contextmanager
def running(
    name: str, command: Command, ready_path: str, log_dir: Path, deadline_s: float
) -> Iterator[Server]:
    """Start a server on a free port, wait until it is ready, and always stop it afterwards."""
    port = free_port()
    log = log_dir / f"{name}-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    with log.open("wb") as sink:
        started = time.perf_counter()
        process = subprocess.Popen(
            command(port),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only us; `finally` stops the server
        )
    server = Server(name, process, port, log)
    try:
        server.ready_s = wait_ready(server, ready_path, started, deadline_s)
        yield server
    finally:
        stop(process)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_ready(server: Server, path: str, started: float, deadline_s: float) -> float:
    """Poll `path` until it answers 200; return the seconds since `started`."""
    while True:
        code = server.process.poll()
        if code is not None:
            raise BenchError(f"{server.name} exited ({code}) before ready:\n{tail(server.log)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_request(server.port, "GET", path, timeout=1.0).status == 200:
                return time.perf_counter() - started
        if time.perf_counter() - started > deadline_s:
            raise BenchError(
                f"{server.name} not ready after {deadline_s:.0f} s:\n{tail(server.log)}"
            )
        time.sleep(0.01)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a process, killing it if it has not exited after 10 s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tail(log: Path, lines: int = 20) -> str:
    """The last lines of a server's log."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(cannot read {log}: {error})"


def trivial_command(port: int) -> list[str]:
    """The command line of the trivial aiohttp endpoint."""
    return [sys.executable, "-m", "bench.trivial_server", "--port", str(port)]


@dataclass(frozen=True)
class AgentLaunch:
    """How to start one `edgefleet agent serve`."""

    executable: Path
    models: dict[str, list[Path]]
    state_dir: Path
    policy: str
    queue_delay_us: int

    def command(self, port: int) -> list[str]:
        """The command line for `port`."""
        command = [str(self.executable), "agent", "serve"]
        for name, paths in self.models.items():
            command += ["--model", f"{name}={','.join(str(p) for p in paths)}"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--state-dir", str(self.state_dir)]
        command += ["--policy", self.policy, "--max-queue-delay-us", str(self.queue_delay_us)]
        return command


def edgefleet_executable() -> Path:
    """The `edgefleet` console script next to this interpreter."""
    path = Path(sys.executable).with_name("edgefleet")
    if not path.exists():
        raise BenchError(f"{path} does not exist: install the project (pip install -e .)")
    return path
