"""Telling devices to fetch their assignment now: a signed `sync` command on each `cmd` topic.

The command is only a nudge: a device that misses it (offline, broker down) finds its new
assignment at its next poll, so failures are logged once per batch and never raised. Commands
are signed in a worker thread (thousands of Ed25519 signatures would hold the event loop) and
published at QoS 1, a bounded number at a time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Sequence

from shared.keys import PrivateKey
from shared.mqtt.client import MqttClient
from shared.mqtt.commands import Command, command_envelope
from shared.mqtt.envelope import encode
from shared.mqtt.errors import MqttError
from shared.mqtt.topics import device_topic

log = logging.getLogger(__name__)

COMMAND_SENDER = "control-plane"  # the envelope's publisher id
SYNC_COMMAND_LIFETIME_S = 300.0
PUBLISH_TIMEOUT_S = 5.0
PUBLISH_CONCURRENCY = 32


class SyncCommandPublisher:
    """Publishes signed `sync` commands through the control plane's MQTT connection (if any)."""

    def __init__(
        self, mqtt: MqttClient | None, signer: PrivateKey, clock: Callable[[], float]
    ) -> None:
        self._mqtt = mqtt
        self._signer = signer
        self._clock = clock
        # The envelope's `seq` increases per publisher; starting at the time in milliseconds
        # keeps it increasing across restarts.
        self._seq = itertools.count(int(clock() * 1000))

    async def publish(self, device_ids: Sequence[str]) -> int:
        """Send each device a `sync` command; return how many the broker acknowledged."""
        mqtt = self._mqtt
        if mqtt is None or not device_ids:
            return 0
        if not mqtt.connected:
            log.warning(
                "not connected to the broker: %d device(s) not told to sync; they will find "
                "their new assignment at their next poll",
                len(device_ids),
            )
            return 0
        messages = await asyncio.to_thread(self._commands, device_ids, self._clock())
        limit = asyncio.Semaphore(PUBLISH_CONCURRENCY)

        async def send(topic: str, payload: bytes) -> str | None:
            async with limit:
                try:
                    await mqtt.publish(topic, payload, qos=1, timeout=PUBLISH_TIMEOUT_S)
                except (MqttError, TimeoutError) as error:
                    return str(error)
                return None

        outcomes = await asyncio.gather(*(send(topic, payload) for topic, payload in messages))
        failures = [error for error in outcomes if error is not None]
        if failures:
            log.warning(
                "%d of %d sync command(s) not published (%s); those devices will find their "
                "new assignment at their next poll",
                len(failures),
                len(messages),
                failures[0],
            )
        return len(messages) - len(failures)

    def _commands(self, device_ids: Sequence[str], now: float) -> list[tuple[str, bytes]]:
        """Signed commands as (topic, payload); blocking (signing): run in a thread."""
        messages: list[tuple[str, bytes]] = []
        for device_id in device_ids:
            try:
                topic = device_topic(device_id, "cmd")
            except MqttError:  # an id the topic grammar cannot carry: that device only polls
                log.debug("device id %r cannot be a topic; no sync command", device_id)
                continue
            command = Command.new(
                "sync", device_id=device_id, now=now, lifetime_s=SYNC_COMMAND_LIFETIME_S
            )
            envelope = command_envelope(
                command, self._signer, sender=COMMAND_SENDER, seq=next(self._seq)
            )
            messages.append((topic, encode(envelope)))
        return messages
