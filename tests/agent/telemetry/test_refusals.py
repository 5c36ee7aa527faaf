"""A message the broker keeps refusing is dropped and counted instead of blocking the outbox."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

from agent.repository import ModelRepository
from agent.telemetry.outbox import EVENT, Outbox
from agent.telemetry.reporter import REFUSALS_BEFORE_DROP, ReporterSettings, TelemetryReporter
from shared.mqtt.client import Message, MqttClient
from shared.mqtt.envelope import SCHEMA_EVENT
from shared.mqtt.errors import PublishFailed


class RefusingClient:
    """Stands in for `MqttClient`: connected, acknowledges everything but one payload."""

    connected = True

    def __init__(self, refused: bytes) -> None:
        self.refused = refused
        self.published: list[bytes] = []
        self.on_connect: list[Callable[[], None]] = []
        self.on_message: list[Callable[[Message], None]] = []

    async def publish(self, topic: str, payload: bytes, **options: Any) -> None:
        if self.refused in payload:
            raise PublishFailed(f"cannot publish on {topic!r}: Not authorized")
        self.published.append(payload)


async def test_refused_message_is_dropped_after_retries(tmp_path: Path) -> None:
    client = RefusingClient(b"forbidden")
    with ThreadPoolExecutor(1) as executor:
        outbox = Outbox(tmp_path / "outbox.sqlite3")
        reporter = TelemetryReporter(
            settings=ReporterSettings("edge-1"),
            client=cast(MqttClient, client),
            outbox=outbox,
            repository=cast(ModelRepository, None),
            hardware=lambda: None,
            state_dir=tmp_path,
            executor=executor,
        )
        await reporter.queue(EVENT, "events", SCHEMA_EVENT, {"kind": "forbidden"})
        await reporter.queue(EVENT, "events", SCHEMA_EVENT, {"kind": "fine"})
        for attempt in range(1, REFUSALS_BEFORE_DROP + 1):
            await reporter._publish_next()
            queued = outbox.stats().queued
            assert queued == (1 if attempt < REFUSALS_BEFORE_DROP else 0)
        assert outbox.stats().dropped["refused"] == 1
        assert len(client.published) == 1, "the message behind it went out at the first try"
        assert b"fine" in client.published[0]
        outbox.close()
