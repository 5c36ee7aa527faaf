"""The capacity of a running agent: requests per second at saturation, measured closed-loop.

Overload offers a multiple of this rate and soak a fraction of it, so both measure it on the
agent they are about to load, in the same run. `CLIENTS` connections each send their next
request as soon as the last is answered: twice the agent's default `--max-batch-size`, so one
full batch runs while the next one queues, which is what saturation means for a batching
server. A discarded warm-up comes first (first batches, connection set-up, allocator growth).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from bench import BenchError
from bench.chaos.http_load import closed_loop, percentile

CLIENTS = 64  # 2 x the default max_batch_size of 32
WARMUP_S = 1.0
MEASURE_S = 4.0
QUICK_MEASURE_S = 3.0


@dataclass(frozen=True)
class Capacity:
    """What the agent served at saturation."""

    rate: float  # 200 answers per second
    p50_ms: float
    p99_ms: float
    clients: int
    duration_s: float
    errors: int  # answers other than 200, and requests without an answer

    def describe(self) -> str:
        """A line for a figure: rate, latency, how it was measured."""
        return (
            f"{self.rate:,.0f} req/s, p99 {self.p99_ms:,.0f} ms "
            f"({self.clients} clients closed-loop, {self.duration_s:g} s)"
        )


async def measure(port: int, request: bytes, duration_s: float = MEASURE_S) -> Capacity:
    """Saturate the agent with `CLIENTS` closed-loop connections and read its rate."""
    await closed_loop(port, request, CLIENTS, WARMUP_S)
    tally = await closed_loop(port, request, CLIENTS, duration_s)
    ok = tally.statuses[200]
    errors = tally.sent - ok
    if ok == 0:
        raise BenchError(
            f"capacity: no request succeeded ({dict(tally.statuses)}, {dict(tally.failures)})"
        )
    return Capacity(
        rate=ok / duration_s,
        p50_ms=percentile(tally.ok_ms, 0.50),
        p99_ms=percentile(tally.ok_ms, 0.99),
        clients=CLIENTS,
        duration_s=duration_s,
        errors=errors,
    )


def measure_capacity(port: int, request: bytes, quick: bool = False) -> Capacity:
    """`measure` from synchronous code: a short measurement in quick mode."""
    return asyncio.run(measure(port, request, QUICK_MEASURE_S if quick else MEASURE_S))
