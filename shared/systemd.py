"""Telling systemd how a service is doing: the sd_notify protocol and a watchdog heartbeat.

A `Type=notify` service finds `NOTIFY_SOCKET` in its environment: an AF_UNIX datagram socket,
a file system path or, with a leading `@`, a name in the abstract namespace. Every message is
one datagram of newline-separated `KEY=VALUE` lines:

    READY=1       start-up is over (systemd then arms the watchdog and starts what waits on us)
    STATUS=...    the line `systemctl status` shows
    WATCHDOG=1    still alive; with `WatchdogSec=` systemd kills and restarts a service that
                  stays silent longer (it passes `WATCHDOG_USEC` and `WATCHDOG_PID`)
    STOPPING=1    shutdown has begun
    MAINPID=N     the service's main process

Without `NOTIFY_SOCKET` everything here does nothing, so one code path runs under systemd, in a
container and in a terminal. Sending never blocks the event loop: the socket is non-blocking,
and a datagram systemd cannot take at once is dropped and logged (the next ping follows soon).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

log = logging.getLogger(__name__)

NOTIFY_SOCKET_ENV = "NOTIFY_SOCKET"
WATCHDOG_USEC_ENV = "WATCHDOG_USEC"
WATCHDOG_PID_ENV = "WATCHDOG_PID"
STATUS_POLL_S = 1.0  # how often a server's status line is looked at for changes


def notify_address(value: str) -> bytes | None:
    """The socket address `NOTIFY_SOCKET` names, or None when it is not one this module speaks.

    `/run/systemd/notify` is a path; `@name` is `\\0name` in the abstract namespace. Newer
    systemd also offers `vsock:` addresses (for virtual machines), which an agent never gets.
    """
    if value.startswith("/"):
        return os.fsencode(value)
    if value.startswith("@") and len(value) > 1:
        return b"\0" + os.fsencode(value[1:])
    return None


def watchdog_interval(env: Mapping[str, str], pid: int) -> float | None:
    """Seconds between watchdog pings (half of `WatchdogSec=`), or None without a watchdog.

    `WATCHDOG_PID`, when set, names the process the watchdog is meant for: a child that
    inherited the environment must not ping on its parent's behalf.
    """
    raw = env.get(WATCHDOG_USEC_ENV, "")
    owner = env.get(WATCHDOG_PID_ENV, "")
    try:
        usec = int(raw)
        if owner and int(owner) != pid:
            return None
    except ValueError:
        return None
    if usec <= 0:
        return None
    return usec / 2 / 1_000_000


@dataclass(frozen=True, slots=True)
class SystemdSettings:
    """What systemd told this process in its environment: where to report, how often to ping."""

    notify_socket: str = ""  # empty: not started by systemd (or not as Type=notify)
    watchdog_s: float | None = None  # ping interval; None: no watchdog

    @classmethod
    def from_env(cls, env: Mapping[str, str], pid: int) -> SystemdSettings:
        """Read `NOTIFY_SOCKET`, `WATCHDOG_USEC` and `WATCHDOG_PID`."""
        return cls(env.get(NOTIFY_SOCKET_ENV, ""), watchdog_interval(env, pid))


class SystemdNotifier:
    """Sends sd_notify messages; every method is a no-op without a notify socket."""

    def __init__(self, notify_socket: str) -> None:
        self._address = notify_address(notify_socket) if notify_socket else None
        if notify_socket and self._address is None:
            log.warning("ignoring NOTIFY_SOCKET=%r: not a path or @abstract name", notify_socket)
        self._socket: socket.socket | None = None
        self._failing = False

    @property
    def enabled(self) -> bool:
        """Whether messages go anywhere."""
        return self._address is not None

    def notify(self, *assignments: str) -> bool:
        """Send `KEY=VALUE` lines as one datagram; True if systemd took it."""
        if self._address is None:
            return False
        message = "\n".join(assignments).encode()
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                self._socket.setblocking(False)
            self._socket.sendto(message, self._address)
        except OSError as error:
            # Logged when sending starts failing, not on every ping after that.
            if not self._failing:
                log.warning("cannot notify systemd (%s); will keep trying", error)
            self._failing = True
            return False
        if self._failing:
            log.info("notifying systemd again")
            self._failing = False
        return True

    def ready(self, status: str = "", main_pid: int | None = None) -> bool:
        """Start-up is over: `READY=1`, with a status line and the main PID when given."""
        return self.notify("READY=1", *_status(status), *_main_pid(main_pid))

    def status(self, text: str) -> bool:
        """Show `text` in `systemctl status`."""
        return self.notify(*_status(text))

    def watchdog(self) -> bool:
        """Still alive: `WATCHDOG=1`."""
        return self.notify("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        """Shutdown has begun: `STOPPING=1`."""
        return self.notify("STOPPING=1", *_status(status))

    def close(self) -> None:
        """Close the socket (a later message opens a new one)."""
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def __enter__(self) -> SystemdNotifier:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _status(text: str) -> tuple[str, ...]:
    # One line: a newline would start another assignment.
    return (f"STATUS={' '.join(text.splitlines())}",) if text else ()


def _main_pid(pid: int | None) -> tuple[str, ...]:
    return (f"MAINPID={pid}",) if pid is not None else ()


class ServiceHeartbeat:
    """Pings the watchdog while `healthy()` says so, and reports each new status line.

    Both loops run on the service's own event loop, so a loop that is blocked or wedged stops
    the pings and systemd restarts the service. `healthy` answers liveness, never readiness: an
    agent waiting for its first assignment is alive, and restarting it would not help.
    """

    def __init__(
        self,
        notifier: SystemdNotifier,
        interval_s: float | None,
        healthy: Callable[[], Awaitable[bool]],
        status: Callable[[], str] | None = None,
        status_poll_s: float = STATUS_POLL_S,
    ) -> None:
        self.notifier = notifier
        self.interval_s = interval_s
        self.healthy = healthy
        self.status = status
        self.status_poll_s = status_poll_s
        self.last_status: str | None = None  # the status line systemd shows now
        self._tasks: list[asyncio.Task[None]] = []
        self._was_healthy = True

    def start(self) -> None:
        """Start pinging (when there is a watchdog) and watching the status line."""
        loop = asyncio.get_running_loop()
        if self.interval_s is not None:
            self._tasks.append(loop.create_task(self._ping(self.interval_s), name="sd-watchdog"))
        if self.status is not None:
            self._tasks.append(loop.create_task(self._watch_status(), name="sd-status"))

    async def stop(self) -> None:
        """Stop both loops."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def _ping(self, interval_s: float) -> None:
        # A steady cadence, and a check bounded by half of it: pings are never further apart
        # than 1.5 intervals, three quarters of WatchdogSec, however slow a check is.
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            if await self._check(timeout_s=interval_s / 2):
                self.notifier.watchdog()
            await asyncio.sleep(max(0.0, interval_s - (loop.time() - started)))

    async def _check(self, timeout_s: float) -> bool:
        try:
            healthy = await asyncio.wait_for(self.healthy(), timeout_s)
        except TimeoutError:
            healthy = False
        except Exception:
            log.exception("the liveness check failed")
            healthy = False
        if healthy != self._was_healthy:
            if healthy:
                log.info("the liveness check passes again; pinging the systemd watchdog")
            else:
                log.warning(
                    "the liveness check fails; not pinging the systemd watchdog (systemd "
                    "restarts the service when WatchdogSec passes without a ping)"
                )
            self._was_healthy = healthy
        return healthy

    async def _watch_status(self) -> None:
        assert self.status is not None
        while True:
            line = self.status()
            if line != self.last_status and self.notifier.status(line):
                self.last_status = line
            await asyncio.sleep(self.status_poll_s)


@contextlib.asynccontextmanager
async def notifying_systemd(
    settings: SystemdSettings,
    healthy: Callable[[], Awaitable[bool]],
    status: Callable[[], str],
    main_pid: int,
) -> AsyncIterator[None]:
    """READY=1 on entry, watchdog pings and status changes meanwhile, STOPPING=1 on exit."""
    if not settings.notify_socket:
        yield
        return
    with SystemdNotifier(settings.notify_socket) as notifier:
        heartbeat = ServiceHeartbeat(notifier, settings.watchdog_s, healthy, status)
        heartbeat.last_status = status()
        notifier.ready(heartbeat.last_status, main_pid)
        heartbeat.start()
        try:
            yield
        finally:
            # STOPPING first: systemd stops enforcing the watchdog, so a slow shutdown (models
            # unloading) is bounded by TimeoutStopSec instead.
            notifier.stopping("stopping")
            await heartbeat.stop()
