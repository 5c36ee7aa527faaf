"""Brokers for the tests and the demo: Mosquitto as a child process, or amqtt in process.

`MosquittoBroker` writes its own configuration into a directory, listens on 127.0.0.1 only
(a free port unless one is given), and is stopped by PID. Options mirror
`deploy/mosquitto/mosquitto.conf`: password file, ACL file, TLS, persistence and the queue
bounds (`max_queued_messages` far above Mosquitto's default of 1000, past which it silently
drops QoS 1 messages for a slow subscriber; `max_queued_bytes` bounds memory instead). It also
sets `set_tcp_nodelay true`: with Nagle's algorithm on, Mosquitto holds the PUBACKs of a burst
of QoS 1 publishes until the client's delayed ACK, 40 ms per window. Started
as root, Mosquitto 2 drops privileges to the `mosquitto` user; the configuration says
`user root` then, so that it can read the files it is given in a private directory.

`EmbeddedBroker` is the zero-install default: amqtt on its own event loop in a thread of this
process, bound to 127.0.0.1. It speaks only MQTT 3.1.1 (clients need `protocol=4`), keeps no
state across a restart, and sends retained messages that match *other* clients'
subscriptions, which `MqttClient` drops and counts. Production and the tests use Mosquitto.

Both classes are synchronous (`start`, `stop`, `restart` block for up to `timeout` seconds);
async code calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from shared.mqtt.errors import BrokerError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 10.0


def find_program(name: str) -> str | None:
    """The path of a Mosquitto program (`mosquitto`, `mosquitto_passwd`), or None."""
    # Debian installs the daemon in /usr/sbin, which is not on every user's PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """The broker's TLS files; with `require_certificate` clients must present a certificate."""

    cert_file: Path
    key_file: Path
    ca_file: Path  # CA that signs client certificates (and, in the tests, the server's)
    require_certificate: bool = False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts_connections(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.2):
            return True
    except OSError:
        return False


class MosquittoBroker:
    """A Mosquitto process with a generated configuration, listening on 127.0.0.1."""

    def __init__(
        self,
        directory: Path,
        *,
        port: int | None = None,
        password_file: Path | None = None,
        acl_file: Path | None = None,
        tls: BrokerTls | None = None,
        persistence: bool = False,
        max_queued_messages: int = 100_000,
        max_queued_bytes: int = 256 * 1024 * 1024,
    ) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.password_file = password_file
        self.acl_file = acl_file
        self.tls = tls
        self.persistence = persistence
        self.max_queued_messages = max_queued_messages
        self.max_queued_bytes = max_queued_bytes
        self.config_file = directory / "mosquitto.conf"
        self.log_file = directory / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The URL clients connect to."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The process id while it runs."""
        return self._process.pid if self._process else None

    def config(self) -> str:
        """The configuration file's text."""
        lines = ["# Written by shared.mqtt.broker for one test or demo run."]
        if os.geteuid() == 0:
            lines.append(
                "user root"
            )  # read the private files below instead of dropping to mosquitto
        lines += [
            f"listener {self.port} {LOOPBACK}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            f"max_queued_messages {self.max_queued_messages}",
            f"max_queued_bytes {self.max_queued_bytes}",
            # Nagle would hold the PUBACKs of a window of QoS 1 publishes until the client's
            # delayed ACK (40 ms on Linux): 0.7k instead of 15k msg/s (bench/reporting.py).
            "set_tcp_nodelay true",
        ]
        authenticated = self.password_file is not None or (
            self.tls is not None and self.tls.require_certificate
        )
        lines.append(f"allow_anonymous {'false' if authenticated else 'true'}")
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        if self.tls is not None:
            lines += [
                f"certfile {self.tls.cert_file}",
                f"keyfile {self.tls.key_file}",
                f"cafile {self.tls.ca_file}",
            ]
            if self.tls.require_certificate:
                lines += ["require_certificate true", "use_identity_as_username true"]
        if self.persistence:
            lines += [
                "persistence true",
                f"persistence_location {self.directory}/",
                "persistence_file mosquitto.db",
            ]
        else:
            lines.append("persistence false")
        return "\n".join(lines) + "\n"

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start Mosquitto and wait until its port accepts connections."""
        if self._process is not None:
            raise BrokerError(f"mosquitto is already running (pid {self._process.pid})")
        executable = find_program("mosquitto")
        if executable is None:
            raise BrokerError(
                "mosquitto is not installed: `make test` installs it "
                "(apt-get install mosquitto mosquitto-clients)"
            )
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config_file.write_text(self.config())
        self._log = self.log_file.open("ab")
        self._process = subprocess.Popen(
            [executable, "-c", str(self.config_file)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + timeout
        while not _accepts_connections(self.port):
            try:
                # Doubles as the pause between polls, and notices a process that gave up.
                code = self._process.wait(timeout=0.02)
            except subprocess.TimeoutExpired:
                if time.monotonic() < deadline:
                    continue
                self.stop()
                raise BrokerError(
                    f"mosquitto did not listen on {self.port} within {timeout} s; "
                    f"log: {self.log_tail()}"
                ) from None
            self._close()
            raise BrokerError(f"mosquitto exited with status {code}; log: {self.log_tail()}")
        log.info("mosquitto (pid %d) listening on %s", self._process.pid, self.url)

    def stop(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stop the process by PID (SIGTERM, which saves persistence; SIGKILL after timeout)."""
        process = self._process
        if process is None:
            return
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=timeout)
        self._close()

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stop and start again on the same port; persisted messages and sessions survive."""
        self.stop(timeout)
        self.start(timeout)

    def log_tail(self, size: int = 2000) -> str:
        """The end of Mosquitto's log."""
        try:
            return self.log_file.read_bytes()[-size:].decode("utf-8", "replace")
        except OSError:
            return "(no log)"

    def _close(self) -> None:
        self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> MosquittoBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


async def _cancel_other_tasks() -> None:
    """Cancel what amqtt left running, so that closing its loop destroys no pending task."""
    current = asyncio.current_task()
    tasks = [task for task in asyncio.all_tasks() if task is not current]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await asyncio.sleep(0)  # one more turn: the transports closed above finish closing


class EmbeddedBroker:
    """amqtt in this process, on its own event loop thread, bound to 127.0.0.1 only."""

    # Its own loop, not the caller's: the broker outlives any one caller's loop (a test
    # session's fixture, the demo's startup), and its stalls never count against the app's.

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._broker: Any = None  # amqtt.broker.Broker; amqtt ships no type hints

    @property
    def url(self) -> str:
        """The URL clients connect to (with MQTT 3.1.1: `protocol=4`)."""
        return f"mqtt://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the broker's thread and loop and wait until it listens."""
        if self._thread is not None:
            raise BrokerError("the embedded broker is already running")
        # amqtt's state machine library narrates every transition at INFO.
        logging.getLogger("transitions").setLevel(logging.WARNING)
        loop = asyncio.new_event_loop()
        thread = threading.Thread(target=loop.run_forever, name="amqtt-broker", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._start(), loop).result(timeout)
        except Exception as exc:
            self.stop(timeout)
            raise BrokerError(f"the embedded broker did not start on {self.url}: {exc}") from exc
        log.info("embedded amqtt broker listening on %s", self.url)

    async def _start(self) -> None:
        # An optional extra (`pip install edgefleet[broker]`) that ships no type hints.
        from amqtt.broker import Broker  # type: ignore[import-untyped]

        class ClosingBroker(Broker):  # type: ignore[misc]
            """amqtt's broker, closing each connection when its handler ends or is cancelled."""

            # amqtt 0.12 leaves the connection of a refused CONNECT open, and a connection
            # still open when the broker's loop closes warns when it is collected.
            async def stream_connected(
                self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener_name: str
            ) -> None:
                try:
                    await super().stream_connected(reader, writer, listener_name)
                finally:
                    writer.close()

        self._broker = ClosingBroker(
            {
                # amqtt binds 0.0.0.0 unless told otherwise.
                "listeners": {"default": {"type": "tcp", "bind": f"{LOOPBACK}:{self.port}"}},
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
                },
            }
        )
        await self._broker.start()

    def stop(self, timeout: float = START_TIMEOUT_S) -> None:
        """Shut the broker down and end its thread."""
        loop, thread, broker = self._loop, self._thread, self._broker
        if loop is None or thread is None:
            return
        if broker is not None:
            try:
                asyncio.run_coroutine_threadsafe(broker.shutdown(), loop).result(timeout)
            except Exception as exc:  # amqtt's own errors; the loop is ended below anyway
                log.warning("the embedded broker did not shut down cleanly: %r", exc)
        try:
            asyncio.run_coroutine_threadsafe(_cancel_other_tasks(), loop).result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
        loop.close()
        self._loop = self._thread = self._broker = None

    def restart(self, timeout: float = START_TIMEOUT_S) -> None:
        """Stop and start again on the same port (amqtt keeps nothing across a restart)."""
        self.stop(timeout)
        self.start(timeout)

    def __enter__(self) -> EmbeddedBroker:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
