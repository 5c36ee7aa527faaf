"""The ingest part of `bench.fleet`: telemetry from Mosquitto into SQLite, two ways.

*In process* is `bench.ingest`'s own measurement: the publisher, the subscriber or the
`IngestService`, and their MQTT clients share this process. *Publisher apart* sends the same
envelopes from a second Python process (`python -m bench.fleet_ingest URL MESSAGES DEVICES`,
which says `ready` once connected and publishes on `go`), as devices do: this process then only
receives, validates and writes, as a control plane does.
Each way runs its broker-only subscriber and its ingest alternately; the clock runs from the
publisher's start to the last message counted or stored.
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench import BenchError, say
from bench.fleet_report import IngestFigures, IngestRun
from bench.ingest import (
    broker_only,
    counting_subscriber,
    envelopes,
    publish_all,
    through_ingest,
)
from control_plane.db.engine import create_engine_for, default_database_url, open_session
from control_plane.db.migrate import upgrade
from control_plane.db.models import Device
from control_plane.ingest import IngestService, IngestSettings
from control_plane.ingest_store import IngestStore
from shared.mqtt.broker import MosquittoBroker
from shared.mqtt.client import MqttClient, MqttSettings

PUBLISHER_READY_S = 60.0
DONE_DEADLINE_S = 300.0

Measure = Callable[[], Coroutine[Any, Any, float]]  # one run: seconds until done


async def measure_ingest(
    messages: int, devices: int, runs: int, scratch: Path
) -> dict[str, IngestFigures]:
    """Both ways, `runs` times each, against one broker: the figures by way."""
    batch = envelopes(messages, devices)
    (scratch / "broker").mkdir()
    broker = MosquittoBroker(scratch / "broker")
    await asyncio.to_thread(broker.start)
    figures: dict[str, list[IngestRun]] = {"in process": [], "publisher apart": []}
    try:
        for index in range(runs):
            for way, runs_of_way in figures.items():
                database = scratch / f"ingest-{index}-{len(runs_of_way)}-{way.replace(' ', '-')}"
                database.mkdir()
                url = default_database_url(database)

                async def counted(way: str = way) -> float:
                    if way == "in process":
                        return await broker_only(broker, batch)
                    return await _counted_apart(broker, messages, devices)

                async def stored(way: str = way, url: str = url) -> float:
                    if way == "in process":
                        try:
                            return await through_ingest(broker, batch, url, devices)
                        except RuntimeError as error:  # not every message stored once
                            raise BenchError(str(error)) from None
                    return await _stored_apart(broker, messages, devices, url)

                run = IngestRun(*await _cpu(counted), *await _cpu(stored))
                runs_of_way.append(run)
                say(
                    f"  run {index + 1}, {way}: broker only {messages / run.broker_s:,.0f} "
                    f"msg/s, ingest -> SQLite {messages / run.ingest_s:,.0f} msg/s"
                )
    finally:
        await asyncio.to_thread(broker.stop)
    return {way: IngestFigures(messages, devices, done) for way, done in figures.items()}


async def _cpu(measure: Measure) -> tuple[float, float]:
    """(seconds, this process's CPU seconds) of one run."""
    started = time.process_time()
    seconds = await measure()
    return seconds, time.process_time() - started


async def _counted_apart(broker: MosquittoBroker, messages: int, devices: int) -> float:
    """The baseline with the publisher apart: a subscriber that only counts."""
    async with counting_subscriber(broker) as received:
        return await _publish_apart(broker, messages, devices, lambda: received() >= messages)


async def _stored_apart(broker: MosquittoBroker, messages: int, devices: int, url: str) -> float:
    """The ingest into a fresh database at `url`, with the publisher apart."""
    await upgrade(url)
    engine = create_engine_for(url)
    try:
        async with open_session(engine) as session:
            session.add_all(Device(id=f"bench-{n}", public_key="bench") for n in range(devices))
        settings = IngestSettings(share_group=f"bench-{uuid.uuid4().hex[:6]}")
        async with MqttClient(MqttSettings(broker.url, "bench-ingest")) as client:
            await client.wait_connected(10)
            ingest = IngestService(client, IngestStore(engine), settings)
            await ingest.start()

            def done() -> bool:
                return ingest.stats.stored >= messages

            try:
                seconds = await _publish_apart(broker, messages, devices, done)
            finally:
                await ingest.stop()
        if ingest.stats.stored != messages or ingest.stats.duplicates:
            raise BenchError(f"the ingest did not store every message once: {ingest.stats}")
        return seconds
    finally:
        await engine.dispose()


async def _publish_apart(
    broker: MosquittoBroker, messages: int, devices: int, done: Callable[[], bool]
) -> float:
    """Start the publisher process; seconds from `go` until `done()`."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.fleet_ingest",
        broker.url,
        str(messages),
        str(devices),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None  # both are pipes
    assert process.stdout is not None
    try:
        async with asyncio.timeout(PUBLISHER_READY_S):
            line = await process.stdout.readline()
        if line.strip() != b"ready":
            raise BenchError(f"the publisher process said {line!r} instead of ready")
        started = time.perf_counter()
        process.stdin.write(b"go\n")
        await process.stdin.drain()
        while not done():  # `done` reads counters that MQTT callbacks move: poll them
            if time.perf_counter() - started > DONE_DEADLINE_S:
                raise BenchError(f"not done {DONE_DEADLINE_S:.0f} s after the publisher began")
            await asyncio.sleep(0.005)
        return time.perf_counter() - started
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


async def _publisher(url: str, messages: int, devices: int) -> None:
    """The process apart: connect, say `ready`, publish everything on `go`."""
    batch = envelopes(messages, devices)
    async with MqttClient(MqttSettings(url, f"bench-pub-{uuid.uuid4().hex[:6]}")) as client:
        await client.wait_connected(10)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await publish_all(client, batch)


if __name__ == "__main__":
    asyncio.run(_publisher(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
