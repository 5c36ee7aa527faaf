"""Brokers, a recording MQTT listener and agents for the reporter tests.

The session brokers come from `tests/shared/mqtt/conftest.py`; a test that stops its broker
starts its own (`own_broker`, with persistence). Agents are real: `AgentThread` (the agent in
a thread of this process, serving `.fake` models or, in production mode, a `Fleet`'s signed
bundles) or `edgefleet agent serve` in a subprocess when the test kills it.

`Listener` is a raw paho client rather than `shared.mqtt.client.MqttClient`, because the
outage tests need a receiver that cannot lose a message itself: an MQTT 5 persistent session
(`clean_start=False`, a session expiry, a QoS 1 subscription), which a broker started with
persistence keeps across its restart and fills while the listener is away. `MqttClient` starts
clean sessions by contract (the agent's outbox is its durability), so a message the agent
publishes between the broker's restart and the listener's resubscription would be lost to it;
relying on the listener reconnecting before the agent would be a race between two jittered
backoffs.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.config import AgentSettings, MqttSettingsSection, load_settings
from agent.runtimes.registry import RuntimeRegistry
from shared.mqtt.broker import MosquittoBroker
from shared.mqtt.envelope import Envelope, check_topic, decode
from shared.mqtt.errors import EnvelopeError
from shared.mqtt.settings import MqttSettings
from shared.mqtt.topics import device_filter, device_topic, matches, parse_topic
from tests.agent.fakes import FakeRuntime, write_fake_model
from tests.agent.harness import AgentThread
from tests.shared.mqtt.conftest import (  # noqa: F401
    device_id,
    embedded_broker,
    mosquitto,
    start_mosquitto,
)

ROW = [1.0, 2.0, 3.0, 4.0]
FAIL_ON = 99.0  # a `.fake` model written by `fake_model` fails on inputs holding this value


@dataclass(frozen=True)
class Received:
    """One message the listener got: its kind (status, telemetry, events), envelope, flags."""

    kind: str
    envelope: Envelope
    retain: bool
    at: float  # time.monotonic() on arrival

    @property
    def seq(self) -> int:
        """The envelope's sequence number."""
        return self.envelope.seq

    @property
    def payload(self) -> dict[str, Any]:
        """The envelope's payload."""
        return self.envelope.payload


Predicate = Callable[[list[Received]], bool]


class Listener:
    """Records every valid message on one device's topics, in arrival order; publishes too."""

    def __init__(
        self, url: str, device: str, *, protocol: int = 5, persistent: bool = False
    ) -> None:
        self.host, self.port = MqttSettings(url, "listener").endpoint()
        self.device = device
        self.protocol = protocol
        self.persistent = persistent
        self.malformed: list[str] = []
        self._filter = device_filter(device, None)
        self._received: list[Received] = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        self._client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"listener-{uuid.uuid4().hex[:12]}",
            protocol=paho.MQTTv5 if protocol == 5 else paho.MQTTv311,
        )
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        # Back within a quarter of a second of a broker's restart (paho's hint says int).
        self._client.reconnect_delay_set(0.25, 0.25)  # type: ignore[arg-type]

    def start(self, timeout: float = 10.0) -> Listener:
        """Connect and wait for the subscription's acknowledgement."""
        if self.protocol == 5:
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 600 if self.persistent else 0
            self._client.connect(
                self.host,
                self.port,
                keepalive=5,
                clean_start=not self.persistent,
                properties=properties,
            )
        else:
            self._client.connect(self.host, self.port, keepalive=5)
        self._client.loop_start()
        assert self._subscribed.wait(timeout), f"no SUBACK from {self.host}:{self.port}"
        return self

    def stop(self) -> None:
        """Disconnect and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    def publish(self, topic: str, payload: bytes, timeout: float = 10.0) -> None:
        """Publish at QoS 1 and wait for the broker's PUBACK."""
        info = self._client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout)
        assert info.is_published(), f"no PUBACK for {topic}"

    def messages(self, kind: str | None = None) -> list[Received]:
        """What arrived so far (of one kind, or all), in arrival order."""
        with self._changed:
            return [m for m in self._received if kind is None or m.kind == kind]

    def wait(self, predicate: Predicate, timeout: float = 15.0, what: str = "") -> list[Received]:
        """Block until `predicate(every message so far)` holds; fail after `timeout` s."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(self._received), timeout):
                kinds = [f"{m.kind}#{m.seq}" for m in self._received[-20:]]
                pytest.fail(f"timed out after {timeout} s waiting for {what or predicate}: {kinds}")
            return list(self._received)

    def first(
        self, kind: str, condition: Callable[[Received], bool], timeout: float = 15.0
    ) -> Received:
        """The first message of `kind` meeting `condition`, waiting for it if need be."""

        def found(messages: list[Received]) -> bool:
            return any(m.kind == kind and condition(m) for m in messages)

        messages = self.wait(found, timeout, f"a {kind} message")
        return next(m for m in messages if m.kind == kind and condition(m))

    # --- paho callbacks, on its network thread -------------------------------------------

    def _on_connect(
        self,
        client: paho.Client,
        userdata: Any,
        flags: paho.ConnectFlags,
        reason: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason.is_failure:
            return
        if flags.session_present:  # the broker kept the subscription and the queue
            self._subscribed.set()
            return
        client.subscribe(self._filter, qos=1)

    def _on_subscribe(
        self,
        client: paho.Client,
        userdata: Any,
        mid: int,
        reasons: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        self._subscribed.set()

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        # amqtt also sends retained messages matching other clients' subscriptions.
        if not matches(self._filter, message.topic):
            return
        try:
            envelope = decode(bytes(message.payload))
            check_topic(envelope, message.topic)
        except EnvelopeError as error:
            self.malformed.append(f"{message.topic}: {error}")
            return
        received = Received(
            parse_topic(message.topic).kind, envelope, bool(message.retain), time.monotonic()
        )
        with self._changed:
            self._received.append(received)
            self._changed.notify_all()


Listen = Callable[..., Listener]


@pytest.fixture
def listen() -> Iterator[Listen]:
    """Start listeners (`listen(url, device, protocol=5, persistent=False)`); stop them after."""
    started: list[Listener] = []

    def make(url: str, device: str, **options: Any) -> Listener:
        listener = Listener(url, device, **options).start()
        started.append(listener)
        return listener

    yield make
    for listener in started:
        listener.stop()


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto for this test alone, with persistence, which the test may stop and start."""
    broker = start_mosquitto(tmp_path / "broker", persistence=True)
    yield broker
    broker.stop()


class Agents:
    """Agents in threads of this process (fake runtime); any still running after the test stop."""

    def __init__(self) -> None:
        self._running: list[AgentThread] = []

    def start(self, settings: AgentSettings, production: bool = False) -> AgentThread:
        """Start an agent (`agent run` when `production`) and, unless production, wait ready."""
        thread = AgentThread(settings, RuntimeRegistry([FakeRuntime()]), production=production)
        self._running.append(thread)
        # A production agent gets ready only once its assignment's models are installed.
        return thread.start(wait_ready=not production, timeout=30)

    def stop(self, thread: AgentThread) -> None:
        """Stop one agent cleanly (as SIGTERM does)."""
        self._running.remove(thread)
        thread.stop()

    def stop_all(self) -> None:
        """Stop every agent still running."""
        for thread in list(self._running):
            self.stop(thread)


@pytest.fixture
def agents() -> Iterator[Agents]:
    """Start agents with `agents.start(settings)`; they are stopped after the test."""
    running = Agents()
    yield running
    running.stop_all()


def fake_model(directory: Path, **behaviour: Any) -> Path:
    """A `.fake` model file that answers x * 2 and fails on inputs holding `FAIL_ON`."""
    directory.mkdir(parents=True, exist_ok=True)
    return write_fake_model(directory / "m.fake", fail_on=FAIL_ON, **behaviour)


def serving_settings(
    state_dir: Path, device: str, model: Path, url: str, **mqtt: Any
) -> AgentSettings:
    """`agent serve` settings: model `m` from `model`, reporting to `url` every 0.2 s.

    `mqtt` overrides `[mqtt]` settings, e.g. `protocol=4`, `outbox_max_messages=5`.
    """
    overrides: dict[str, dict[str, Any]] = {
        "": {"device_id": device, "state_dir": str(state_dir)},
        "mqtt": {"url": url, "telemetry_interval_s": 0.2, **mqtt},
        "selection": {"budget_s": 0.05},
    }
    return load_settings(None, {}, overrides, {"m": {"paths": [str(model)]}})


def with_mqtt(settings: AgentSettings, url: str, **mqtt: Any) -> AgentSettings:
    """The same settings with an `[mqtt]` section reporting to `url`."""
    return replace(settings, mqtt=replace(MqttSettingsSection(), url=url, **mqtt))


def infer(agent: AgentThread, row: list[float] | None = None, model: str = "m") -> int:
    """POST one request of one row (`ROW` by default) to the agent; return the HTTP status."""
    data = ROW if row is None else row
    tensor = {"name": "x", "datatype": "FP32", "shape": [1, len(data)], "data": data}
    request = urllib.request.Request(
        f"http://{agent.url}/v2/models/{model}/infer",
        data=json.dumps({"inputs": [tensor]}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        error.read()
        return error.code


def command_topic(device: str) -> str:
    """Where the device's commands are published."""
    return device_topic(device, "cmd")
