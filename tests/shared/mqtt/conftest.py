"""Brokers and clients for the MQTT tests.

`mosquitto` is a real Mosquitto started once per session on a free loopback port with its own
configuration and stopped by PID; when Mosquitto is missing the fixture fails (never skips)
and says to run `make test`, which installs it. `embedded_broker` is the in-process amqtt
broker of the demo. `broker` runs a contract test against Mosquitto over MQTT 5 and 3.1.1 and
against amqtt over 3.1.1 (all it speaks). `connect` makes started, connected clients and
stops them after the test.
"""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.mqtt.broker import EmbeddedBroker, MosquittoBroker, find_program
from shared.mqtt.client import Message, MessageStream, MqttClient, MqttSettings, Will

# deploy/mosquitto: the production ACL and configuration, which the tests run.
DEPLOY_DIR = Path(__file__).resolve().parents[3] / "deploy" / "mosquitto"


def require_mosquitto() -> None:
    """Fail, with the fix, when Mosquitto is not installed."""
    if find_program("mosquitto") is None:
        pytest.fail(
            "mosquitto is not installed: run `make test`, which installs it "
            "(apt-get install mosquitto mosquitto-clients)",
            pytrace=False,
        )


def write_password_file(path: Path, accounts: dict[str, str]) -> Path:
    """A Mosquitto password file for these user names and passwords, made by mosquitto_passwd."""
    require_mosquitto()
    path.touch()
    tool = find_program("mosquitto_passwd") or "mosquitto_passwd"
    for user, password in accounts.items():
        subprocess.run([tool, "-b", str(path), user, password], check=True)
    return path


def start_mosquitto(directory: Path, **options: Any) -> MosquittoBroker:
    """Start a Mosquitto with these `MosquittoBroker` options (blocking: not on a loop)."""
    require_mosquitto()
    broker = MosquittoBroker(directory, **options)
    broker.start()
    return broker


@pytest.fixture(scope="session")
def mosquitto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """A plain Mosquitto (anonymous, no TLS) on a free loopback port, for the whole session."""
    broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
    yield broker
    broker.stop()


@pytest.fixture(scope="session")
def embedded_broker() -> Iterator[EmbeddedBroker]:
    """The embedded amqtt broker, in this process, for the whole session."""
    with EmbeddedBroker() as broker:
        yield broker


@dataclass(frozen=True)
class BrokerUnderTest:
    """A running broker and the MQTT version to speak to it."""

    name: str
    url: str
    protocol: int
    # amqtt sends a connecting client the retained messages that match *other* clients'
    # subscriptions; MqttClient must drop them.
    leaks_retained: bool

    def settings(self, client_id: str, **overrides: Any) -> MqttSettings:
        """Client settings for this broker, reconnecting within a second."""
        options: dict[str, Any] = {"protocol": self.protocol, "max_backoff_s": 1.0} | overrides
        return MqttSettings(self.url, client_id, **options)


@pytest.fixture(params=["mosquitto-mqtt5", "mosquitto-mqtt3.1.1", "amqtt-mqtt3.1.1"])
def broker(request: pytest.FixtureRequest) -> BrokerUnderTest:
    """Each broker and protocol the contract tests must pass against."""
    name: str = request.param
    protocol = 5 if name.endswith("mqtt5") else 4
    if name.startswith("mosquitto"):
        running: MosquittoBroker | EmbeddedBroker = request.getfixturevalue("mosquitto")
    else:
        running = request.getfixturevalue("embedded_broker")
    return BrokerUnderTest(name, running.url, protocol, leaks_retained=name.startswith("amqtt"))


@pytest.fixture
def device_id() -> str:
    """A device id no other test uses (the session's brokers keep retained messages)."""
    return f"dev-{uuid.uuid4().hex[:10]}"


Connect = Callable[..., Awaitable[MqttClient]]


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Make clients: started, connected and subscribed; all stopped after the test."""
    clients: list[MqttClient] = []

    async def make(
        settings: MqttSettings, will: Will | None = None, subscribe: Sequence[str] = ()
    ) -> MqttClient:
        client = MqttClient(settings, will)
        clients.append(client)
        await client.start()
        await client.wait_connected(10)
        for topic_filter in subscribe:
            await client.subscribe(topic_filter)
        return client

    yield make
    await asyncio.gather(*(client.stop() for client in clients))


async def next_message(stream: MessageStream, seconds: float = 5.0) -> Message:
    """The next message on a stream; TimeoutError after `seconds`."""
    async with asyncio.timeout(seconds):
        return await anext(stream)


async def assert_delivered(
    sender: MqttClient, receiver: MqttClient, topic: str, payload: bytes
) -> None:
    """Publish from `sender`; the next message `receiver` gets must be this one."""
    async with receiver.messages() as stream:
        await sender.publish(topic, payload)
        message = await next_message(stream)
    assert (message.topic, message.payload) == (topic, payload)
