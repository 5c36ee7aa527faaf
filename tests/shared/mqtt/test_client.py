"""The MQTT client's contract, against Mosquitto (MQTT 5 and 3.1.1) and the embedded amqtt."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.mqtt.broker import EmbeddedBroker, MosquittoBroker, free_port
from shared.mqtt.client import (
    Message,
    MqttClient,
    MqttSettings,
    Will,
    reconnect_delay,
)
from shared.mqtt.envelope import SCHEMA_TELEMETRY, Envelope, encode
from shared.mqtt.errors import ConnectRefused, MqttSettingsError, NotConnected
from shared.mqtt.topics import device_topic
from tests.agent.polling import until
from tests.shared.mqtt.conftest import (
    BrokerUnderTest,
    Connect,
    assert_delivered,
    next_message,
    require_mosquitto,
)

KEEPALIVE_S = 2

# A device agent in miniature: connects with a last will, says so, then waits to be killed.
VICTIM = """
import asyncio, sys
from shared.mqtt.client import MqttClient, MqttSettings, Will

async def main(url, protocol, client_id, topic):
    settings = MqttSettings(url, client_id, keepalive_s=int(sys.argv[5]), protocol=int(protocol))
    client = MqttClient(settings, Will(topic, b"offline"))
    await client.start()
    await client.wait_connected(10)
    print("connected", flush=True)
    await asyncio.Event().wait()

asyncio.run(main(*sys.argv[1:5]))
"""


async def test_qos1_round_trip(broker: BrokerUnderTest, connect: Connect, device_id: str) -> None:
    topic = device_topic(device_id, "telemetry")
    receiver = await connect(broker.settings(f"{device_id}-rx"), subscribe=[topic])
    handled: list[Message] = []
    receiver.on_message.append(handled.append)
    sender = await connect(broker.settings(device_id))
    data = encode(Envelope(SCHEMA_TELEMETRY, device_id, 1, time.time(), {"p50_ms": 1.5}))
    async with receiver.messages() as stream:
        await sender.publish(topic, data)  # returns once the broker's PUBACK is in
        message = await next_message(stream)
    assert message == Message(topic, data, retain=False, qos=1)
    assert handled == [message]


async def test_a_late_subscriber_gets_the_retained_message(
    broker: BrokerUnderTest, connect: Connect, device_id: str
) -> None:
    topic = device_topic(device_id, "status")
    publisher = await connect(broker.settings(device_id))
    await publisher.publish(topic, b"online", retain=True)
    await publisher.stop()
    late = await connect(broker.settings(f"{device_id}-late"))
    async with late.messages() as stream:
        await late.subscribe(topic)
        message = await next_message(stream)
    assert (message.topic, message.payload, message.retain) == (topic, b"online", True)


async def test_the_last_will_is_delivered_when_the_client_is_killed(
    broker: BrokerUnderTest, connect: Connect, device_id: str
) -> None:
    topic = device_topic(device_id, "status")
    watcher = await connect(broker.settings(f"{device_id}-watch"), subscribe=[topic])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        VICTIM,
        broker.url,
        str(broker.protocol),
        device_id,
        topic,
        str(KEEPALIVE_S),
        stdout=subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            assert await process.stdout.readline() == b"connected\n"
        async with watcher.messages() as stream:
            process.kill()  # SIGKILL: no DISCONNECT, so the broker must send the will
            will = await next_message(stream, 1.5 * KEEPALIVE_S)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()
    assert (will.topic, will.payload) == (topic, b"offline")
    late = await connect(broker.settings(f"{device_id}-late"))
    async with late.messages() as stream:
        await late.subscribe(topic)
        retained = await next_message(stream)
    assert (retained.payload, retained.retain) == (b"offline", True)


# Not against amqtt 0.12: it handles DISCONNECT in a task that the connection's close, right
# behind it, may cancel, and then publishes the will anyway.
@pytest.mark.parametrize("broker", ["mosquitto-mqtt5", "mosquitto-mqtt3.1.1"], indirect=True)
async def test_a_clean_stop_sends_no_will(
    broker: BrokerUnderTest, connect: Connect, device_id: str
) -> None:
    topic = device_topic(device_id, "status")
    watcher = await connect(broker.settings(f"{device_id}-watch"), subscribe=[topic])
    client = await connect(broker.settings(device_id), will=Will(topic, b"offline"))
    async with watcher.messages() as stream:
        await client.stop()
        await watcher.publish(topic, b"after the stop")
        assert (await next_message(stream)).payload == b"after the stop"


async def test_messages_matching_none_of_our_subscriptions_are_dropped(
    broker: BrokerUnderTest, connect: Connect, device_id: str
) -> None:
    elsewhere, mine = device_topic(device_id, "status"), device_topic(device_id, "events")
    await connect(broker.settings(f"{device_id}-other"), subscribe=[elsewhere])
    publisher = await connect(broker.settings(device_id))
    await publisher.publish(elsewhere, b"for the other client", retain=True)
    await publisher.publish(mine, b"for us", retain=True)
    # amqtt sends this client the retained message of `elsewhere` as it connects, because
    # another client subscribes to it; it arrives before the answer to our own subscription.
    client = await connect(broker.settings(f"{device_id}-us"))
    async with client.messages() as stream:
        await client.subscribe(mine)
        first = await next_message(stream)
    assert (first.topic, first.payload) == (mine, b"for us")
    if broker.leaks_retained:
        assert client.dropped_unexpected >= 1
    else:
        assert client.dropped_unexpected == 0


@pytest.fixture(params=["mosquitto-mqtt5", "amqtt-mqtt3.1.1"])
def own_broker(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[MosquittoBroker | EmbeddedBroker, BrokerUnderTest]]:
    """A broker of this test's own, which it may stop and start."""
    running: MosquittoBroker | EmbeddedBroker
    if request.param.startswith("mosquitto"):
        require_mosquitto()
        running = MosquittoBroker(tmp_path, persistence=True)
    else:
        running = EmbeddedBroker()
    running.start()
    protocol = 5 if request.param.endswith("mqtt5") else 4
    yield running, BrokerUnderTest(request.param, running.url, protocol, leaks_retained=False)
    running.stop()


async def test_reconnects_and_resubscribes_after_a_broker_restart(
    own_broker: tuple[MosquittoBroker | EmbeddedBroker, BrokerUnderTest],
    connect: Connect,
    device_id: str,
) -> None:
    running, broker = own_broker
    commands, status = device_topic(device_id, "cmd"), device_topic(device_id, "status")
    client = await connect(broker.settings(device_id), subscribe=[commands])
    await client.publish(status, b"online", retain=True)
    hooks: list[bool] = []
    client.on_connect.append(lambda: hooks.append(client.connected))
    await asyncio.to_thread(running.stop)
    await until(lambda: not client.connected, 10)
    with pytest.raises(NotConnected):
        await client.publish(device_topic(device_id, "events"), b"while down")
    await asyncio.to_thread(running.start)
    await client.wait_connected(10)
    assert hooks == [True]  # the hook ran once, after the subscriptions were restored
    sender = await connect(broker.settings(f"{device_id}-cp"))
    await assert_delivered(sender, client, commands, b"after the restart")
    if isinstance(running, MosquittoBroker):  # persistence keeps retained messages; amqtt has none
        async with sender.messages() as stream:
            await sender.subscribe(status)
            assert (await next_message(stream)).payload == b"online"


async def test_start_never_raises_and_connects_once_the_broker_appears(
    tmp_path: Path, connect: Connect
) -> None:
    require_mosquitto()
    port = free_port()
    client = MqttClient(MqttSettings(f"mqtt://127.0.0.1:{port}", "early", max_backoff_s=0.5))
    await client.start()
    try:
        with pytest.raises(TimeoutError, match="ConnectionRefusedError"):
            await client.wait_connected(0.3)
        with pytest.raises(NotConnected):
            await client.publish("edgefleet/v1/dev/early/events", b"x")
        await client.subscribe("edgefleet/v1/dev/early/cmd")  # remembered for later
        broker = MosquittoBroker(tmp_path, port=port)
        await asyncio.to_thread(broker.start)
        try:
            await client.wait_connected(10)
            sender = await connect(MqttSettings(broker.url, "sender"))
            await assert_delivered(sender, client, "edgefleet/v1/dev/early/cmd", b"hello")
        finally:
            await asyncio.to_thread(broker.stop)
    finally:
        await client.stop()


async def test_mqtt5_against_amqtt_is_refused_with_a_hint(embedded_broker: EmbeddedBroker) -> None:
    async with MqttClient(MqttSettings(embedded_broker.url, "five", protocol=5)) as client:
        with pytest.raises(ConnectRefused, match=r"protocol 4"):
            await client.wait_connected(10)


def test_reconnect_delays_grow_to_the_cap_with_jitter() -> None:
    for attempt, ceiling in [(0, 1.0), (1, 2.0), (3, 8.0), (10, 30.0), (100, 30.0)]:
        delays = [reconnect_delay(attempt, 30.0) for _ in range(50)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert len(set(delays)) > 1


@pytest.mark.parametrize(
    ("url", "options", "message"),
    [
        ("http://broker:1883", {}, "scheme"),
        ("mqtt://", {}, "host"),
        ("mqtt://user:pw@broker", {}, "credentials"),
        ("mqtt://broker:99999", {}, "(?i)port"),
        ("mqtt://broker/path", {}, "host"),
        ("mqtt://broker", {"ca_file": Path("ca.pem")}, "mqtts"),
        ("mqtts://broker", {"key_file": Path("k.pem")}, "cert_file"),
        ("mqtt://broker", {"password": "pw"}, "username"),
        ("mqtt://broker", {"protocol": 3}, "protocol"),
        ("mqtt://broker", {"keepalive_s": 0}, "keepalive"),
        ("mqtt://broker", {"client_id": ""}, "client_id"),
    ],
)
def test_settings_that_cannot_work_are_refused(
    url: str, options: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {"client_id": "c"} | options
    with pytest.raises(MqttSettingsError, match=message):
        MqttSettings(url, **arguments)  # type: ignore[arg-type]


def test_settings_endpoints_and_secrets() -> None:
    assert MqttSettings("mqtt://broker", "c").endpoint() == ("broker", 1883)
    assert MqttSettings("mqtts://broker", "c").endpoint() == ("broker", 8883)
    assert MqttSettings("mqtt://127.0.0.1:18830", "c").endpoint() == ("127.0.0.1", 18830)
    assert "hunter2" not in repr(MqttSettings("mqtt://b", "c", username="u", password="hunter2"))
    with pytest.raises(MqttSettingsError, match=r"no-such-ca\.pem"):
        MqttSettings("mqtts://b", "c", ca_file=Path("no-such-ca.pem")).tls_context()
