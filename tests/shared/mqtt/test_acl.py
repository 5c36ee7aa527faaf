"""The production ACL (`deploy/mosquitto/acl`) with a password file, in a real Mosquitto.

A device publishes only under its own topic tree and reads only its own and its groups'
commands; the control plane reads every device and publishes commands. What the ACL refuses
is checked by ordering: the refused message is sent first, an allowed one after it on the same
connection, and the receiver's first message must be the allowed one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from shared.mqtt.broker import MosquittoBroker
from shared.mqtt.client import MqttClient, MqttSettings
from shared.mqtt.errors import ConnectRefused, PublishFailed
from shared.mqtt.topics import (
    device_command_filters,
    device_topic,
    fleet_filter,
    group_command_topic,
)
from tests.agent.polling import until
from tests.shared.mqtt.conftest import (
    DEPLOY_DIR,
    Connect,
    next_message,
    start_mosquitto,
    write_password_file,
)

DEPLOYED_ACL = DEPLOY_DIR / "acl"
ACCOUNTS = {"dev-a": "pw-a", "dev-b": "pw-b", "control-plane": "pw-cp"}
# What the control plane appends for group membership (see the comment in the ACL).
GROUP_GRANTS = "\nuser dev-a\ntopic read edgefleet/v1/group/line-1/cmd\n"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoBroker]:
    """Mosquitto with a password file for three accounts and the deployed ACL."""
    directory = tmp_path_factory.mktemp("mosquitto-acl")
    passwords = write_password_file(directory / "passwd", ACCOUNTS)
    acl = directory / "acl"
    acl.write_text(DEPLOYED_ACL.read_text() + GROUP_GRANTS)
    broker = start_mosquitto(directory, password_file=passwords, acl_file=acl)
    yield broker
    broker.stop()


def account(broker: MosquittoBroker, user: str, protocol: int = 5) -> MqttSettings:
    """Settings for one of the accounts."""
    return MqttSettings(
        broker.url, f"{user}-{protocol}", username=user, password=ACCOUNTS[user], protocol=protocol
    )


@pytest.mark.parametrize("protocol", [5, 4])
async def test_a_device_cannot_publish_on_another_devices_topics(
    secured: MosquittoBroker, connect: Connect, protocol: int
) -> None:
    control_plane = await connect(
        account(secured, "control-plane"), subscribe=[fleet_filter("telemetry")]
    )
    device_a = await connect(account(secured, "dev-a", protocol))
    async with control_plane.messages() as stream:
        if protocol == 5:  # MQTT 5 says no in the PUBACK
            with pytest.raises(PublishFailed, match="Not authorized"):
                await device_a.publish(device_topic("dev-b", "telemetry"), b"spoofed")
        else:  # MQTT 3.1.1 has no way to say it: the broker drops the message
            await device_a.publish(device_topic("dev-b", "telemetry"), b"spoofed")
        await device_a.publish(device_topic("dev-a", "telemetry"), b"genuine")
        first = await next_message(stream)
    assert (first.topic, first.payload) == (device_topic("dev-a", "telemetry"), b"genuine")


async def test_a_device_cannot_publish_commands(secured: MosquittoBroker, connect: Connect) -> None:
    device_b = await connect(account(secured, "dev-b"), subscribe=[device_topic("dev-b", "cmd")])
    device_a = await connect(account(secured, "dev-a"))
    control_plane = await connect(account(secured, "control-plane"))
    async with device_b.messages() as stream:
        for target in ("dev-b", "dev-a"):  # not even on its own command topic
            with pytest.raises(PublishFailed):
                await device_a.publish(device_topic(target, "cmd"), b"forged command")
        await control_plane.publish(device_topic("dev-b", "cmd"), b"real command")
        assert (await next_message(stream)).payload == b"real command"


async def test_a_device_cannot_read_another_devices_commands(
    secured: MosquittoBroker, connect: Connect
) -> None:
    # The broker grants these subscriptions but delivers only what the ACL lets dev-a read.
    device_a = await connect(
        account(secured, "dev-a"),
        subscribe=[device_topic("dev-b", "cmd"), fleet_filter("cmd"), "edgefleet/v1/#"],
    )
    control_plane = await connect(account(secured, "control-plane"))
    async with device_a.messages() as stream:
        await control_plane.publish(device_topic("dev-b", "cmd"), b"for b")
        await control_plane.publish(device_topic("dev-a", "cmd"), b"for a")
        message = await next_message(stream)
    assert (message.topic, message.payload) == (device_topic("dev-a", "cmd"), b"for a")


async def test_a_device_reads_only_its_groups_commands(
    secured: MosquittoBroker, connect: Connect
) -> None:
    device_a = await connect(
        account(secured, "dev-a"), subscribe=device_command_filters("dev-a", ["line-1", "line-2"])
    )
    control_plane = await connect(account(secured, "control-plane"))
    async with device_a.messages() as stream:
        await control_plane.publish(group_command_topic("line-2"), b"not a member")
        await control_plane.publish(group_command_topic("line-1"), b"member")
        message = await next_message(stream)
    assert (message.topic, message.payload) == (group_command_topic("line-1"), b"member")


async def test_the_control_plane_replicas_share_the_ingest(
    secured: MosquittoBroker, connect: Connect
) -> None:
    received: list[bytes] = []
    for replica in range(2):
        settings = MqttSettings(
            secured.url, f"cp-{replica}", username="control-plane", password="pw-cp"
        )
        client = await connect(settings, subscribe=[f"$share/ingest/{fleet_filter('events')}"])
        client.on_message.append(lambda message: received.append(message.payload))
    device_a = await connect(account(secured, "dev-a"))
    for n in range(6):
        await device_a.publish(device_topic("dev-a", "events"), b"%d" % n)
    await until(lambda: len(received) >= 6, 5)
    assert sorted(received) == [b"%d" % n for n in range(6)]  # each to one replica only


async def test_a_wrong_password_is_refused(secured: MosquittoBroker) -> None:
    settings = MqttSettings(secured.url, "intruder", username="dev-a", password="guess")
    async with MqttClient(settings) as client:
        with pytest.raises(ConnectRefused, match="Not authorized"):
            await client.wait_connected(10)
