"""A small HTTP/1.1 load generator for the chaos scenarios: closed loop and open loop.

wrk measures a closed loop only (each connection waits for its answer before sending again), so
it cannot offer a rate above what the server serves; overload needs an open loop, where requests
are launched on a schedule whatever the answers do. Both loops here send one prebuilt request
over keep-alive connections of their own (asyncio streams, no HTTP library in between, so the
client costs little CPU on a machine it shares with the agent) and count every answer by status
and every failure by kind. The open loop caps the connections in flight: a request due while
all of them are busy is not sent and counted as such, so the client itself stays bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

# A well-behaved client stops reusing a keep-alive connection before the server closes it as
# idle (aiohttp's client keeps them 15 s; the agent's idle_timeout_s is 60 s, 2 s in --quick):
# reusing one the server is closing at that moment loses the request to the race.
REUSE_IDLE_S = 1.0
ANSWER_TIMEOUT_S = 30.0  # one request's answer; past it the request counts as "timeout"
DRAIN_S = 30.0  # how long an open loop waits for the answers still due after its last send


class ReplyError(Exception):
    """A request got no complete answer; `kind` says how (connect, reset, closed, timeout)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


@dataclass
class Tally:
    """What the client saw: answers by status, failures by kind, latencies of the 200s."""

    started: float  # loop time of the first send
    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    retry_after: int = 0  # 503 answers that carried a Retry-After header
    not_sent: int = 0  # open loop: due while every allowed connection was busy
    ok_at_s: array[float] = field(default_factory=lambda: array("d"))  # since `started`
    ok_ms: array[float] = field(default_factory=lambda: array("d"))

    @property
    def answered(self) -> int:
        """Requests that got a complete HTTP answer, whatever its status."""
        return sum(self.statuses.values())

    @property
    def sent(self) -> int:
        """Requests written to a connection (answered or failed)."""
        return self.answered + sum(self.failures.values())

    def count(self, status: int, retry_after: bool, at_s: float, latency_ms: float) -> None:
        """Record one answer."""
        self.statuses[status] += 1
        if status == 503 and retry_after:
            self.retry_after += 1
        if status == 200:
            self.ok_at_s.append(at_s)
            self.ok_ms.append(latency_ms)


class Connection:
    """One keep-alive HTTP/1.1 connection to 127.0.0.1 that sends a prebuilt request."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.usable = True
        self.idle_since = 0.0  # loop time of the last answer

    @classmethod
    async def open(cls, port: int) -> Connection:
        """Connect to 127.0.0.1:`port`."""
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            raise ReplyError("connect") from None
        return cls(reader, writer)

    async def exchange(self, request: bytes) -> tuple[int, bool]:
        """Send `request` and read the whole answer: (status, whether Retry-After was set)."""
        try:
            self._writer.write(request)
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                head = await self._reader.readuntil(b"\r\n\r\n")
                status, length, retry_after, close = parse_head(head)
                await self._reader.readexactly(length)
        except TimeoutError:
            self.usable = False
            raise ReplyError("timeout") from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            self.usable = False
            raise ReplyError("closed") from None
        except OSError:
            self.usable = False
            raise ReplyError("reset") from None
        self.usable = not close
        self.idle_since = asyncio.get_running_loop().time()
        return status, retry_after

    def reusable(self, now: float) -> bool:
        """Whether the connection is open and has not been idle for `REUSE_IDLE_S`."""
        return self.usable and not self._reader.at_eof() and now - self.idle_since < REUSE_IDLE_S

    def close(self) -> None:
        """Close the socket."""
        self.usable = False
        with contextlib.suppress(OSError, RuntimeError):
            self._writer.close()


def parse_head(head: bytes) -> tuple[int, int, bool, bool]:
    """Status, Content-Length, Retry-After present, Connection: close, from an answer's head."""
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length, retry_after, close = 0, False, False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "retry-after":
            retry_after = True
        elif name == "connection":
            close = value.strip().lower() == "close"
    return status, length, retry_after, close


async def one_request(
    pool: list[Connection], port: int, request: bytes, tally: Tally
) -> Connection | None:
    """Send one request on an idle connection of `pool` (or a new one) and count the answer.

    Returns the connection when it can be reused (the caller puts it back), else None.
    """
    loop = asyncio.get_running_loop()
    sent = loop.time()
    connection: Connection | None = None
    while pool and connection is None:
        connection = pool.pop()
        if not connection.reusable(sent):
            connection.close()
            connection = None
    try:
        if connection is None:
            connection = await Connection.open(port)
        status, retry_after = await connection.exchange(request)
    except ReplyError as error:
        tally.failures[error.kind] += 1
        if connection is not None:
            connection.close()
        return None
    except asyncio.CancelledError:
        if connection is not None:
            connection.close()
        raise
    done = loop.time()
    tally.count(status, retry_after, done - tally.started, (done - sent) * 1e3)
    if connection.usable:
        return connection
    connection.close()
    return None


async def closed_loop(port: int, request: bytes, clients: int, duration_s: float) -> Tally:
    """`clients` connections, each sending its next request as soon as the last is answered."""
    loop = asyncio.get_running_loop()
    tally = Tally(started=loop.time())
    deadline = tally.started + duration_s

    async def client() -> None:
        own: list[Connection] = []
        while loop.time() < deadline:
            kept = await one_request(own, port, request, tally)
            if kept is not None:
                own.append(kept)
            else:
                await asyncio.sleep(0.01)  # back off after a failure instead of spinning
        for connection in own:
            connection.close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return tally


async def open_loop(
    port: int,
    request: bytes,
    rate: Callable[[float], float] | float,
    duration_s: float,
    max_in_flight: int,
    tally: Tally | None = None,
) -> Tally:
    """Launch requests at `rate` per second (a constant, or a function of the seconds elapsed).

    A request due while `max_in_flight` are unanswered is not sent (`Tally.not_sent`). After the
    last send the loop waits up to `DRAIN_S` for the answers still due; the rest count as
    "unanswered". Pass `tally` to watch the counts while the loop runs.
    """
    loop = asyncio.get_running_loop()
    if tally is None:
        tally = Tally(started=loop.time())
    tally.started = loop.time()
    idle: list[Connection] = []
    in_flight: set[asyncio.Task[None]] = set()
    per_s = rate if callable(rate) else (lambda _: float(rate))

    async def launch() -> None:
        kept = await one_request(idle, port, request, tally)
        if kept is not None:
            idle.append(kept)

    due = 0.0  # requests owed so far: the integral of the rate
    last = tally.started
    try:
        while (now := loop.time()) < tally.started + duration_s:
            due += per_s(now - tally.started) * (now - last)
            last = now
            while due >= 1.0:
                due -= 1.0
                if len(in_flight) >= max_in_flight:
                    tally.not_sent += 1
                    continue
                task = loop.create_task(launch())
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            await asyncio.sleep(0.001)
        if in_flight:
            _, pending = await asyncio.wait(set(in_flight), timeout=DRAIN_S)
            if pending:
                tally.failures["unanswered"] += len(pending)
    finally:
        for task in in_flight:
            task.cancel()
        await asyncio.gather(*in_flight, return_exceptions=True)
        for connection in idle:
            connection.close()
    return tally


def percentile(values: array[float] | list[float], share: float) -> float:
    """The `share` quantile (0..1) by nearest rank; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]
