"""The new-rollout form: its fields, their defaults, and the API request body they make.

The form asks in operators' units (percentages for the error-rate gate, seconds, "10%" or a
device count for sizes) and produces the same body as `POST /api/v1/rollouts`, which
`control_plane.rollouts.create_rollout` validates: this module only checks that numbers are
numbers.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from control_plane.api.errors import InvalidRequest
from control_plane.rollout_gates import Gates

MAX_FIELD_CHARS = 1000
_GATES = Gates()

# name -> (label, default, hint); the order is the form's.
FIELDS: dict[str, tuple[str, str, str]] = {
    "release": ("Model version", "", "the signed version to roll out"),
    "target": ("Target", "all", "all, group:NAME, label:KEY=VALUE[,...] or device:ID[,ID...]"),
    "strategy": ("Strategy", "canary", ""),
    "canary": ("Canary size", "10%", "a percentage of the target, or a device count"),
    "waves": ("Waves", "50%, 100%", "cumulative percentages or counts, comma-separated"),
    "rate_per_minute": ("Rate limit", "", "new assignments per minute within a wave (optional)"),
    "wait_s": ("Observe each wave for", "300", "seconds after a wave is assigned"),
    "activation_timeout_s": ("Activation timeout", "900", "seconds; later counts as failed"),
    "max_failure_pct": (
        "Max failed activations",
        f"{_GATES.max_failure_pct:g}",
        "percent of a wave's devices",
    ),
    "max_error_rate_pct": (
        "Max error rate",
        f"{_GATES.max_error_rate * 100:g}",
        "percent of requests to the new version",
    ),
    "max_p95_ratio": (
        "Max p95 latency ratio",
        f"{_GATES.max_p95_ratio:g}",
        "new p95 over the previous version's, on the same devices",
    ),
    "min_requests": (
        "Min requests",
        str(_GATES.min_requests),
        "fewer and the error and latency gates have no data",
    ),
    "on_failure": ("On a failing gate", _GATES.on_failure, ""),
}


@dataclass(frozen=True)
class RolloutRequest:
    """What the form asked for, as `create_rollout` takes it."""

    model: str
    version: int
    target: str
    strategy: dict[str, Any]
    gates: dict[str, Any]


def defaults() -> dict[str, str]:
    """The form's initial values."""
    return {name: default for name, (_, default, _) in FIELDS.items()}


def field_values(form: Mapping[str, Any]) -> dict[str, str]:
    """The submitted values as text (missing ones: the defaults), to show the form again."""
    values = defaults()
    for name in FIELDS:
        raw = form.get(name)
        if isinstance(raw, str):
            values[name] = raw.strip()[:MAX_FIELD_CHARS]
    return values


def parse(values: Mapping[str, str]) -> RolloutRequest:
    """The request body the form describes; `InvalidRequest` names the field that is wrong."""
    model, sep, raw_version = values["release"].rpartition(":")
    if not sep or not model or not raw_version.isdigit():
        raise InvalidRequest("choose the model version to roll out")
    strategy: dict[str, Any] = {
        "kind": "canary" if values["strategy"] == "canary" else "all",
        "wait_s": _number(values, "wait_s"),
        "activation_timeout_s": _number(values, "activation_timeout_s"),
    }
    if values["rate_per_minute"]:
        strategy["rate_per_minute"] = int(_number(values, "rate_per_minute"))
    if strategy["kind"] == "canary":
        strategy["canary"] = values["canary"] or "10%"
        strategy["waves"] = [w.strip() for w in values["waves"].split(",") if w.strip()]
    gates = {
        "max_failure_pct": _number(values, "max_failure_pct"),
        "max_error_rate": _number(values, "max_error_rate_pct") / 100,
        "max_p95_ratio": _number(values, "max_p95_ratio"),
        "min_requests": int(_number(values, "min_requests")),
        "on_failure": values["on_failure"],
    }
    return RolloutRequest(model, int(raw_version), values["target"], strategy, gates)


def _number(values: Mapping[str, str], name: str) -> float:
    raw = values[name]
    try:
        number = float(raw)
    except ValueError:
        raise InvalidRequest(f"{FIELDS[name][0]} must be a number, not {raw!r}") from None
    if number < 0 or number != number or number == float("inf"):
        raise InvalidRequest(f"{FIELDS[name][0]} must be a number of at least 0")
    return number
