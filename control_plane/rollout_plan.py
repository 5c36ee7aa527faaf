"""What a rollout will do, decided once when it is created: its target, strategy and waves.

Pure functions, no database: `parse_target` reads `group:G`, `label:k=v[,k=v]`,
`device:ID[,ID...]` or `all`; `Strategy.parse` normalises the operator's strategy; `plan_waves`
splits the resolved devices into waves.

A canary is stratified: every backend class present in the target (gpu, openvino, arm-cpu,
x86-cpu, unknown) gets at least one device in it, so a version that only breaks on one kind of
hardware fails its gate before the waves reach the rest of that kind. The canary is then filled
up to its size round-robin across the classes. Waves are cumulative percentages of the target
("25%" means a quarter of the devices have the version after that wave) or device counts;
devices left over after the last wave form a final wave, so a rollout always reaches its target.
Within a class, devices are taken in a fixed pseudo-random order seeded by the rollout, so the
plan is reproducible and does not always pick the same (alphabetically first) devices.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from control_plane.errors import ControlPlaneError

MAX_WAVES = 50
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,99}")


class InvalidRollout(ControlPlaneError):
    """A rollout request is malformed (target, strategy, gates); permanent until it is fixed."""


@dataclass(frozen=True)
class Target:
    """Which devices a rollout addresses."""

    kind: str  # all, group, label, device
    group: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    devices: tuple[str, ...] = ()

    def __str__(self) -> str:
        if self.kind == "group":
            return f"group:{self.group}"
        if self.kind == "label":
            return "label:" + ",".join(f"{k}={v}" for k, v in self.labels)
        if self.kind == "device":
            return "device:" + ",".join(self.devices)
        return "all"


def parse_target(text: str) -> Target:
    """`group:G`, `label:k=v[,k=v...]`, `device:ID[,ID...]` or `all`."""
    kind, sep, rest = text.strip().partition(":")
    if kind == "all" and not sep:
        return Target("all")
    if not sep or not rest:
        raise InvalidRollout(
            f"target {text!r} must be group:NAME, label:KEY=VALUE[,...], device:ID[,...] or all"
        )
    if kind == "group":
        return Target("group", group=_name(rest, "group"))
    if kind == "label":
        labels = []
        for pair in rest.split(","):
            key, eq, value = pair.partition("=")
            if not eq:
                raise InvalidRollout(f"label selector {pair!r} must be KEY=VALUE")
            labels.append((_name(key, "label key"), value))
        return Target("label", labels=tuple(labels))
    if kind == "device":
        devices = tuple(dict.fromkeys(_name(d, "device id") for d in rest.split(",")))
        return Target("device", devices=devices)
    raise InvalidRollout(f"unknown target kind {kind!r}: use group, label, device or all")


def _name(value: str, what: str) -> str:
    value = value.strip()
    if not _KEY.fullmatch(value) and not (what == "device id" and value):
        raise InvalidRollout(f"{what} {value!r} is not a valid name")
    return value


@dataclass(frozen=True)
class Step:
    """One canary or wave size: a cumulative percentage of the target, or a device count."""

    percent: float | None = None
    count: int | None = None

    @classmethod
    def parse(cls, value: object, what: str) -> Step:
        """`"25%"`, `25.0` with `percent`, `{"percent": 25}`, `{"count": 3}` or `3`."""
        if isinstance(value, Mapping):
            if "percent" in value:
                return cls._percent(value["percent"], what)
            if "count" in value:
                return cls._count(value["count"], what)
        if isinstance(value, str):
            text = value.strip()
            if text.endswith("%"):
                return cls._percent(text[:-1], what)
            return cls._count(text, what)
        if isinstance(value, int) and not isinstance(value, bool):
            return cls._count(value, what)
        raise InvalidRollout(f"{what} {value!r} must be a percentage like '10%' or a count")

    @classmethod
    def _percent(cls, raw: object, what: str) -> Step:
        try:
            percent = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise InvalidRollout(f"{what}: {raw!r} is not a percentage") from None
        if not 0 < percent <= 100:
            raise InvalidRollout(f"{what}: {percent}% must be above 0 and at most 100")
        return cls(percent=percent)

    @classmethod
    def _count(cls, raw: object, what: str) -> Step:
        try:
            count = int(raw)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise InvalidRollout(f"{what}: {raw!r} is not a device count") from None
        if count < 1:
            raise InvalidRollout(f"{what}: a wave needs at least one device, not {count}")
        return cls(count=count)

    def as_json(self) -> dict[str, float | int]:
        """`{"percent": P}` or `{"count": N}`."""
        return {"percent": self.percent} if self.percent is not None else {"count": self.count or 0}

    def reach(self, done: int, total: int) -> int:
        """How many devices have the version once this step is done (cumulative)."""
        if self.percent is not None:
            return min(total, max(done + 1, math.ceil(total * self.percent / 100)))
        return min(total, done + (self.count or 0))


@dataclass(frozen=True)
class Strategy:
    """All at once, or a canary followed by waves, with pacing."""

    kind: str  # all, canary
    canary: Step | None = None
    waves: tuple[Step, ...] = ()
    rate_per_minute: int | None = None  # new assignments per minute within a wave
    wait_s: float = 300.0  # observation time after a wave is fully assigned, before its gates
    activation_timeout_s: float = 900.0  # a device not active by then counts as failed

    @classmethod
    def parse(cls, body: Mapping[str, Any] | None) -> Strategy:
        """Normalise the strategy object of a rollout request (missing: all at once)."""
        body = dict(body or {})
        kind = body.pop("kind", "all")
        if kind not in ("all", "canary"):
            raise InvalidRollout(f"strategy kind {kind!r} must be 'all' or 'canary'")
        canary = body.pop("canary", None)
        waves = body.pop("waves", None) or []
        rate = body.pop("rate_per_minute", None)
        wait_s = _seconds(body.pop("wait_s", 300.0), "wait_s")
        timeout_s = _seconds(body.pop("activation_timeout_s", 900.0), "activation_timeout_s")
        if body:
            raise InvalidRollout(f"unknown strategy fields: {', '.join(sorted(body))}")
        if not isinstance(waves, list) or len(waves) > MAX_WAVES:
            raise InvalidRollout(f"waves must be a list of at most {MAX_WAVES} steps")
        if rate is not None and (not isinstance(rate, int) or isinstance(rate, bool) or rate < 1):
            raise InvalidRollout(f"rate_per_minute must be a positive integer, not {rate!r}")
        if kind == "all":
            if canary is not None or waves:
                raise InvalidRollout("an 'all' strategy has no canary or waves; use 'canary'")
            return cls("all", rate_per_minute=rate, wait_s=wait_s, activation_timeout_s=timeout_s)
        return cls(
            "canary",
            canary=Step.parse(canary if canary is not None else "10%", "canary"),
            waves=tuple(Step.parse(w, f"wave {i + 1}") for i, w in enumerate(waves)),
            rate_per_minute=rate,
            wait_s=wait_s,
            activation_timeout_s=timeout_s,
        )

    def as_json(self) -> dict[str, Any]:
        """The normalised strategy, as stored with the rollout."""
        return {
            "kind": self.kind,
            "canary": self.canary.as_json() if self.canary else None,
            "waves": [w.as_json() for w in self.waves],
            "rate_per_minute": self.rate_per_minute,
            "wait_s": self.wait_s,
            "activation_timeout_s": self.activation_timeout_s,
        }


def _seconds(raw: object, what: str) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or raw < 0:
        raise InvalidRollout(f"{what} must be a number of seconds, not {raw!r}")
    return float(raw)


def plan_waves(
    devices: Sequence[tuple[str, str]], strategy: Strategy, seed: int
) -> list[list[str]]:
    """Split `(device_id, backend_class)` pairs into waves of device ids (canary first)."""
    if not devices:
        return []
    if strategy.kind == "all":
        return [sorted(d for d, _ in devices)]
    order = _stratified_order(devices, seed)
    total = len(order)
    assert strategy.canary is not None
    classes = len({backend for _, backend in devices})
    canary = max(strategy.canary.reach(0, total), min(classes, total))
    waves = [order[:canary]]
    done = canary
    for step in strategy.waves:
        if done >= total:
            break
        reach = step.reach(done, total)
        waves.append(order[done:reach])
        done = reach
    if done < total:
        waves.append(order[done:])
    return waves


def _stratified_order(devices: Sequence[tuple[str, str]], seed: int) -> list[str]:
    """Round-robin across backend classes, each class shuffled reproducibly."""
    by_class: dict[str, list[str]] = {}
    for device, backend in sorted(devices):
        by_class.setdefault(backend, []).append(device)
    rng = random.Random(seed)
    queues = []
    for backend in sorted(by_class):
        members = by_class[backend]
        rng.shuffle(members)
        queues.append(members)
    order: list[str] = []
    while any(queues):
        for queue in queues:
            if queue:
                order.append(queue.pop(0))
    return order
