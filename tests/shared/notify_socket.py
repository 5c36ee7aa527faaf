"""A stand-in for systemd's notify socket: a real AF_UNIX datagram socket, read by tests."""

from __future__ import annotations

import asyncio
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

Message = dict[str, str]


def parse(datagram: bytes) -> Message:
    """`b"READY=1\\nSTATUS=x"` as `{"READY": "1", "STATUS": "x"}`."""
    fields: Message = {}
    for line in datagram.decode().split("\n"):
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r} in {datagram!r}"
        fields[key] = value
    return fields


class NotifyListener:
    """Binds a notify socket (a short path, or an abstract name) and reads its datagrams."""

    def __init__(self, abstract: bool = False) -> None:
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._directory: tempfile.TemporaryDirectory[str] | None = None
        if abstract:
            name = f"edgefleet-test-{os.getpid()}-{id(self)}"
            self._socket.bind("\0" + name)
            self.notify_socket = "@" + name
        else:
            # Short: socket paths are limited to 107 bytes, which pytest's tmp_path can exceed.
            self._directory = tempfile.TemporaryDirectory(prefix="sd-", dir="/tmp")
            path = Path(self._directory.name) / "notify"
            self._socket.bind(str(path))
            self.notify_socket = str(path)
        self._socket.setblocking(False)
        self.received: list[Message] = []  # everything read so far, oldest first

    def drain(self) -> list[Message]:
        """The datagrams waiting now, without waiting for more."""
        fresh: list[Message] = []
        while True:
            try:
                fresh.append(parse(self._socket.recv(65536)))
            except BlockingIOError:
                break
        self.received.extend(fresh)
        return fresh

    def wait_for(self, match: Callable[[Message], bool], timeout: float = 60.0) -> Message:
        """Block until a datagram matches (for tests that drive a subprocess)."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self.drain():
                if match(message):
                    return message
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no matching notification; received {self.received}"
            self._socket.settimeout(min(remaining, 0.5))
            try:
                message = parse(self._socket.recv(65536))
            except TimeoutError:
                continue
            finally:
                self._socket.setblocking(False)
            self.received.append(message)
            if match(message):
                return message

    async def next(self, within_s: float = 10.0) -> Message:
        """The next datagram (for tests running on an event loop)."""
        loop = asyncio.get_running_loop()
        data = await asyncio.wait_for(loop.sock_recv(self._socket, 65536), within_s)
        message = parse(data)
        self.received.append(message)
        return message

    async def next_matching(
        self, match: Callable[[Message], bool], within_s: float = 10.0
    ) -> Message:
        """The next datagram that matches, skipping others."""
        async with asyncio.timeout(within_s):
            while True:
                message = await self.next(within_s)
                if match(message):
                    return message

    def close(self) -> None:
        """Unbind (a sender then gets ENOENT or ECONNREFUSED)."""
        self._socket.close()
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def __enter__(self) -> NotifyListener:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def has(key: str, value: str | None = None) -> Callable[[Message], bool]:
    """A matcher: the datagram sets `key` (to `value`, when given)."""
    return lambda message: key in message and (value is None or message[key] == value)
