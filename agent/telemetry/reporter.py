"""The agent's voice on MQTT: presence, telemetry, events, and the commands it obeys.

Everything goes through the durable outbox first, then out at QoS 1; a message leaves the outbox
only when the broker acknowledged it, so a broker outage or an agent restart loses nothing
(receivers drop duplicates by sequence number). Presence is a retained `status`: the last will
says "offline" if the agent vanishes, and each (re)connect publishes "online" with what runs.
Commands arrive on the device's and its groups' `cmd` topics and run only when signed with an
assignment key of the key list, unexpired and never seen before (`shared.mqtt.commands`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.hardware import HardwareInfo
from agent.repository import ModelRepository
from agent.telemetry.outbox import EVENT, STATUS, TELEMETRY, Outbox
from agent.telemetry.snapshot import TelemetryBuilder, host_metrics, status_payload
from shared.errors import EdgeFleetError
from shared.mqtt.client import Message, MqttClient
from shared.mqtt.commands import Command, CommandVerifier
from shared.mqtt.envelope import (
    SCHEMA_EVENT,
    SCHEMA_STATUS,
    SCHEMA_TELEMETRY,
    Envelope,
    decode,
    encode,
)
from shared.mqtt.errors import EnvelopeError, MqttError, PublishFailed
from shared.mqtt.topics import device_command_filters, device_topic

log = logging.getLogger(__name__)

CommandHandler = Callable[[Command], Awaitable[str]]
PUBLISH_WINDOW = 32  # QoS 1 publishes in flight at once
REFUSALS_BEFORE_DROP = 3
REFUSED_PAUSE_S = 1.0  # between checks while the broker refuses the connection
STOP_WAIT_S = 2.0  # on stop: for queued events and commands, then to flush the outbox


@dataclass(frozen=True, slots=True)
class ReporterSettings:
    """Who the device is and how often it reports."""

    device_id: str
    groups: tuple[str, ...] = ()
    interval_s: float = 10.0


def offline_status(device_id: str) -> bytes:
    """The last-will body: a retained status saying the device is gone."""
    envelope = Envelope(SCHEMA_STATUS, device_id, 0, time.time(), {"state": "offline"})
    return encode(envelope)


class TelemetryReporter:
    """Feeds the outbox and drains it to the broker; runs the device's commands."""

    def __init__(
        self,
        *,
        settings: ReporterSettings,
        client: MqttClient,
        outbox: Outbox,
        repository: ModelRepository,
        hardware: Callable[[], HardwareInfo | None],
        state_dir: Path,
        executor: Executor,
        verifier: CommandVerifier | None = None,
        handlers: Mapping[str, CommandHandler] | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.outbox = outbox
        self.repository = repository
        self.hardware = hardware
        self.executor = executor
        self.verifier = verifier
        self.handlers = dict(handlers or {})
        self.builder = TelemetryBuilder(state_dir)
        self.malformed = 0  # command messages that were not valid envelopes
        self._queued = asyncio.Event()
        self._stopping = asyncio.Event()  # the periodic report makes its last one and ends
        self._flushing = asyncio.Event()  # all is queued: the drain ends once the outbox is empty
        # Messages enter the outbox in the order `queue` was called: its sequence numbers and
        # its drain order follow, whichever worker thread runs each insert.
        self._queue_order = asyncio.Lock()
        self._refusals: dict[int, int] = {}  # outbox message id -> refusals so far
        self._tasks: set[asyncio.Task[Any]] = set()  # queued messages and commands in flight
        self._drain_task: asyncio.Task[None] | None = None
        self._report_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Connect (in the background), subscribe to commands, start reporting."""
        self.client.on_connect.append(self.refresh_status)
        self.client.on_message.append(self._on_message)
        await self.client.start()
        for topic_filter in device_command_filters(self.settings.device_id, self.settings.groups):
            await self.client.subscribe(topic_filter)
        self._drain_task = asyncio.create_task(self._drain(), name="edgefleet-outbox-drain")
        self._report_task = asyncio.create_task(
            self._report_periodically(), name="edgefleet-telemetry"
        )

    async def stop(self) -> None:
        """Report the last partial interval, flush, say "offline", then disconnect.

        The final telemetry covers the requests since the previous report, which would
        otherwise be lost on every clean restart; it waits in the outbox if the broker is away.
        Each wait is bounded by `STOP_WAIT_S`.
        """
        self._stopping.set()
        if self._report_task is not None:
            await asyncio.gather(self._report_task, return_exceptions=True)
        await self._settle(STOP_WAIT_S)
        self._flushing.set()
        if self._drain_task is not None:
            if self.client.connected:
                self._queued.set()  # wake the drain, which returns once the outbox is empty
                await asyncio.wait({self._drain_task}, timeout=STOP_WAIT_S)
            self._drain_task.cancel()
            await asyncio.gather(self._drain_task, return_exceptions=True)
        if self.client.connected:
            with contextlib.suppress(MqttError, TimeoutError):
                await self.client.publish(
                    device_topic(self.settings.device_id, "status"),
                    offline_status(self.settings.device_id),
                    retain=True,
                    timeout=2.0,
                )
        await self.client.stop()
        await self._settle(0)  # e.g. a status queued by a reconnection meanwhile
        await self._run(self.outbox.close)

    async def _settle(self, seconds: float) -> None:
        """Let queued messages and running commands finish for `seconds`; cancel the rest."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=seconds)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    def event(self, payload: dict[str, Any]) -> None:
        """Queue an event (callable from synchronous code on the loop)."""
        self._spawn(self.queue(EVENT, "events", SCHEMA_EVENT, payload))

    def refresh_status(self) -> None:
        """Queue a fresh status soon (callable from synchronous code on the loop)."""
        self._spawn(self.report_status())

    async def report_status(self) -> None:
        """Queue a fresh retained status."""
        repository = self.repository
        serving = [repository.resolve(name, None) for name in repository.names()]
        payload = status_payload(True, repository.all(), self.hardware(), serving)
        await self.queue(STATUS, "status", SCHEMA_STATUS, payload, retain=True)

    async def report_telemetry(self) -> None:
        """Queue one telemetry message covering the time since the last one."""
        stats = await self._run(self.outbox.stats)
        host = await self._run(host_metrics, self.builder.state_dir)
        payload = self.builder.build(list(self.repository.all()), stats, host)
        await self.queue(TELEMETRY, "telemetry", SCHEMA_TELEMETRY, payload)

    async def queue(
        self, priority: int, kind: str, schema: str, payload: dict[str, Any], retain: bool = False
    ) -> int:
        """Put one enveloped message in the outbox; return its sequence number."""
        device = self.settings.device_id

        def build(seq: int) -> bytes:
            return encode(Envelope(schema, device, seq, time.time(), payload))

        async with self._queue_order:
            seq: int = await self._run(
                self.outbox.add, priority, device_topic(device, kind), retain, build
            )
        self._queued.set()
        return seq

    async def _report_periodically(self) -> None:
        """Queue telemetry every interval, and once more when stopping (the partial interval)."""
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.interval_s)
            try:
                await self.report_telemetry()
            except (EdgeFleetError, OSError) as error:
                log.error("telemetry not queued: %s", error)

    async def _drain(self) -> None:
        """Send what the outbox holds whenever the broker is there; ack what it acknowledged.

        When flushing, return as soon as the outbox is empty.
        """
        while True:
            if not self.client.connected:
                await self._wait_for_broker()
                continue
            # Cleared before looking, so a message queued after the look wakes the wait below.
            self._queued.clear()
            sent, failed = await self._publish_next()
            if not sent:
                if self._flushing.is_set() and not self._queued.is_set():
                    return  # nothing was queued since the look either
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._queued.wait(), 5.0)
            elif failed:
                # Not connected any more, or refused: wait for the session to come back.
                await asyncio.sleep(0.2)

    async def _wait_for_broker(self) -> None:
        try:
            await self.client.wait_connected(timeout=30.0)
        except TimeoutError:
            pass
        except MqttError:
            # The broker refused us (credentials, ACL, protocol). The client keeps retrying,
            # and until it gets in `wait_connected` raises at once: pause instead of spinning,
            # which would starve the event loop and with it the inference API.
            await asyncio.sleep(REFUSED_PAUSE_S)

    async def _publish_next(self) -> tuple[int, int]:
        """Publish the next window of queued messages; return (published, failed)."""
        batch = await self._run(self.outbox.peek, PUBLISH_WINDOW)
        if not batch:
            return 0, 0
        results = await asyncio.gather(
            *(self.client.publish(m.topic, m.payload, qos=1, retain=m.retain) for m in batch),
            return_exceptions=True,
        )
        acknowledged = [m.id for m, result in zip(batch, results, strict=True) if result is None]
        if acknowledged:
            await self._run(self.outbox.ack, *acknowledged)
        for message, result in zip(batch, results, strict=True):
            if isinstance(result, PublishFailed):
                await self._refused(message.id, message.topic, result)
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            log.debug("publishing paused: %s", failures[0])
        return len(batch), len(failures)

    async def _refused(self, message_id: int, topic: str, error: PublishFailed) -> None:
        """Count a broker's refusal of one message; drop it after `REFUSALS_BEFORE_DROP`.

        A refusal (an ACL, a packet too large) would otherwise block every message behind it
        forever; a temporary one (a quota) gets a few more tries first.
        """
        count = self._refusals.get(message_id, 0) + 1
        if count < REFUSALS_BEFORE_DROP:
            self._refusals[message_id] = count
            return
        self._refusals.pop(message_id, None)
        await self._run(self.outbox.refuse, message_id)
        log.error(
            "dropped a message on %s that the broker refused %d times: %s", topic, count, error
        )

    def _on_message(self, message: Message) -> None:
        try:
            envelope = decode(message.payload)
        except EnvelopeError as error:
            self.malformed += 1
            log.warning("ignoring a malformed message on %s: %s", message.topic, error)
            return
        if self.verifier is None:
            return
        command = self.verifier.accept(envelope, time.time())
        if command is not None:
            self._spawn(self._run_command(command))

    async def _run_command(self, command: Command) -> None:
        handler = self.handlers.get(command.name)
        started = time.time()
        if handler is None:
            outcome, ok = f"'{command.name}' is not available in this mode", False
        else:
            try:
                outcome, ok = await handler(command), True
            except EdgeFleetError as error:
                outcome, ok = str(error), False
        log.info("command %s (nonce %s): %s", command.name, command.nonce, outcome)
        await self.queue(
            EVENT,
            "events",
            SCHEMA_EVENT,
            {
                "kind": "command",
                "command": command.name,
                "nonce": command.nonce,
                "ok": ok,
                "outcome": outcome,
                "seconds": round(time.time() - started, 3),
            },
        )

    def _spawn(self, coroutine: Awaitable[Any]) -> None:
        task: asyncio.Task[Any] = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)


def groups_of(value: str | Sequence[str]) -> tuple[str, ...]:
    """Groups from a comma-separated setting or a list."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(item.strip() for item in items if item.strip())
