"""`edgefleet` subprocesses for `bench.fleet`: one-shot commands, `cp serve` and `edgefleet sim`.

Every long-running process is a context manager that stops it (SIGTERM, then SIGKILL) on the
way out, also on Ctrl-C or a failure; each writes to its own log, whose tail a `BenchError`
quotes. The processes start in their own session, so Ctrl-C reaches only the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from bench import BenchError
from bench.http_client import http_request
from bench.processes import REPO, edgefleet_executable, stop, tail
from control_plane import tokens
from control_plane.db.engine import create_engine_for, default_database_url, open_session
from control_plane.db.migrate import upgrade
from control_plane.roles import Role

HEALTH_PATH = "/api/v1/health"
READY_DEADLINE_S = 60.0
COMMAND_TIMEOUT_S = 120.0


def clean_environment(settings: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without `EDGEFLEET_*`, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update(settings or {})
    return env


def edgefleet(*args: str) -> str:
    """Run one `edgefleet` command to completion; return its stdout, BenchError if it fails."""
    command = [str(edgefleet_executable()), *args]
    shown = shlex.join(["edgefleet", *args])
    try:
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=REPO,
            env=clean_environment(),
            timeout=COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{shown}` ran past {COMMAND_TIMEOUT_S:.0f} s") from None
    if result.returncode != 0:
        raise BenchError(f"`{shown}` exited with {result.returncode}:\n{result.stderr[-2000:]}")
    return result.stdout


@dataclass
class Child:
    """A running `edgefleet` subprocess and its log."""

    name: str
    process: subprocess.Popen[bytes]
    log: Path

    def check(self) -> None:
        """BenchError (with the log's tail) if the process has exited."""
        code = self.process.poll()
        if code is not None:
            raise BenchError(f"{self.name} exited ({code}):\n{tail(self.log)}")


@contextlib.contextmanager
def child(name: str, args: list[str], log: Path, env: Mapping[str, str]) -> Iterator[Child]:
    """Start `edgefleet ARGS` in its own session; always stop it afterwards."""
    with log.open("ab") as sink:
        process = subprocess.Popen(
            [str(edgefleet_executable()), *args],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=dict(env),
            start_new_session=True,
        )
    try:
        yield Child(name, process, log)
    finally:
        stop(process)


@dataclass(frozen=True)
class ControlPlane:
    """A serving control plane: where it listens and an admin token."""

    port: int
    token: str
    data: Path
    process: Child

    @property
    def url(self) -> str:
        """The base URL (without /api/v1)."""
        return f"http://127.0.0.1:{self.port}"


def migrate_and_token(data: Path) -> str:
    """Bring the database in `data` to the newest schema; return a new admin token.

    In this process rather than through `edgefleet cp migrate` and `cp token create`: two
    interpreters fewer to start for each control plane.
    """
    return asyncio.run(_migrate_and_token(default_database_url(data)))


async def _migrate_and_token(url: str) -> str:
    await upgrade(url)
    engine = create_engine_for(url)
    try:
        async with open_session(engine) as session:
            _, secret = await tokens.issue_token(session, "bench.fleet", Role.ADMIN)
    finally:
        await engine.dispose()
    return secret


@contextlib.contextmanager
def control_plane(
    data: Path,
    port: int,
    keys: Path | None = None,
    mqtt_url: str | None = None,
    settings: Mapping[str, str] | None = None,
) -> Iterator[ControlPlane]:
    """`edgefleet cp serve` on SQLite in `data` (migrated first), ready to answer."""
    data.mkdir(parents=True, exist_ok=True)
    token = migrate_and_token(data)
    args = ["cp", "serve", "--data", str(data), "--host", "127.0.0.1", "--port", str(port)]
    if keys is not None:
        args += ["--keys", str(keys)]
    if mqtt_url is not None:
        args += ["--mqtt", mqtt_url]
    env = clean_environment(settings)
    with child("cp serve", args, data / f"cp-serve-{port}.log", env) as process:
        wait_until(lambda: _healthy(port), process, READY_DEADLINE_S, "cp serve to answer")
        yield ControlPlane(port, token, data, process)


def _healthy(port: int) -> bool:
    with contextlib.suppress(OSError, http.client.HTTPException):
        return http_request(port, "GET", HEALTH_PATH, timeout=1.0).status == 200
    return False


def wait_until(ready: Callable[[], bool], process: Child, deadline_s: float, what: str) -> None:
    """Poll `ready` until it holds; BenchError if `process` exits or the deadline passes."""
    started = time.monotonic()
    while not ready():
        process.check()
        if time.monotonic() - started > deadline_s:
            raise BenchError(f"waited {deadline_s:.0f} s for {what}:\n{tail(process.log)}")
        time.sleep(0.05)
