"""A small asyncio adapter over paho-mqtt: the one place EdgeFleet touches paho.

Paho runs its network loop in its own thread (`loop_start`) and reconnects by itself; this
module moves everything paho reports onto the asyncio loop with `call_soon_threadsafe`, and
turns paho's integer error codes and reason codes into `shared.mqtt.errors`:

- `start()` never raises for an unreachable broker: it connects in the background, waiting
  between attempts 1, 2, 4 ... s capped at `max_backoff_s`, each times a random 0.5-1 (so a
  fleet does not reconnect in lockstep after a broker restart). `wait_connected` raises
  `ConnectRefused` when the broker's CONNACK says no (credentials, protocol), `TimeoutError`
  otherwise, naming the last network or TLS error.
- After each (re)connect, every remembered subscription is sent again and acknowledged before
  `connected` turns true and the `on_connect` hooks run (on the loop; the agent republishes its
  retained status there). Sessions start clean, so a subscription lives only in this client.
- `publish` with QoS 1 returns after the broker's PUBACK (`PublishFailed` for a failure reason
  code, e.g. an MQTT 5 ACL refusal); it raises `NotConnected` rather than letting paho queue the
  message for later, so the caller's outbox stays the one place that retries.
- A received message whose topic matches none of this client's subscriptions is dropped and
  counted (`dropped_unexpected`): the embedded amqtt broker sends retained messages that match
  other clients' subscriptions.
- `stop()` sends DISCONNECT, so the broker discards the last will.

`MqttSettings` and `Will` (defined in `shared.mqtt.settings`) are importable from here too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from shared.mqtt.errors import ConnectRefused, NotConnected, PublishFailed, SubscribeFailed
from shared.mqtt.settings import MqttSettings, Will
from shared.mqtt.topics import matches

# The settings live in their own module; they are part of this module's interface too.
__all__ = ["Message", "MessageStream", "MqttClient", "MqttSettings", "Will", "reconnect_delay"]

log = logging.getLogger(__name__)
paho_log = logging.getLogger("shared.mqtt.paho")

PROTOCOLS = {5: paho.MQTTv5, 4: paho.MQTTv311}
ACK_TIMEOUT_S = 10.0
_Ack = TypeVar("_Ack")


@dataclass(frozen=True, slots=True)
class Message:
    """A received message."""

    topic: str
    payload: bytes
    retain: bool
    qos: int


def reconnect_delay(attempt: int, cap: float) -> float:
    """Seconds to wait before reconnection attempt `attempt` (0-based): capped, jittered."""
    return min(cap, 2.0 ** min(attempt, 16)) * random.uniform(0.5, 1.0)


class _Paho(paho.Client):
    """Paho's client, keeping the reason the last connection attempt failed (paho drops it)."""

    last_connect_error = ""

    def reconnect(self) -> MQTTErrorCode:
        """Connect again; remember why when it fails."""
        try:
            return super().reconnect()
        except OSError as exc:
            self.last_connect_error = f"{type(exc).__name__}: {exc}"
            raise


class MessageStream:
    """Messages received from its creation on, in order; `close()` it (or use `async with`)."""

    def __init__(self, streams: set[asyncio.Queue[Message]], max_queued: int) -> None:
        self._streams = streams
        self._queue: asyncio.Queue[Message] = asyncio.Queue(max_queued)
        streams.add(self._queue)

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> Message:
        if self._queue not in self._streams:
            raise StopAsyncIteration
        return await self._queue.get()

    def close(self) -> None:
        """Stop receiving messages."""
        self._streams.discard(self._queue)

    async def __aenter__(self) -> MessageStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()


class MqttClient:
    """One MQTT connection, driven from asyncio; see the module docstring for the contract."""

    def __init__(self, settings: MqttSettings, will: Will | None = None) -> None:
        self.settings = settings
        self.will = will
        # Hooks run on the loop after each (re)connect, once subscriptions are restored.
        self.on_connect: list[Callable[[], None]] = []
        # Called on the loop for each received message that matches a subscription.
        self.on_message: list[Callable[[Message], None]] = []
        self.dropped_unexpected = 0  # messages matching none of our subscriptions
        self.dropped_overflow = 0  # messages a full `messages()` stream could not take
        self._subscriptions: dict[str, int] = {}  # filter -> QoS
        self._streams: set[asyncio.Queue[Message]] = set()
        self._pubacks: dict[int, asyncio.Future[ReasonCode]] = {}
        self._subacks: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._ready = asyncio.Event()
        self._refused = asyncio.Event()
        self._refusal: ConnectRefused | None = None
        self._session = 0  # increases on every connect and disconnect
        self._tasks: set[asyncio.Task[None]] = set()  # session restorations in flight
        self._loop: asyncio.AbstractEventLoop | None = None
        self._paho: _Paho | None = None
        self._stopping = False
        self._attempt = 0  # network thread only: failed attempts since the last success
        self._reported_down = False

    @property
    def connected(self) -> bool:
        """True while a session is up and every subscription has been (re)acknowledged."""
        return self._ready.is_set()

    async def start(self) -> None:
        """Start paho's network thread; connect (and reconnect) in the background."""
        if self._paho is not None:
            raise RuntimeError("MqttClient.start() was already called")
        self._loop = asyncio.get_running_loop()
        # Loading CA files and certificates reads files: keep it off the loop.
        self._paho = await asyncio.to_thread(self._make_paho)
        self._paho.loop_start()

    def _make_paho(self) -> _Paho:
        settings = self.settings
        client = _Paho(
            CallbackAPIVersion.VERSION2,
            client_id=settings.client_id,
            protocol=PROTOCOLS[settings.protocol],
        )
        client.on_log = _paho_log
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            client.tls_set_context(settings.tls_context())
        if self.will is not None:
            will = self.will
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        client.on_connect = self._paho_connect
        client.on_connect_fail = self._paho_connect_fail
        client.on_disconnect = self._paho_disconnect
        client.on_message = self._paho_message
        client.on_publish = self._paho_publish
        client.on_subscribe = self._paho_subscribe
        self._set_retry_delay(client)
        host, port = settings.endpoint()
        client.connect_async(host, port, settings.keepalive_s)
        return client

    async def stop(self) -> None:
        """Disconnect cleanly (the broker discards the will) and stop the network thread."""
        client = self._paho
        if client is None or self._stopping:
            return
        self._stopping = True
        client.disconnect()
        await asyncio.to_thread(client.loop_stop)
        self._ready.clear()
        for task in self._tasks:
            task.cancel()
        for pending in (self._pubacks, self._subacks):
            for future in pending.values():
                if not future.done():
                    future.set_exception(NotConnected("the client was stopped"))
        log.info("disconnected from %s", self.settings.url)

    async def __aenter__(self) -> MqttClient:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # `timeout` parameters are part of this adapter's contract (agent and control plane call
    # them with one); they bound only the wait for the broker, hence the noqa.
    async def wait_connected(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait for a session; raise `ConnectRefused` if the broker says no, else TimeoutError."""
        if not self._ready.is_set() and self._refusal is None:
            waiters = [
                asyncio.ensure_future(self._ready.wait()),
                asyncio.ensure_future(self._refused.wait()),
            ]
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        if self._ready.is_set():
            return
        if self._refusal is not None:
            raise self._refusal
        reason = self._paho.last_connect_error if self._paho else "not started"
        raise TimeoutError(
            f"not connected to {self.settings.url} within {timeout} s"
            + (f" (last error: {reason})" if reason else "")
        )

    async def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        retain: bool = False,
        timeout: float = ACK_TIMEOUT_S,  # noqa: ASYNC109
    ) -> None:
        """Publish; with QoS 1 return only after the broker's PUBACK."""
        client = self._connected_client(f"cannot publish on {topic}")
        try:
            info = client.publish(topic, payload, qos=qos, retain=retain)
        except ValueError as exc:  # paho's check of the topic, QoS or payload size
            raise PublishFailed(f"cannot publish on {topic!r}: {exc}") from None
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            raise NotConnected(f"cannot publish on {topic}: the connection just dropped")
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise PublishFailed(f"cannot publish on {topic}: {paho.error_string(info.rc)}")
        if qos == 0:
            return
        reason = await self._await_ack(self._pubacks, info.mid, timeout, f"PUBACK for {topic}")
        if reason.is_failure:
            raise PublishFailed(f"the broker refused the message on {topic}: {reason}")

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        """Subscribe now if connected, and again after every reconnect."""
        self._subscriptions[topic_filter] = qos
        client = self._paho
        if client is None or not client.is_connected():
            return  # sent when the session starts
        try:
            await self._send_subscribe(client, [(topic_filter, qos)])
        except SubscribeFailed:
            del self._subscriptions[topic_filter]
            raise

    def messages(self, max_queued: int = 10_000) -> MessageStream:
        """Every matching message from now on; beyond `max_queued` unread, new ones are dropped."""
        return MessageStream(self._streams, max_queued)

    def _connected_client(self, what: str) -> _Paho:
        client = self._paho
        if client is None or self._stopping or not client.is_connected():
            raise NotConnected(f"{what}: not connected to {self.settings.url}")
        return client

    async def _send_subscribe(self, client: _Paho, filters: list[tuple[str, int]]) -> None:
        try:
            rc, mid = client.subscribe(filters)
        except ValueError as exc:
            raise SubscribeFailed(f"cannot subscribe to {filters}: {exc}") from None
        if rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            raise NotConnected(f"cannot subscribe: not connected to {self.settings.url}")
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise SubscribeFailed(f"cannot subscribe to {filters}: {paho.error_string(rc)}")
        reasons = await self._await_ack(self._subacks, mid, ACK_TIMEOUT_S, "SUBACK")
        refused = [
            f"{f} ({r})" for (f, _), r in zip(filters, reasons, strict=False) if r.is_failure
        ]
        if refused:
            raise SubscribeFailed(f"the broker refused the subscription to {', '.join(refused)}")

    async def _await_ack(
        self, pending: dict[int, asyncio.Future[_Ack]], mid: int, limit_s: float, what: str
    ) -> _Ack:
        # Registered before the first await, so an ack (scheduled on this loop by the network
        # thread) always finds its future.
        future: asyncio.Future[_Ack] = asyncio.get_running_loop().create_future()
        pending[mid] = future
        try:
            async with asyncio.timeout(limit_s):
                return await future
        except TimeoutError:
            raise TimeoutError(f"no {what} from {self.settings.url} within {limit_s} s") from None
        finally:
            pending.pop(mid, None)

    # --- paho callbacks: on the network thread; they only hand over to the loop -------------

    def _call_in_loop(self, callback: Callable[..., None], *args: Any) -> None:
        if self._loop is None:
            return
        # RuntimeError: the loop is closed, so nobody is listening any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(callback, *args)

    def _set_retry_delay(self, client: paho.Client) -> None:
        delay = reconnect_delay(self._attempt, self.settings.max_backoff_s)
        self._attempt += 1
        # Paho waits `min_delay` before the next attempt (and would double it; we set it each
        # time instead, with jitter). Its hint says int; any number of seconds works.
        client.reconnect_delay_set(min_delay=delay, max_delay=delay)  # type: ignore[arg-type]

    def _paho_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._call_in_loop(self._refused_by_broker, str(reason))
            return
        self._attempt = 0
        self._call_in_loop(self._session_started)

    def _paho_connect_fail(self, client: paho.Client, userdata: Any) -> None:
        self._set_retry_delay(client)
        self._call_in_loop(self._session_lost, "")

    def _paho_disconnect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.DisconnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._set_retry_delay(client)
        self._call_in_loop(self._session_lost, str(reason))

    def _paho_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # a broker must refuse such topics; count, do not die
            topic = ""
        received = Message(topic, bytes(message.payload), bool(message.retain), message.qos)
        self._call_in_loop(self._deliver, received)

    def _paho_publish(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self._call_in_loop(_resolve, self._pubacks, mid, reason)

    def _paho_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._call_in_loop(_resolve, self._subacks, mid, reasons)

    # --- the same events, on the loop --------------------------------------------------------

    def _refused_by_broker(self, reason: str) -> None:
        hint = ""
        if self.settings.protocol == 5 and "protocol" in reason.lower():
            hint = "; the broker may speak only MQTT 3.1.1 (protocol 4), as amqtt does"
        self._refusal = ConnectRefused(
            f"{self.settings.url} refused the connection: {reason}{hint}"
        )
        self._refused.set()
        if not self._reported_down:
            self._reported_down = True
            log.warning("%s; retrying", self._refusal)

    def _session_started(self) -> None:
        self._refusal = None
        self._refused.clear()
        self._session += 1
        task = asyncio.create_task(self._restore_session(self._session))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _restore_session(self, session: int) -> None:
        client = self._paho
        if self._subscriptions and client is not None:
            try:
                await self._send_subscribe(client, list(self._subscriptions.items()))
            except (NotConnected, SubscribeFailed, TimeoutError) as exc:
                log.warning("restoring subscriptions on %s: %s", self.settings.url, exc)
        if session != self._session or self._stopping:
            return  # the connection dropped meanwhile; the next session restores them
        self._ready.set()
        self._reported_down = False
        log.info("connected to %s as %s", self.settings.url, self.settings.client_id)
        for hook in list(self.on_connect):
            try:
                hook()
            except Exception:
                log.exception("on_connect hook %r failed", hook)

    def _session_lost(self, reason: str) -> None:
        self._session += 1
        was_ready = self._ready.is_set()
        self._ready.clear()
        if self._stopping:
            return
        error = reason or (self._paho.last_connect_error if self._paho else "")
        if was_ready or not self._reported_down:
            self._reported_down = True
            log.warning(
                "connection to %s lost or refused (%s); reconnecting",
                self.settings.url,
                error or "unknown reason",
            )
        else:
            log.debug("connecting to %s failed: %s", self.settings.url, error)

    def _deliver(self, message: Message) -> None:
        if not any(matches(f, message.topic) for f in self._subscriptions):
            self.dropped_unexpected += 1
            level = logging.WARNING if self.dropped_unexpected == 1 else logging.DEBUG
            log.log(
                level,
                "dropped a message on %r: it matches none of our subscriptions (%d so far)",
                message.topic,
                self.dropped_unexpected,
            )
            return
        for handler in list(self.on_message):
            try:
                handler(message)
            except Exception:
                log.exception("message handler %r failed on %s", handler, message.topic)
        for queue in self._streams:
            try:
                queue.put_nowait(message)
            except asyncio.QueueFull:
                self.dropped_overflow += 1


def _resolve(pending: dict[int, asyncio.Future[_Ack]], mid: int, result: _Ack) -> None:
    future = pending.get(mid)
    if future is not None and not future.done():
        future.set_result(result)


def _paho_log(client: paho.Client, userdata: Any, level: int, text: str) -> None:
    # Paho 2.2 logs "Client is not connected" as an error on every reconnection attempt; this
    # module reports connection trouble itself, once per outage. Paho's other errors (an
    # exception in a callback) stay warnings; its packet tracing is debug.
    if level == paho.MQTT_LOG_ERR and not text.startswith("Client is not connected"):
        paho_log.warning("%s", text)
    else:
        paho_log.debug("%s", text)
