"""The demo's child processes: started so that none outlives the demo, recorded, stopped in order.

Each child runs in a session of its own, so a Ctrl-C in the terminal reaches only the demo, which
then stops the children newest first (SIGTERM, then SIGKILL after `STOP_TIMEOUT_S`). On Linux
each child also asks the kernel for SIGTERM when the demo dies (`PR_SET_PDEATHSIG`), even by
SIGKILL. The pid file in the demo directory records the demo's pid and every child's with its
start time; a demo that starts stops whatever a previous run left behind, and the start time
keeps it from touching an unrelated process that was given a recycled pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import psutil

from control_plane.errors import ControlPlaneError
from shared.atomic import write_atomic

STOP_TIMEOUT_S = 10.0
LOG_TAIL_LINES = 30
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


class DemoError(ControlPlaneError):
    """The demo cannot go on; the message says why and what to change. Permanent for this run."""


@dataclass(frozen=True, slots=True)
class Recorded:
    """A process as the pid file names it: the pid alone is not enough, pids are recycled."""

    name: str
    pid: int
    started: float  # psutil's create_time()

    def running(self) -> psutil.Process | None:
        """The process, if this exact one still runs (a zombie counts as ended)."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.started) > 0.01:
                return None
            if process.status() == psutil.STATUS_ZOMBIE:
                return None
        except psutil.Error:
            return None
        return process


def recorded_processes(pid_file: Path) -> tuple[Recorded | None, list[Recorded]]:
    """(the demo, its children) as `pid_file` records them; nothing when there is no file."""
    try:
        document = json.loads(pid_file.read_bytes())
        demo = Recorded(**document["demo"]) if document.get("demo") else None
        return demo, [Recorded(**child) for child in document["children"]]
    except FileNotFoundError:
        return None, []
    except (OSError, ValueError, KeyError, TypeError):
        return None, []  # torn or foreign: nothing in it can be trusted to be ours


def stop_stale(pid_file: Path) -> list[str]:
    """Stop the children a previous demo left (blocking); their names. Refuses a live demo."""
    demo, children = recorded_processes(pid_file)
    if demo is not None and demo.pid != os.getpid() and demo.running() is not None:
        raise DemoError(
            f"a demo is already running from {pid_file.parent} (pid {demo.pid}): stop it with "
            f"Ctrl-C in its terminal or `kill {demo.pid}`, or use another --dir"
        )
    alive = [(child, process) for child in children if (process := child.running())]
    processes = [process for _, process in alive]
    for process in processes:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, left = psutil.wait_procs(processes, timeout=STOP_TIMEOUT_S)
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(left, timeout=STOP_TIMEOUT_S)
    pid_file.unlink(missing_ok=True)
    return [child.name for child, _ in alive]


def port_in_use(host: str, port: int) -> bool:
    """Whether a server could not bind host:port now (as the servers bind: SO_REUSEADDR)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last lines of a log file, indented for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text.splitlines()[-lines:]) or "    (empty log)"


def _dying_with_parent() -> Callable[[], None] | None:
    """A `preexec_fn` asking for SIGTERM when the parent dies; None where Linux's prctl is absent.

    Everything is looked up before the fork: the child may only call what is already loaded.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent, sigterm = os.getpid(), int(signal.SIGTERM)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigterm)
        if os.getppid() != parent:  # the demo died before prctl took effect
            os._exit(1)

    return preexec


@dataclass(slots=True)
class Child:
    """One running child process and the log it writes."""

    name: str
    process: asyncio.subprocess.Process
    log: Path
    started: float

    def describe_exit(self) -> str:
        """Why it is gone, with the end of its log."""
        return (
            f"the {self.name} exited with status {self.process.returncode}; "
            f"the end of {self.log}:\n{log_tail(self.log)}"
        )


class DemoProcesses:
    """The children of one demo run, recorded in `pid_file`; spawn them from the main thread.

    (`PR_SET_PDEATHSIG` fires when the *thread* that forked the child ends, so the children are
    forked by the event loop's thread, which lives as long as the demo.)
    """

    def __init__(self, pid_file: Path, env: Mapping[str, str]) -> None:
        self.pid_file = pid_file
        self.env = dict(env)
        self.children: list[Child] = []

    async def start(self, name: str, argv: Sequence[str], log: Path) -> Child:
        """Start a long-running child that writes to `log` (the previous one kept as .1)."""
        process = await self._spawn(argv, log, keep_previous=True)
        try:
            started = psutil.Process(process.pid).create_time()
        except psutil.Error:
            started = 0.0  # it is gone already; `exited` reports it
        child = Child(name, process, log, started)
        self.children.append(child)
        await asyncio.to_thread(self._record)
        return child

    async def run(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        timeout_s: float,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Run a command to completion (bounded); `DemoError` with its log's end if it fails."""
        process = await self._spawn(argv, log, env)
        try:
            code = await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            await _terminate(process)
            raise DemoError(
                f"{name} did not finish within {timeout_s:.0f} s; the end of {log}:\n"
                f"{log_tail(log)}"
            ) from None
        except asyncio.CancelledError:  # Ctrl-C: it must not keep running
            await _terminate(process)
            raise
        if code != 0:
            raise DemoError(f"{name} failed (status {code}); the end of {log}:\n{log_tail(log)}")

    def named(self, name: str) -> Child:
        """The running child called `name`."""
        return next(child for child in self.children if child.name == name)

    def check_alive(self) -> None:
        """`DemoError` naming the first child that has exited, with the end of its log."""
        for child in self.children:
            if child.process.returncode is not None:
                raise DemoError(child.describe_exit())

    async def exited(self) -> Child:
        """Wait until any child ends; that child."""
        waits = {asyncio.ensure_future(c.process.wait()): c for c in self.children}
        try:
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        return waits[next(iter(done))]

    async def stop_all(self) -> list[str]:
        """Stop every child, newest first, and remove the pid file; the names of those stopped."""
        stopped = []
        while self.children:
            child = self.children.pop()
            if child.process.returncode is None:
                stopped.append(child.name)
            await _terminate(child.process)
        await asyncio.to_thread(lambda: self.pid_file.unlink(missing_ok=True))
        return stopped

    async def _spawn(
        self,
        argv: Sequence[str],
        log: Path,
        env: Mapping[str, str] | None = None,
        keep_previous: bool = False,
    ) -> asyncio.subprocess.Process:
        output = await asyncio.to_thread(_open_log, log, keep_previous)
        with output:  # the child has its own copy of the descriptor
            return await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=output,
                stderr=asyncio.subprocess.STDOUT,
                env={**self.env, **(env or {})},
                start_new_session=True,
                preexec_fn=_dying_with_parent(),
            )

    def _record(self) -> None:
        me = psutil.Process()
        document = {
            "demo": {"name": "demo", "pid": me.pid, "started": me.create_time()},
            "children": [
                {"name": c.name, "pid": c.process.pid, "started": c.started} for c in self.children
            ],
        }
        write_atomic(self.pid_file, json.dumps(document, indent=1).encode())


def _open_log(log: Path, keep_previous: bool) -> BinaryIO:
    """The log to append to; with `keep_previous`, the last run's is renamed to NAME.1 first."""
    log.parent.mkdir(parents=True, exist_ok=True)
    if keep_previous and log.exists():
        log.replace(log.with_name(log.name + ".1"))
    return log.open("ab")


async def _terminate(process: asyncio.subprocess.Process) -> None:
    """SIGTERM, wait up to STOP_TIMEOUT_S, then SIGKILL."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.terminate()
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
