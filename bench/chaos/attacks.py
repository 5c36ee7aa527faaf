"""Hostile HTTP clients: connections that send too slowly, too much, or nothing at all.

Each attack is one raw TCP connection to 127.0.0.1 that writes an opening (a request head, maybe
part of a body), then maybe a piece every so often, and reads whatever the server answers until
the server closes the connection or the attack's deadline passes. `Ending` records how it
ended: the status the server answered, if any, when, and when (or whether) the server closed
the connection. The client always closes its socket on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

from bench.chaos.served_agent import MODEL

HOST = "Host: 127.0.0.1\r\n"
INFER = f"/v2/models/{MODEL}/infer"


@dataclass(frozen=True)
class Attack:
    """One kind of hostile connection, opened `count` times."""

    name: str
    opening: bytes  # written at once
    piece: bytes = b""  # then written every `every_s` (nothing when empty)
    every_s: float = 1.0
    count: int = 1
    answer: int | None = None  # the status the server must answer; None: it closes, silent
    limit: str = "now"  # what ends it: "idle" (idle_timeout_s), "body" (body_timeout_s), "now"
    lingers: bool = False  # the server reads on for its lingering time after answering


@dataclass(frozen=True)
class Ending:
    """How one hostile connection ended."""

    status: int | None  # the status the server answered, if it answered
    answered_s: float | None  # seconds from connecting to the status line
    closed_s: float | None  # seconds from connecting to the server's close; None: still open
    reset: bool = False  # closed by a reset rather than an orderly close
    refused: bool = False  # the connection could not even be opened


def attacks(slowloris: int, idle: int) -> list[Attack]:
    """The hostile clients of the scenario, with `slowloris` and `idle` connections."""
    post = f"POST {INFER} HTTP/1.1\r\n{HOST}Content-Type: application/json\r\n"
    chunked = f"{post}Transfer-Encoding: chunked\r\n\r\n".encode()
    live = f"GET /v2/health/live HTTP/1.1\r\n{HOST}"
    many = b"".join(b"X-%d: v\r\n" % i for i in range(10_000))
    return [
        Attack(
            "slowloris: a header byte a second",
            f"POST {INFER} HTTP/1.1\r\n{HOST}X-Slow: ".encode(),
            b"a",
            count=slowloris,
            limit="idle",
        ),
        Attack(
            "idle keep-alive after one request",
            f"{live}\r\n".encode(),
            count=idle,
            answer=200,
            limit="idle",
        ),
        Attack(
            "1 MiB header line",
            f"{live}X-Big: ".encode() + b"a" * 2**20 + b"\r\n\r\n",
            count=3,
            answer=400,
        ),
        Attack("10,000 headers", live.encode() + many + b"\r\n", count=3, answer=400),
        Attack(
            "endless chunked body, 100 MiB/s",
            chunked,
            b"100000\r\n" + b"{" * 2**20 + b"\r\n",
            every_s=0.01,
            answer=413,
            lingers=True,
        ),
        Attack(
            "endless chunked body, a chunk a second",
            chunked,
            b"1\r\n{\r\n",
            count=3,
            answer=408,
            limit="body",
            lingers=True,
        ),
        Attack(
            "Content-Length 10 GiB, a byte a second",
            f"{post}Content-Length: {10 * 2**30}\r\n\r\n".encode(),
            b"{",
            count=3,
            answer=413,
            lingers=True,
        ),
        Attack(
            "Content-Length 1 MiB, a byte a second",
            f"{post}Content-Length: {2**20}\r\n\r\n".encode(),
            b"{",
            count=3,
            answer=408,
            limit="body",
            lingers=True,
        ),
    ]


async def hold(port: int, attack: Attack, deadline: float) -> Ending:
    """Open one connection of `attack` and keep at it until the server closes it or `deadline`."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return Ending(None, None, 0.0, refused=True)
    feeder = asyncio.create_task(feed(writer, attack)) if attack.piece else None
    status: int | None = None
    answered: float | None = None
    try:
        writer.write(attack.opening)
        async with asyncio.timeout_at(deadline):
            head = b""
            while data := await reader.read(65536):
                if status is None:
                    head += data
                    if b"\r\n" in head:
                        status, answered = int(head.split(b" ", 2)[1]), loop.time() - started
        return Ending(status, answered, loop.time() - started)
    except TimeoutError:
        return Ending(status, answered, None)
    except OSError:  # a reset, often after an answer the server sent before closing
        return Ending(status, answered, loop.time() - started, reset=True)
    finally:
        if feeder is not None:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


async def feed(writer: asyncio.StreamWriter, attack: Attack) -> None:
    """Write the attack's piece every `every_s` until the connection fails."""
    with contextlib.suppress(OSError, RuntimeError):
        while True:
            await asyncio.sleep(attack.every_s)
            if writer.is_closing():
                return
            writer.write(attack.piece)
            await writer.drain()


async def launch(port: int, attack: Attack, deadline: float) -> list[Ending]:
    """Every connection of `attack` at once; their endings."""
    return list(await asyncio.gather(*(hold(port, attack, deadline) for _ in range(attack.count))))
