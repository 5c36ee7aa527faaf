"""The topic grammar: building, parsing and id checks, and MQTT filter matching."""

from __future__ import annotations

import pytest

from shared.mqtt.errors import TopicError
from shared.mqtt.topics import (
    DEVICE_KINDS,
    GROUP_COMMANDS_FILTER,
    PREFIX,
    Topic,
    device_command_filters,
    device_filter,
    device_topic,
    fleet_filter,
    group_command_topic,
    matches,
    parse_topic,
)


def test_device_and_group_topics() -> None:
    assert PREFIX == "edgefleet/v1"
    assert device_topic("edge-042", "status") == "edgefleet/v1/dev/edge-042/status"
    assert group_command_topic("line_3.a") == "edgefleet/v1/group/line_3.a/cmd"
    assert fleet_filter("telemetry") == "edgefleet/v1/dev/+/telemetry"
    assert device_filter("edge-042", None) == "edgefleet/v1/dev/edge-042/+"
    assert device_filter(None, None) == "edgefleet/v1/dev/+/+"
    assert GROUP_COMMANDS_FILTER == "edgefleet/v1/group/+/cmd"
    assert device_command_filters("d1", ["g1", "g2"]) == [
        "edgefleet/v1/dev/d1/cmd",
        "edgefleet/v1/group/g1/cmd",
        "edgefleet/v1/group/g2/cmd",
    ]


@pytest.mark.parametrize("kind", DEVICE_KINDS)
def test_parse_inverts_device_topic(kind: str) -> None:
    assert parse_topic(device_topic("d-1", kind)) == Topic("dev", "d-1", kind)


def test_parse_group_topic() -> None:
    assert parse_topic(group_command_topic("g")) == Topic("group", "g", "cmd")


@pytest.mark.parametrize(
    "ident", ["", "a/b", "+", "#", "a+", "x" * 65, "édge", "sp ace", "$SYS", "nul\x00"]
)
def test_invalid_ids_are_refused(ident: str) -> None:
    with pytest.raises(TopicError):
        device_topic(ident, "status")
    with pytest.raises(TopicError):
        group_command_topic(ident)


def test_longest_id_is_accepted() -> None:
    assert device_topic("x" * 64, "events").endswith("/events")


@pytest.mark.parametrize(
    "topic",
    [
        "edgefleet/v2/dev/d/status",
        "edgefleet/v1/dev/d",
        "edgefleet/v1/dev/d/status/extra",
        "edgefleet/v1/dev/d/config",
        "edgefleet/v1/dev/+/status",
        "edgefleet/v1/group/g/status",
        "edgefleet/v1/site/s/cmd",
        "other/topic",
        "",
    ],
)
def test_parse_refuses_topics_outside_the_grammar(topic: str) -> None:
    with pytest.raises(TopicError):
        parse_topic(topic)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(TopicError, match="unknown topic kind"):
        device_topic("d", "config")
    with pytest.raises(TopicError):
        fleet_filter("config")


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        ("a/b/c", "a/b/c", True),
        ("a/b/c", "a/b/d", False),
        ("a/+/c", "a/b/c", True),
        ("a/+/c", "a/b/c/d", False),
        ("a/+", "a", False),
        ("a/+", "a/", True),  # '+' matches an empty level
        ("a/#", "a", True),  # '#' matches the parent level too
        ("a/#", "a/b/c", True),
        ("#", "a/b", True),
        ("+/+", "a/b", True),
        ("+", "a/b", False),
        ("a/b", "a", False),
        ("a", "a/b", False),
        ("#", "$SYS/broker/load", False),  # wildcards do not reach $ topics
        ("+/broker/load", "$SYS/broker/load", False),
        ("$SYS/#", "$SYS/broker/load", True),
        ("$share/ingest/edgefleet/v1/dev/+/telemetry", "edgefleet/v1/dev/d/telemetry", True),
        ("$share/ingest/edgefleet/v1/dev/+/telemetry", "edgefleet/v1/dev/d/status", False),
        ("edgefleet/v1/dev/+/+", "edgefleet/v1/group/g/cmd", False),
        ("", "a", False),
    ],
)
def test_matches(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected
