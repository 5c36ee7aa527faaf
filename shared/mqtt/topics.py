"""The EdgeFleet topic grammar, owned here and nowhere else.

    edgefleet/v1/dev/{device_id}/status      retained; the last will says "offline"
    edgefleet/v1/dev/{device_id}/telemetry   periodic reports, QoS 1
    edgefleet/v1/dev/{device_id}/events      state transitions, QoS 1
    edgefleet/v1/dev/{device_id}/cmd         signed commands for one device, QoS 1
    edgefleet/v1/group/{group}/cmd           signed commands for every member of a group

Device ids and group names are 1-64 characters of `[A-Za-z0-9_.-]`: no slash and no wildcard,
so an id can never widen a subscription or an ACL pattern (`%u` in Mosquitto's ACL is the
device id). `matches` implements MQTT filter matching; receivers use it to drop messages
that match none of their subscriptions (the embedded amqtt broker sends such messages).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from shared.mqtt.errors import TopicError

PREFIX = "edgefleet/v1"
DEVICE_KINDS = ("status", "telemetry", "events", "cmd")
COMMAND_KIND = "cmd"
GROUP_COMMANDS_FILTER = f"{PREFIX}/group/+/{COMMAND_KIND}"  # every group's commands
_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SHARED_PREFIX = "$share/"

Scope = Literal["dev", "group"]


@dataclass(frozen=True, slots=True)
class Topic:
    """A parsed EdgeFleet topic: scope "dev" or "group", the device id or group, the kind."""

    scope: Scope
    ident: str
    kind: str


def check_id(ident: str, what: str = "device id") -> str:
    """Return `ident` when it is a valid device id or group name; raise `TopicError`."""
    if not _ID.fullmatch(ident):
        raise TopicError(f"{what} {ident!r} is not 1-64 characters of letters, digits, '_.-'")
    return ident


def device_topic(device_id: str, kind: str) -> str:
    """The topic a device publishes `kind` on (or, for "cmd", receives its commands on)."""
    return _device_topic(check_id(device_id), kind)


def _device_topic(ident: str, kind: str) -> str:
    if kind not in DEVICE_KINDS:
        raise TopicError(f"unknown topic kind {kind!r}; expected one of {', '.join(DEVICE_KINDS)}")
    return f"{PREFIX}/dev/{ident}/{kind}"


def group_command_topic(group: str) -> str:
    """The topic commands for every member of `group` are published on."""
    return f"{PREFIX}/group/{check_id(group, 'group')}/{COMMAND_KIND}"


def device_command_filters(device_id: str, groups: Sequence[str]) -> list[str]:
    """Every topic a device subscribes to for commands: its own, then each group's."""
    return [device_topic(device_id, COMMAND_KIND), *(group_command_topic(g) for g in groups)]


def fleet_filter(kind: str) -> str:
    """The filter matching `kind` from every device (`edgefleet/v1/dev/+/<kind>`)."""
    return device_filter(None, kind)


def device_filter(device_id: str | None, kind: str | None) -> str:
    """A filter over device topics: one device or all (None), one kind or all (None)."""
    ident = "+" if device_id is None else check_id(device_id)
    return f"{PREFIX}/dev/{ident}/+" if kind is None else _device_topic(ident, kind)


def parse_topic(topic: str) -> Topic:
    """Parse a concrete EdgeFleet topic; raise `TopicError` for anything else."""
    head = f"{PREFIX}/"
    if not topic.startswith(head):
        raise TopicError(f"topic {topic!r} is not under {PREFIX}/")
    parts = topic[len(head) :].split("/")
    if len(parts) != 3:
        raise TopicError(f"topic {topic!r} does not have the form {PREFIX}/<scope>/<id>/<kind>")
    scope, ident, kind = parts
    if scope == "dev":
        if kind not in DEVICE_KINDS:
            raise TopicError(f"topic {topic!r}: unknown kind {kind!r}")
        return Topic("dev", check_id(ident), kind)
    if scope == "group":
        if kind != COMMAND_KIND:
            raise TopicError(f"topic {topic!r}: a group topic carries only {COMMAND_KIND!r}")
        return Topic("group", check_id(ident, "group"), kind)
    raise TopicError(f"topic {topic!r}: unknown scope {scope!r}; expected 'dev' or 'group'")


def matches(topic_filter: str, topic: str) -> bool:
    """MQTT matching of a concrete topic against a filter (`+`, `#`, `$share/<group>/...`)."""
    if topic_filter.startswith(_SHARED_PREFIX):
        _, _, topic_filter = topic_filter[len(_SHARED_PREFIX) :].partition("/")
    if not topic_filter or not topic:
        return False
    filter_levels = topic_filter.split("/")
    topic_levels = topic.split("/")
    # Wildcards at the first level never match topics that start with '$' ($SYS/...).
    if topic.startswith("$") and filter_levels[0] in ("+", "#"):
        return False
    for index, level in enumerate(filter_levels):
        if level == "#":
            return index == len(filter_levels) - 1  # '#' also matches the parent level
        if index >= len(topic_levels):
            return False
        if level != "+" and level != topic_levels[index]:
            return False
    return len(filter_levels) == len(topic_levels)
