"""A raw HTTP/1.1 client over a socket, so fuzz tests control every byte they send.

`exchange` writes the bytes as given (no header is added or fixed), optionally half-closes the
connection (so a server waiting for a body it was promised sees the end; with `patience_s`,
only once nothing came back for that long), and reads until the server answers or closes.
`request` builds a well-formed request with `Connection: close` first. A server that neither
answers nor closes within the deadline is a hang, which `exchange` raises as `TimeoutError`.
"""

from __future__ import annotations

import contextlib
import socket
import time
from dataclasses import dataclass
from typing import Any

import orjson

DEADLINE_S = 30.0


@dataclass(frozen=True)
class Reply:
    """A parsed HTTP response: status, headers (names in lowercase) and body."""

    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def content_type(self) -> str:
        """The media type of the body, without parameters."""
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        """The body parsed as JSON."""
        return orjson.loads(self.body)


def exchange(
    port: int,
    data: bytes,
    half_close: bool = False,
    patience_s: float | None = None,
    deadline_s: float = DEADLINE_S,
) -> Reply | None:
    """Send raw bytes; return the reply, or None when the server closed without answering."""
    deadline = time.monotonic() + deadline_s
    with socket.create_connection(("127.0.0.1", port), timeout=deadline_s) as conn:
        try:
            conn.sendall(data)
            if half_close:
                _shutdown(conn)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered early and closed; read what it sent
        received = bytearray()
        while True:
            waiting = patience_s if not (half_close or received) else None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no complete answer within {deadline_s} s")
            conn.settimeout(min(remaining, waiting) if waiting else remaining)
            try:
                chunk = conn.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                break
            except TimeoutError:
                if waiting:
                    half_close = True  # the server may be waiting for bytes that never come
                    _shutdown(conn)
                    continue
                raise TimeoutError(f"no complete answer within {deadline_s} s") from None
            if not chunk:
                break
            received += chunk
            reply = parse_reply(bytes(received))
            if reply is not None:
                return reply
    return parse_reply(bytes(received), complete=True)


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the server
        conn.shutdown(socket.SHUT_WR)


def parse_reply(data: bytes, complete: bool = False) -> Reply | None:
    """Parse one response; None while it is incomplete (or, when `complete`, if none came)."""
    head, separator, rest = data.partition(b"\r\n\r\n")
    if not separator:
        if complete and data:
            raise ValueError(f"a malformed response: {data[:200]!r}")
        return None
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    if 100 <= status < 200:  # an interim answer (100 Continue): the real one follows
        return parse_reply(rest, complete)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = headers.get("content-length")
    if length is not None:
        if len(rest) < int(length):
            if complete:
                raise ValueError(f"the response ends {int(length) - len(rest)} bytes short")
            return None
        return Reply(status, headers, rest[: int(length)])
    return Reply(status, headers, rest) if complete else None


def request(
    port: int,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
) -> Reply:
    """Send a well-formed request (Content-Length from the body unless given) and read the reply."""
    fields = {"Host": "127.0.0.1", "Connection": "close"}
    if body or method == "POST":
        fields["Content-Length"] = str(len(body))
    fields.update(headers or {})
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    reply = exchange(port, head.encode() + b"\r\n" + body)
    if reply is None:
        raise ConnectionError(f"{method} {path}: the server closed without answering")
    return reply
