"""Ingest throughput: telemetry messages per second from Mosquitto into the database.

    python -m bench.ingest [--messages 20000] [--devices 200] [--postgres-url URL]

One publisher sends the same telemetry envelopes (one model each, QoS 1) three ways, and the
table reports messages per second from the first publish to the last message handled:
`broker only` (a subscriber that just counts them: the ceiling set by Mosquitto, paho and one
publisher), then through the ingest into SQLite (and PostgreSQL when a URL of an empty database
is given), each with its ratio to the broker-only figure measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from control_plane.db.engine import create_engine_for, default_database_url, open_session
from control_plane.db.migrate import upgrade
from control_plane.db.models import Device
from control_plane.ingest import IngestService, IngestSettings
from control_plane.ingest_store import IngestStore
from shared.histogram import LATENCY_BUCKETS, LATENCY_COUNTS_LENGTH
from shared.mqtt.broker import MosquittoBroker
from shared.mqtt.client import Message, MqttClient, MqttSettings
from shared.mqtt.envelope import SCHEMA_TELEMETRY, Envelope, encode
from shared.mqtt.topics import device_topic, fleet_filter

WINDOW = 200  # publishes in flight at once


def payload(seq: int) -> dict[str, object]:
    """A telemetry payload shaped like an agent's, for one model."""
    counts = [0] * LATENCY_COUNTS_LENGTH
    counts[seq % 20] = 100
    entry = {
        "model": "mlp",
        "version": 1,
        "backend": "onnxruntime/CPU",
        "state": "READY",
        "requests": 100,
        "success": 100,
        "errors": {"rejected": 0, "canceled": 0, "backend": 0, "invalid": 0, "other": 0},
        "latency_buckets_s": list(LATENCY_BUCKETS),
        "latency_counts": counts,
        "throughput_rps": 10.0,
    }
    return {"interval_s": 10.0, "models": [entry], "host": {}, "outbox": None}


def envelopes(messages: int, devices: int) -> list[tuple[str, bytes]]:
    """(topic, body) of `messages` telemetry messages spread over `devices` devices."""
    out = []
    for n in range(messages):
        device = f"bench-{n % devices}"
        envelope = Envelope(SCHEMA_TELEMETRY, device, n + 1, time.time(), payload(n))
        out.append((device_topic(device, "telemetry"), encode(envelope)))
    return out


async def publish_all(client: MqttClient, batch: list[tuple[str, bytes]]) -> None:
    """Publish every message at QoS 1, `WINDOW` at a time."""
    for start in range(0, len(batch), WINDOW):
        window = batch[start : start + WINDOW]
        await asyncio.gather(*(client.publish(topic, body) for topic, body in window))


async def timed(
    broker: MosquittoBroker, batch: list[tuple[str, bytes]], done: Callable[[], bool]
) -> float:
    """Publish `batch` from a new client; seconds from the first publish until `done()`."""
    async with MqttClient(MqttSettings(broker.url, f"bench-pub-{uuid.uuid4().hex[:6]}")) as pub:
        await pub.wait_connected(10)
        started = time.perf_counter()
        await publish_all(pub, batch)
        while True:  # `done` reads counters that the client's callbacks move: poll them
            if done():
                return time.perf_counter() - started
            await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def counting_subscriber(broker: MosquittoBroker) -> AsyncIterator[Callable[[], int]]:
    """A subscriber to every device's telemetry that only counts; yields how many so far."""
    received = 0

    def count(message: Message) -> None:
        nonlocal received
        received += 1

    group = f"$share/bench-{uuid.uuid4().hex[:6]}/{fleet_filter('telemetry')}"
    async with MqttClient(MqttSettings(broker.url, "bench-counter")) as client:
        await client.wait_connected(10)
        await client.subscribe(group)
        client.on_message.append(count)
        yield lambda: received


async def broker_only(broker: MosquittoBroker, batch: list[tuple[str, bytes]]) -> float:
    """The baseline: seconds until a subscriber that only counts has every message."""
    async with counting_subscriber(broker) as received:
        return await timed(broker, batch, lambda: received() >= len(batch))


async def through_ingest(
    broker: MosquittoBroker, batch: list[tuple[str, bytes]], url: str, devices: int
) -> float:
    """Seconds until the ingest has stored every message in the (empty) database at `url`."""
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
            try:
                seconds = await timed(broker, batch, lambda: ingest.stats.stored >= len(batch))
            finally:
                await ingest.stop()
        if ingest.stats.stored != len(batch) or ingest.stats.duplicates:
            raise RuntimeError(f"the ingest did not store every message once: {ingest.stats}")
        return seconds
    finally:
        await engine.dispose()


async def main(messages: int, devices: int, postgres_url: str | None) -> None:
    """Run the three measurements against one broker and print the table."""
    batch = envelopes(messages, devices)
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-ingest-") as scratch:
        root = Path(scratch)
        broker = MosquittoBroker(root / "broker")
        (root / "broker").mkdir()
        await asyncio.to_thread(broker.start)
        try:
            rows = [("broker only", await broker_only(broker, batch))]
            sqlite = default_database_url(root)
            rows.append(("ingest -> SQLite", await through_ingest(broker, batch, sqlite, devices)))
            if postgres_url:
                seconds = await through_ingest(broker, batch, postgres_url, devices)
                rows.append(("ingest -> PostgreSQL", seconds))
        finally:
            await asyncio.to_thread(broker.stop)
    baseline = rows[0][1]
    print(f"{messages} telemetry messages from {devices} devices, batches of 500 / 0.2 s")
    print(f"{'path':<22} {'seconds':>8} {'msg/s':>9} {'vs broker':>10}")
    for name, seconds in rows:
        print(f"{name:<22} {seconds:8.2f} {messages / seconds:9.0f} {baseline / seconds:10.2f}")


def run() -> None:
    """Parse the command line and run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--postgres-url", help="an empty database, e.g. postgresql+asyncpg://...")
    args = parser.parse_args()
    asyncio.run(main(args.messages, args.devices, args.postgres_url))


if __name__ == "__main__":
    run()
