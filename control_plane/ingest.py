"""The telemetry ingest: device status, telemetry and events from MQTT into the database.

    broker --($share/<group>/edgefleet/v1/dev/+/<kind>, QoS 1)--> receive() --> bounded queue
        --> one writer task --> batches of up to `batch_size` messages or `batch_delay_s`
        --> one transaction each (`control_plane.ingest_store`)

Replicas of the control plane subscribe in one MQTT 5 shared-subscription group, so the broker
hands each message to one of them (plain filters with MQTT 3.1.1, where every replica gets
everything and the unique keys keep the rows single). `receive` runs on the event loop for
each message and only validates: the envelope against its topic, then the payload's shape
(`control_plane.device_messages`); what is malformed is counted by reason and logged at most
once a minute per reason, never raised. Valid messages wait in a bounded queue; when it is
full, new ones are dropped and counted.

The writer never loses a batch to a database outage: it retries the same batch with jittered,
capped exponential backoff (the queue fills meanwhile, up to its bound). When a batch fails
while the database answers, one of its messages is refused by the database itself: the batch
is then written one message at a time and the refused message is counted as rejected
("database"), so one bad message cannot stall the ingest. Messages still queued when the
service stops (after up to `STOP_DRAIN_S` of draining) are lost, as are those in memory when
the process dies: the broker had them acknowledged on receipt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from control_plane.device_messages import (
    MalformedPayload,
    envelope_time,
    parse_event,
    parse_status,
    parse_telemetry,
)
from control_plane.errors import DatabaseError
from control_plane.ingest_store import (
    REVOKED_DEVICE,
    UNKNOWN_DEVICE,
    BatchOutcome,
    DeviceMessage,
)
from control_plane.settings import ControlPlaneSettings, InvalidSettings
from shared.mqtt.client import Message, MqttClient
from shared.mqtt.envelope import check_topic, decode
from shared.mqtt.errors import EnvelopeError, NotConnected, TopicError
from shared.mqtt.topics import check_id, fleet_filter

log = logging.getLogger(__name__)

KINDS = ("status", "telemetry", "events")
QUEUE_FULL = "queue_full"
WRITE_ERROR = "write_error"
REFUSED_BY_DATABASE = "database"
COMPLAINT_INTERVAL_S = 60.0  # at most one warning per reason this often
STOP_DRAIN_S = 5.0
# What `filters()` subscribes to, as one pattern whose group is the kind: this runs for every
# message, and is five times cheaper than `matches` against each filter. The filters hold
# only `+` wildcards, and `+` matches one level, empty or not.
_TOPIC = re.compile(
    re.escape(fleet_filter(KINDS[0]).rpartition("/")[0]).replace(re.escape("+"), "[^/]*")
    + f"/({'|'.join(map(re.escape, KINDS))})"
)
_DROPPED_WHY = {
    UNKNOWN_DEVICE: "their device is not enrolled",
    REVOKED_DEVICE: "their device is revoked",
}


class BatchWriter(Protocol):
    """Where batches go: `control_plane.ingest_store.IngestStore`, or a test's fake."""

    async def write(self, batch: Sequence[DeviceMessage]) -> BatchOutcome:
        """Store a batch in one transaction, or raise `DatabaseError` and store none of it."""
        ...

    async def ping(self) -> None:
        """Raise `DatabaseError` unless the database answers."""
        ...


@dataclass(frozen=True)
class IngestSettings:
    """How the ingest subscribes, batches and retries."""

    share_group: str = "edgefleet-cp"
    protocol: int = 5
    batch_size: int = 500
    batch_delay_s: float = 0.2
    max_queued: int = 20_000  # messages; at 2-5 KB a telemetry message, under 100 MB
    retry_base_s: float = 0.5
    retry_max_s: float = 30.0

    def __post_init__(self) -> None:
        try:
            check_id(self.share_group, "mqtt_share_group")
        except TopicError as error:
            raise InvalidSettings(str(error)) from None
        if self.batch_size < 1 or self.max_queued < 1:
            raise InvalidSettings("ingest_batch_size and the queue bound must be at least 1")
        if self.batch_delay_s < 0:
            raise InvalidSettings("ingest_batch_delay_s must not be negative")

    @classmethod
    def of(cls, settings: ControlPlaneSettings) -> IngestSettings:
        """The ingest's part of the control plane's settings."""
        return cls(
            share_group=settings.mqtt_share_group,
            protocol=settings.mqtt_protocol,
            batch_size=settings.ingest_batch_size,
            batch_delay_s=settings.ingest_batch_delay_s,
        )

    def filters(self) -> list[str]:
        """The subscriptions: shared ones over MQTT 5, plain ones over 3.1.1."""
        plain = [fleet_filter(kind) for kind in KINDS]
        if self.protocol != 5:
            return plain
        return [f"$share/{self.share_group}/{topic_filter}" for topic_filter in plain]


@dataclass
class IngestStats:
    """What the ingest did with the messages it received, since it started."""

    received: int = 0  # on the ingest's topics, valid or not
    stored: int = 0  # written (a status: applied)
    duplicates: int = 0  # already stored: a QoS 1 redelivery
    rejected: Counter[str] = field(default_factory=Counter)  # malformed, by reason
    rejected_samples: Counter[str] = field(default_factory=Counter)  # entries left out
    dropped: Counter[str] = field(default_factory=Counter)  # unknown device, queue full...
    presence_changes: int = 0
    batches: int = 0  # transactions committed
    write_failures: int = 0  # transactions the database failed
    queued: int = 0  # waiting for the writer now

    def as_json(self) -> dict[str, Any]:
        """The counters as the API shows them."""
        return {
            "received": self.received,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "rejected_samples": dict(sorted(self.rejected_samples.items())),
            "dropped": sum(self.dropped.values()),
            "dropped_by_reason": dict(sorted(self.dropped.items())),
            "presence_changes": self.presence_changes,
            "batches": self.batches,
            "write_failures": self.write_failures,
            "queued": self.queued,
        }


class _Complaints:
    """Warnings about bad input, at most one per reason per `COMPLAINT_INTERVAL_S`."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._quiet: Counter[str] = Counter()

    def note(self, reason: str, text: str) -> None:
        now = time.monotonic()
        last = self._last.get(reason)
        if last is not None and now - last < COMPLAINT_INTERVAL_S:
            self._quiet[reason] += 1
            log.debug("%s (%s)", text, reason)
            return
        self._last[reason] = now
        quiet = self._quiet.pop(reason, 0)
        more = f" ({quiet} more since the last warning)" if quiet else ""
        log.warning("%s (%s)%s", text, reason, more)


def utcnow() -> datetime:
    """The control plane's clock."""
    return datetime.now(UTC)


class IngestService:
    """Receives device messages from one MQTT client and writes them through one writer task."""

    def __init__(
        self,
        client: MqttClient,
        store: BatchWriter,
        settings: IngestSettings,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.client = client
        self.store = store
        self.settings = settings
        self.clock = clock
        self.stats = IngestStats()
        self._filters = settings.filters()
        self._queue: asyncio.Queue[DeviceMessage] = asyncio.Queue(settings.max_queued)
        self._full = asyncio.Event()  # set by `receive`: the next batch can be written now
        self._complaints = _Complaints()
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Start the writer and subscribe; the client (re)subscribes on every connection."""
        self._writer = asyncio.create_task(self._write_forever(), name="edgefleet-ingest")
        self.client.on_message.append(self.receive)
        for topic_filter in self._filters:
            try:
                await self.client.subscribe(topic_filter, qos=1)
            except (NotConnected, TimeoutError) as error:
                # Remembered by the client and sent again when the session (re)starts.
                log.warning("subscribing to %s: %s; retried on reconnection", topic_filter, error)
        log.info("ingesting device messages from %s", ", ".join(self._filters))

    async def stop(self, drain_s: float = STOP_DRAIN_S) -> None:
        """Stop receiving, write what is queued (for up to `drain_s`), stop the writer."""
        with contextlib.suppress(ValueError):
            self.client.on_message.remove(self.receive)
        if self._writer is None:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(drain_s):
                await self._queue.join()
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        self._writer = None
        if self._queue.qsize():
            log.warning("ingest stopped with %d messages unwritten", self._queue.qsize())

    def receive(self, message: Message) -> None:
        """Validate one message and queue it for the writer (an MQTT `on_message` hook)."""
        ours = _TOPIC.fullmatch(message.topic)
        if ours is None:
            return  # another subscription of the shared client
        self.stats.received += 1
        try:
            envelope = decode(message.payload)
            check_topic(envelope, message.topic)
        except EnvelopeError as error:
            self._reject(f"envelope.{error.field}", f"on {message.topic}", str(error))
            return
        kind = ours.group(1)
        try:
            sent = envelope_time(envelope)
            if kind == "telemetry":
                body: Any = parse_telemetry(envelope.payload)
                for reason in body.rejected:
                    self.stats.rejected_samples[reason] += 1
                    self._complaints.note(reason, f"left out a sample from {message.topic}")
            elif kind == "events":
                body = parse_event(envelope.payload, envelope)
            else:
                body = parse_status(envelope.payload)
        except MalformedPayload as error:
            self._reject(error.reason, f"on {message.topic}", str(error))
            return
        received = DeviceMessage(envelope.device_id, envelope.seq, sent, self.clock(), body)
        try:
            self._queue.put_nowait(received)
        except asyncio.QueueFull:
            self.stats.dropped[QUEUE_FULL] += 1
            self._complaints.note(
                QUEUE_FULL, f"dropped a message on {message.topic}: the ingest queue is full"
            )
        self.stats.queued = self._queue.qsize()
        if self.stats.queued >= self.settings.batch_size - 1:
            self._full.set()

    def _reject(self, reason: str, where: str, detail: str) -> None:
        self.stats.rejected[reason] += 1
        self._complaints.note(reason, f"rejected a message {where}: {detail}")

    async def _write_forever(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._write(batch)
            except Exception:
                # A bug, not the database: keep ingesting rather than die silently.
                log.exception("the ingest could not write a batch of %d messages", len(batch))
                self.stats.dropped[WRITE_ERROR] += len(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()
                self.stats.queued = self._queue.qsize()

    async def _next_batch(self) -> list[DeviceMessage]:
        """Wait for a message, then gather more until the batch is full or its time is up."""
        batch = [await self._queue.get()]
        size = self.settings.batch_size
        if self._queue.qsize() < size - 1 and self.settings.batch_delay_s > 0:
            # Sleep until `receive` says the batch is full rather than waking (and arming a
            # timeout) for each message, which cost the event loop about 6 µs per message.
            self._full.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.batch_delay_s):
                    await self._full.wait()
        while len(batch) < size and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch

    async def _write(self, batch: list[DeviceMessage]) -> None:
        """Write a batch, retrying through outages; isolate a message the database refuses."""
        pending = batch
        failures = 0
        singly = False  # a message of this batch is refused: write one at a time
        while pending:
            chunk = pending[:1] if singly else pending
            try:
                outcome = await self.store.write(chunk)
            except DatabaseError as error:
                self.stats.write_failures += 1
                if await self._database_answers():
                    if len(chunk) == 1:
                        pending = pending[1:]
                        where = f"from {chunk[0].device_id}, seq {chunk[0].seq}"
                        self._reject(REFUSED_BY_DATABASE, where, str(error))
                    singly = True
                    continue
                if failures == 0:
                    log.warning(
                        "the database is unavailable; holding %d messages and retrying: %s",
                        len(pending),
                        error,
                    )
                await asyncio.sleep(self._backoff(failures))
                failures += 1
                continue
            if failures:
                log.info("the database is back; wrote the messages held for %d tries", failures)
                failures = 0
            self._count(outcome)
            pending = pending[len(chunk) :]

    async def _database_answers(self) -> bool:
        try:
            await self.store.ping()
        except DatabaseError:
            return False
        return True

    def _backoff(self, failures: int) -> float:
        delay = min(
            self.settings.retry_max_s, self.settings.retry_base_s * 2.0 ** min(failures, 16)
        )
        return delay * random.uniform(0.5, 1.0)

    def _count(self, outcome: BatchOutcome) -> None:
        stats = self.stats
        stats.batches += 1
        stats.stored += outcome.stored
        stats.duplicates += outcome.duplicates
        stats.presence_changes += outcome.presence_changes
        stats.dropped.update(outcome.dropped)
        for reason, count in outcome.dropped.items():
            self._complaints.note(reason, f"dropped {count} messages: {_DROPPED_WHY[reason]}")
