"""The telemetry ingest against a real Mosquitto and a real database (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.db.engine import open_session
from control_plane.db.models import Device, DeviceEvent, PresenceChange, TelemetrySample
from control_plane.device_messages import backend_class
from control_plane.errors import DatabaseError
from control_plane.ingest import IngestService, IngestSettings
from control_plane.ingest_store import BatchOutcome, DeviceMessage, IngestStore
from shared.histogram import LATENCY_BUCKETS
from shared.mqtt.broker import MosquittoBroker
from shared.mqtt.client import Message, MqttClient, MqttSettings
from shared.mqtt.topics import device_topic
from tests.agent.polling import until
from tests.agent.telemetry.conftest import (  # noqa: F401
    FAIL_ON,
    Agents,
    agents,
    fake_model,
    infer,
    serving_settings,
)
from tests.control_plane.telemetry_builders import (
    count,
    enroll,
    envelope,
    eventually,
    histogram,
    lifecycle,
    message,
    model_entry,
    samples,
    status_online,
    telemetry,
)
from tests.shared.mqtt.conftest import mosquitto  # noqa: F401

MakeReplica = Callable[..., Awaitable[IngestService]]


@pytest.fixture
def device() -> str:
    """A device id no other test uses (the session's broker is shared)."""
    return f"dev-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def publisher(mosquitto: MosquittoBroker) -> AsyncIterator[MqttClient]:  # noqa: F811
    """A connected client that publishes as the devices do (QoS 1)."""
    client = MqttClient(MqttSettings(mosquitto.url, f"pub-{uuid.uuid4().hex[:8]}"))
    await client.start()
    await client.wait_connected(10)
    yield client
    await client.stop()


@pytest.fixture
async def replica(
    mosquitto: MosquittoBroker,  # noqa: F811
    engine: AsyncEngine,
) -> AsyncIterator[MakeReplica]:
    """Start ingest replicas on their own connections (one share group per test)."""
    group = f"test-{uuid.uuid4().hex[:8]}"
    started: list[tuple[IngestService, MqttClient]] = []

    async def make(protocol: int = 5, **options: Any) -> IngestService:
        settings = MqttSettings(
            mosquitto.url, f"cp-{uuid.uuid4().hex[:8]}", protocol=protocol, max_backoff_s=1.0
        )
        client = MqttClient(settings)
        await client.start()
        await client.wait_connected(10)
        ingest_settings = IngestSettings(
            share_group=group, protocol=protocol, batch_delay_s=0.02, **options
        )
        service = IngestService(client, IngestStore(engine), ingest_settings)
        started.append((service, client))
        await service.start()
        return service

    yield make
    for service, client in started:
        await service.stop()
        await client.stop()


async def publish(client: MqttClient, kind: str, device: str, seq: int, payload: Any) -> None:
    """Publish one envelope as `device` would."""
    await client.publish(device_topic(device, kind), envelope(kind, device, seq, payload))


def processed(*services: IngestService) -> int:
    """Messages that reached an outcome: stored, duplicate, rejected or dropped."""
    return sum(
        s.stats.stored
        + s.stats.duplicates
        + sum(s.stats.rejected.values())
        + sum(s.stats.dropped.values())
        for s in services
    )


def settled(ingest: IngestService, messages: int) -> Callable[[], bool]:
    """A condition: `messages` messages have reached an outcome."""
    return lambda: processed(ingest) >= messages


async def test_telemetry_events_and_status_are_stored(
    replica: MakeReplica, publisher: MqttClient, engine: AsyncEngine, device: str
) -> None:
    await enroll(engine, device)
    ingest = await replica()
    await publish(publisher, "status", device, 1, status_online())
    sample = model_entry("mlp", 2, requests=12, errors={"rejected": 1, "backend": 2})
    await publish(publisher, "telemetry", device, 2, telemetry(sample, model_entry("cnn", 1)))
    await publish(publisher, "events", device, 3, lifecycle("mlp", 2, "probation"))
    command = {"kind": "command", "command": "rollback", "nonce": "n", "ok": True, "outcome": "x"}
    await publish(publisher, "events", device, 4, command)
    await until(lambda: processed(ingest) >= 4, 10)

    assert (ingest.stats.received, ingest.stats.stored, ingest.stats.duplicates) == (4, 4, 0)
    rows = {s.model: s for s in await samples(engine, device)}
    assert sorted(rows) == ["cnn", "mlp"]
    mlp = rows["mlp"]
    assert (mlp.seq, mlp.version, mlp.requests, mlp.errors) == (2, 2, 12, 3)
    assert (mlp.backend, mlp.interval_s, mlp.throughput_rps) == ("onnxruntime/CPU", 10.0, 1.2)
    assert mlp.latency_counts == histogram({5: 12})
    async with open_session(engine) as session:
        events = list(await session.scalars(select(DeviceEvent).order_by(DeviceEvent.seq)))
        row = await session.get(Device, device)
        assert row is not None
        presence = list(await session.scalars(select(PresenceChange)))
    assert [(e.kind, e.model, e.version, e.name) for e in events] == [
        ("lifecycle", "mlp", 2, "probation"),
        ("command", None, None, "rollback:ok"),
    ]
    assert events[1].payload == command
    assert (row.online, row.agent_version, row.backend_class) == (True, "0.1.0", "x86-cpu")
    assert row.models[0]["model"] == "mlp"
    assert row.hardware is not None
    assert row.last_seen_at is not None
    assert [(p.device_id, p.online) for p in presence] == [(device, True)]


async def test_a_redelivered_message_is_stored_once(
    replica: MakeReplica, publisher: MqttClient, engine: AsyncEngine, device: str
) -> None:
    await enroll(engine, device)
    ingest = await replica()
    report = envelope("telemetry", device, 7, telemetry(model_entry()))
    event = envelope("events", device, 8, lifecycle("mlp", 1, "active"))
    for data in (report, event, report, event):
        await publisher.publish(
            device_topic(device, "telemetry" if data is report else "events"), data
        )
    await until(lambda: processed(ingest) >= 4, 10)
    # And once more, in a batch of its own, after the first copies were committed.
    await publisher.publish(device_topic(device, "telemetry"), report)
    await until(lambda: processed(ingest) >= 5, 10)

    assert (ingest.stats.stored, ingest.stats.duplicates) == (2, 3)
    assert await count(engine, TelemetrySample, device_id=device) == 1
    assert await count(engine, DeviceEvent, device_id=device) == 1


async def test_unknown_and_revoked_devices_are_dropped(
    replica: MakeReplica, publisher: MqttClient, engine: AsyncEngine, device: str
) -> None:
    revoked = f"{device}-revoked"
    await enroll(engine, revoked, revoked=datetime.now(UTC))
    ingest = await replica()
    await publish(publisher, "telemetry", device, 1, telemetry(model_entry()))
    await publish(publisher, "status", revoked, 1, status_online())
    await until(lambda: processed(ingest) >= 2, 10)

    assert ingest.stats.dropped == {"unknown_device": 1, "revoked_device": 1}
    assert ingest.stats.stored == 0
    assert await count(engine, TelemetrySample) == 0
    async with open_session(engine) as session:
        row = await session.get(Device, revoked)
    assert row is not None
    assert (row.online, row.last_seen_at) == (False, None)


async def test_malformed_messages_are_rejected_and_the_next_good_one_is_stored(
    replica: MakeReplica, publisher: MqttClient, engine: AsyncEngine, device: str
) -> None:
    await enroll(engine, device)
    ingest = await replica()
    topic = device_topic(device, "telemetry")
    await publisher.publish(topic, b"{not json")
    await publisher.publish(topic, envelope("telemetry", "someone-else", 1, telemetry()))
    await publisher.publish(topic, envelope("telemetry", device, 2, {"models": "many"}))
    await publish(publisher, "events", device, 3, {"kind": "lifecycle", "model": "m"})
    await publish(publisher, "status", device, 4, {"state": "sleepy"})
    other_bounds = model_entry("cnn") | {"latency_buckets_s": [0.1, 0.2]}
    await publish(publisher, "telemetry", device, 5, telemetry(model_entry(), other_bounds))
    await publish(publisher, "telemetry", device, 6, telemetry(model_entry(requests=3)))
    await until(lambda: processed(ingest) >= 7, 10)

    assert ingest.stats.rejected == {
        "envelope.json": 1,
        "envelope.device_id": 1,
        "telemetry.interval_s": 1,
        "event.state": 1,
        "status.state": 1,
    }
    assert ingest.stats.rejected_samples == {"latency_buckets": 1}
    assert ingest.stats.stored == 2
    assert [(s.seq, s.model, s.requests) for s in await samples(engine, device)] == [
        (5, "mlp", 10),
        (6, "mlp", 3),
    ]


async def test_two_replicas_split_a_shared_subscription(
    replica: MakeReplica, publisher: MqttClient, engine: AsyncEngine, device: str
) -> None:
    devices = [f"{device}-{n}" for n in range(3)]
    await enroll(engine, *devices)
    first, second = await replica(), await replica()
    messages = 300
    # In chunks: one gather of 300 tasks costs more than the loop guard allows on a busy
    # machine (the loop runs in debug mode, which records where each task was created).
    for start in range(0, messages, 30):
        await asyncio.gather(
            *(
                publish(publisher, "telemetry", devices[n % 3], n + 1, telemetry(model_entry()))
                for n in range(start, start + 30)
            )
        )
    await until(lambda: processed(first, second) >= messages, 20)

    assert first.stats.stored + second.stats.stored == messages  # nothing lost
    assert first.stats.duplicates + second.stats.duplicates == 0  # nothing delivered twice
    assert first.stats.received > 0  # the load was split
    assert second.stats.received > 0
    assert await count(engine, TelemetrySample) == messages


async def test_presence_flips_write_presence_changes(
    replica: MakeReplica, publisher: MqttClient, engine: AsyncEngine, device: str
) -> None:
    await enroll(engine, device)
    ingest = await replica()
    steps = [status_online(), status_online(), {"state": "offline"}, status_online()]
    for step, payload in enumerate(steps, start=1):
        # Seq 0 is what the last will and the clean stop publish.
        seq = 0 if payload["state"] == "offline" else step
        await publish(publisher, "status", device, seq, payload)
        await until(settled(ingest, step), 10)  # one at a time: statuses apply in order

    async with open_session(engine) as session:
        changes = list(await session.scalars(select(PresenceChange).order_by(PresenceChange.id)))
        row = await session.get(Device, device)
    assert [c.online for c in changes] == [True, False, True]
    assert ingest.stats.presence_changes == 3
    assert row is not None
    assert (row.online, row.agent_version) == (True, "0.1.0")


async def test_mqtt_3_1_1_uses_plain_subscriptions(
    replica: MakeReplica, publisher: MqttClient, engine: AsyncEngine, device: str
) -> None:
    await enroll(engine, device)
    ingest = await replica(protocol=4)
    assert ingest.settings.filters()[0] == "edgefleet/v1/dev/+/status"
    await publish(publisher, "telemetry", device, 1, telemetry(model_entry()))
    await until(lambda: processed(ingest) >= 1, 10)
    assert await count(engine, TelemetrySample, device_id=device) == 1


async def test_a_real_agents_reports_are_stored(
    replica: MakeReplica,
    engine: AsyncEngine,
    mosquitto: MosquittoBroker,  # noqa: F811
    agents: Agents,  # noqa: F811
    tmp_path: Path,
    device: str,
) -> None:
    await enroll(engine, device)
    ingest = await replica()
    model = fake_model(tmp_path / "models")
    settings = serving_settings(tmp_path / "state", device, model, mosquitto.url)
    agent = await asyncio.to_thread(agents.start, settings)
    good = [await asyncio.to_thread(infer, agent) for _ in range(5)]
    failing = await asyncio.to_thread(infer, agent, [1.0, 2.0, 3.0, FAIL_ON])
    assert (set(good), failing) == ({200}, 500)

    async def reported() -> bool:
        return sum(s.requests for s in await samples(engine, device)) >= 6

    await eventually(reported, 20)
    rows = await samples(engine, device)
    assert {(s.model, s.version, s.backend) for s in rows} == {("m", 1, "fake/CPU")}
    assert sum(s.errors for s in rows) == 1
    assert sum(sum(s.latency_counts) for s in rows) == 5  # one observation per success
    assert ingest.stats.rejected == {}
    assert ingest.stats.rejected_samples == {}
    async with open_session(engine) as session:
        row = await session.get(Device, device)
        selections = await count(engine, DeviceEvent, device_id=device, kind="selection")
    assert row is not None
    assert (row.online, row.backend_class) == (True, backend_class(row.models, row.hardware))
    assert row.backend_class in ("x86-cpu", "arm-cpu")
    assert selections >= 1


# --- the writer, fed directly (no broker) ---------------------------------------------------


class FlakyStore:
    """An `IngestStore` whose database is down until `up` is set, or refuses some messages."""

    def __init__(self, store: IngestStore, refuse_seq: int | None = None) -> None:
        self.store = store
        self.refuse_seq = refuse_seq
        self.up = asyncio.Event()
        self.attempts = 0

    async def write(self, batch: Sequence[DeviceMessage]) -> BatchOutcome:
        self.attempts += 1
        if not self.up.is_set():
            raise DatabaseError("database error: connection refused")
        if any(m.seq == self.refuse_seq for m in batch):
            raise DatabaseError("database error: value too long")
        return await self.store.write(batch)

    async def ping(self) -> None:
        if not self.up.is_set():
            raise DatabaseError("database error: connection refused")


class NoClient(MqttClient):
    """An MQTT client that never connects: these tests call `receive` themselves."""

    def __init__(self) -> None:
        super().__init__(MqttSettings("mqtt://127.0.0.1:1", "unused"))


def writer(store: Any, **options: Any) -> IngestService:
    """An ingest whose messages the test hands to `receive` itself."""
    settings = IngestSettings(batch_delay_s=0.01, retry_base_s=0.01, **options)
    return IngestService(NoClient(), store, settings)


def telemetry_messages(device: str, seqs: range) -> list[Message]:
    """One-model telemetry messages from `device` with these sequence numbers."""
    return [message("telemetry", device, seq, telemetry(model_entry())) for seq in seqs]


async def test_a_database_outage_holds_the_batch_until_it_is_back(
    engine: AsyncEngine, device: str
) -> None:
    await enroll(engine, device)
    store = FlakyStore(IngestStore(engine))
    ingest = writer(store)
    await ingest.start()
    try:
        for received in telemetry_messages(device, range(1, 21)):
            ingest.receive(received)
        await until(lambda: store.attempts >= 3, 10)
        assert ingest.stats.stored == 0
        store.up.set()
        await until(lambda: ingest.stats.stored == 20, 10)
    finally:
        await ingest.stop()
    assert ingest.stats.write_failures >= 3
    assert ingest.stats.rejected == {}
    assert await count(engine, TelemetrySample, device_id=device) == 20


async def test_a_message_the_database_refuses_does_not_stall_the_rest(
    engine: AsyncEngine, device: str
) -> None:
    await enroll(engine, device)
    store = FlakyStore(IngestStore(engine), refuse_seq=5)
    store.up.set()
    ingest = writer(store)
    await ingest.start()
    try:
        for received in telemetry_messages(device, range(1, 11)):
            ingest.receive(received)
        await until(lambda: processed(ingest) == 10, 10)
    finally:
        await ingest.stop()
    assert ingest.stats.rejected == {"database": 1}
    assert [s.seq for s in await samples(engine, device)] == [1, 2, 3, 4, 6, 7, 8, 9, 10]


async def test_a_full_queue_drops_and_counts(engine: AsyncEngine, device: str) -> None:
    await enroll(engine, device)
    store = FlakyStore(IngestStore(engine))  # down: the writer holds its first batch
    ingest = writer(store, max_queued=5, batch_size=2)
    await ingest.start()
    try:
        ingest.receive(telemetry_messages(device, range(1, 2))[0])
        await until(lambda: store.attempts >= 1, 10)  # seq 1 is with the writer now
        for received in telemetry_messages(device, range(2, 12)):
            ingest.receive(received)
        assert ingest.stats.dropped == {"queue_full": 5}
        assert ingest.stats.queued == 5
        store.up.set()
        await until(lambda: ingest.stats.stored == 6, 10)
    finally:
        await ingest.stop()
    assert [s.seq for s in await samples(engine, device)] == [1, 2, 3, 4, 5, 6]


async def test_messages_are_written_in_batches(engine: AsyncEngine, device: str) -> None:
    await enroll(engine, device)
    ingest = writer(IngestStore(engine), batch_size=5)
    await ingest.start()
    try:
        for received in telemetry_messages(device, range(1, 13)):
            ingest.receive(received)  # no await in between: the writer sees all 12 at once
        await until(lambda: ingest.stats.stored == 12, 10)
    finally:
        await ingest.stop()
    assert ingest.stats.batches == 3


async def test_a_probation_keeps_both_versions_and_refuses_a_repeated_one(
    engine: AsyncEngine, device: str
) -> None:
    """Both versions report during a probation; the same version twice is malformed."""
    await enroll(engine, device)
    ingest = writer(IngestStore(engine))
    await ingest.start()
    try:
        busy, idle = model_entry("mlp", 2, requests=40), model_entry("mlp", 1, requests=0)
        again = model_entry("mlp", 2, requests=7)
        ingest.receive(message("telemetry", device, 1, telemetry(idle, busy, again)))
        await until(lambda: ingest.stats.stored == 1, 10)
    finally:
        await ingest.stop()
    rows = sorted((s.version, s.requests) for s in await samples(engine, device))
    assert rows == [(1, 0), (2, 40)]
    assert ingest.stats.rejected_samples == {"sample.duplicate_version": 1}


@pytest.mark.parametrize(
    ("models", "hardware", "expected"),
    [
        ([{"backend": "onnxruntime/CUDA"}], {"arch": "x86_64", "gpus": []}, "gpu"),
        ([{"backend": "onnxruntime/TensorRT"}], {"arch": "aarch64", "gpus": []}, "gpu"),
        ([{"backend": "onnxruntime/CPU"}], {"arch": "x86_64", "gpus": ["NVIDIA A2"]}, "gpu"),
        ([{"backend": "openvino/GPU"}], {"arch": "x86_64", "gpus": []}, "openvino"),
        ([{"backend": "openvino/CPU"}], None, "openvino"),
        ([{"backend": "tflite/CPU"}], {"arch": "aarch64", "gpus": []}, "arm-cpu"),
        ([{"backend": ""}], {"arch": "armv7l"}, "arm-cpu"),
        ([{"backend": "onnxruntime/CPU"}], {"arch": "x86_64", "gpus": []}, "x86-cpu"),
        ([], None, "unknown"),
    ],
)
def test_backend_class(
    models: list[dict[str, Any]], hardware: dict[str, Any] | None, expected: str
) -> None:
    assert backend_class(models, hardware) == expected


def test_the_agent_and_the_control_plane_share_the_bounds() -> None:
    from agent.stats import LATENCY_BUCKETS as AGENT_BUCKETS

    assert AGENT_BUCKETS is LATENCY_BUCKETS
