"""What devices publish, checked and turned into the records the ingest stores.

The envelope has been validated already (`shared.mqtt.envelope`); this module checks the
payload's shape, as `docs/telemetry.md` describes it, and raises `MalformedPayload` naming the
part at fault for a message that cannot be stored at all. A telemetry message whose model
entries are partly bad keeps its good entries; each bad one is listed in `rejected` with its
reason (`sample.<field>`, or `latency_buckets` for a histogram over other bounds, which could
not be added to the fleet's). Names are length-checked against the columns they go into, so a
message can never make a whole batch fail in the database.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeGuard

from control_plane.errors import ControlPlaneError
from shared.histogram import LATENCY_BUCKETS, LATENCY_COUNTS_LENGTH
from shared.mqtt.envelope import Envelope

MAX_MODEL = 200  # TelemetrySample.model, DeviceEvent.model
MAX_BACKEND = 100
MAX_EVENT_KIND = 50
MAX_EVENT_NAME = 100
MAX_AGENT_VERSION = 50
MAX_INT32 = 2**31 - 1
MAX_INT64 = 2**63 - 1
MAX_TIME = 253402300799.0  # 9999-12-31T23:59:59Z: beyond it `datetime` cannot follow
_BUCKETS = list(LATENCY_BUCKETS)
_INT_ONLY = {int}
GPU_DEVICES = frozenset({"cuda", "tensorrt"})
ARM_ARCHES = frozenset({"aarch64", "arm64", "armv7l", "armv8l", "armv6l", "arm"})
X86_ARCHES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})


class MalformedPayload(ControlPlaneError):
    """A device's payload does not have the shape its schema promises; `reason` names why."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Sample:
    """One model version's figures from one telemetry message."""

    model: str
    version: int
    backend: str | None
    requests: int
    errors: int
    latency_counts: list[int]
    throughput_rps: float


@dataclass(frozen=True, slots=True)
class Telemetry:
    """A telemetry message: its samples, and why any entries were left out."""

    interval_s: float
    samples: list[Sample]
    rejected: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Event:
    """An event message, in the columns of `DeviceEvent`."""

    kind: str
    time: datetime
    model: str | None
    version: int | None
    name: str | None
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Status:
    """A presence message; everything but `online` is None when the device is offline."""

    online: bool
    agent_version: str | None = None
    models: list[dict[str, Any]] | None = None
    hardware: dict[str, Any] | None = None

    @property
    def backend_class(self) -> str:
        """The device's canary stratum, from what it runs and what it has."""
        return backend_class(self.models or [], self.hardware)


def envelope_time(envelope: Envelope) -> datetime:
    """The publisher's time as a UTC datetime; `MalformedPayload` if no calendar holds it."""
    return _datetime(envelope.time, "time")


def parse_telemetry(payload: dict[str, Any]) -> Telemetry:
    """The samples of a telemetry payload (bad entries left out, with their reasons)."""
    interval = payload.get("interval_s")
    if not _is_number(interval) or interval < 0:
        raise MalformedPayload("telemetry.interval_s", "expected a number >= 0")
    entries = payload.get("models")
    if not isinstance(entries, list):
        raise MalformedPayload("telemetry.models", "expected a list")
    samples: list[Sample] = []
    rejected: list[str] = []
    for entry in entries:
        try:
            samples.append(_sample(entry, float(interval)))
        except MalformedPayload as error:
            rejected.append(error.reason)
    return Telemetry(float(interval), _one_per_model(samples, rejected), rejected)


def _sample(entry: Any, interval: float) -> Sample:
    if not isinstance(entry, dict):
        raise MalformedPayload("sample", "a models[] entry is not an object")
    errors = entry.get("errors")
    if not isinstance(errors, dict) or not _are_counts(list(errors.values())):
        raise MalformedPayload("sample.errors", "expected an object of counts")
    bounds = entry.get("latency_buckets_s")
    if bounds != _BUCKETS:
        raise MalformedPayload("latency_buckets", "not the bounds of shared.histogram")
    counts = entry.get("latency_counts")
    if (
        not isinstance(counts, list)
        or len(counts) != LATENCY_COUNTS_LENGTH
        or not _are_counts(counts)
    ):
        raise MalformedPayload(
            "sample.latency_counts", f"expected {LATENCY_COUNTS_LENGTH} counts >= 0"
        )
    requests = entry.get("requests")
    if not _is_count(requests):
        raise MalformedPayload("sample.requests", "expected an integer >= 0")
    throughput = entry.get("throughput_rps", requests / interval if interval else 0.0)
    if not _is_number(throughput) or throughput < 0:
        raise MalformedPayload("sample.throughput_rps", "expected a number >= 0")
    total_errors = sum(errors.values())
    if total_errors > MAX_INT64:
        raise MalformedPayload("sample.errors", "too large")
    backend = entry.get("backend")
    return Sample(
        model=_name(entry.get("model"), MAX_MODEL, "sample.model"),
        version=_version(entry.get("version"), "sample.version"),
        backend=_optional_name(backend, MAX_BACKEND, "sample.backend") or None,
        requests=requests,
        errors=total_errors,
        latency_counts=counts,
        throughput_rps=float(throughput),
    )


def _one_per_model(samples: list[Sample], rejected: list[str]) -> list[Sample]:
    """At most one sample per model version, the key of `TelemetrySample` rows.

    During a probation the previous version stays loaded and reports too: both are kept. The
    same version twice in one message is malformed; the first is kept, the other rejected.
    """
    kept: dict[tuple[str, int], Sample] = {}
    for sample in samples:
        key = (sample.model, sample.version)
        if key in kept:
            rejected.append("sample.duplicate_version")
            continue
        kept[key] = sample
    return list(kept.values())


def parse_event(payload: dict[str, Any], envelope: Envelope) -> Event:
    """An event payload as a `DeviceEvent` row (the whole payload is kept too)."""
    kind = _name(payload.get("kind"), MAX_EVENT_KIND, "event.kind")
    model = _optional_name(payload.get("model"), MAX_MODEL, "event.model")
    raw_version = payload.get("version")
    version = None if raw_version is None else _version(raw_version, "event.version")
    raw_time = payload.get("time")
    # A lifecycle event says when the transition happened; the envelope, when it was queued.
    when = _datetime(raw_time, "event.time") if _is_number(raw_time) else envelope_time(envelope)
    return Event(kind, when, model, version, _event_name(kind, payload), payload)


def _event_name(kind: str, payload: dict[str, Any]) -> str | None:
    """The one word that says what happened: the lifecycle state, or the command's outcome."""
    if kind == "lifecycle":
        name = _optional_name(payload.get("state"), MAX_EVENT_NAME, "event.state")
        if name is None:
            raise MalformedPayload("event.state", "a lifecycle event needs a state")
        return name
    if kind == "command":
        command = payload.get("command")
        outcome = "ok" if payload.get("ok") is True else "failed"
        if isinstance(command, str) and command.isprintable():
            return f"{command[: MAX_EVENT_NAME - 7]}:{outcome}"
        return outcome
    if kind == "selection":
        backend = payload.get("backend")
        if isinstance(backend, str) and backend.isprintable():
            return backend[:MAX_EVENT_NAME]
    return None


def parse_status(payload: dict[str, Any]) -> Status:
    """A status payload: online with what the device runs and has, or offline."""
    state = payload.get("state")
    if state == "offline":
        return Status(online=False)
    if state != "online":
        raise MalformedPayload("status.state", "expected 'online' or 'offline'")
    models = payload.get("models", [])
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise MalformedPayload("status.models", "expected a list of objects")
    hardware = payload.get("hardware")
    if hardware is not None and not isinstance(hardware, dict):
        raise MalformedPayload("status.hardware", "expected an object or null")
    version = _optional_name(payload.get("agent_version"), MAX_AGENT_VERSION, "status.agent")
    return Status(True, version, models, hardware)


def backend_class(models: list[dict[str, Any]], hardware: dict[str, Any] | None) -> str:
    """gpu, openvino, arm-cpu, x86-cpu or unknown: the device's canary stratum.

    "gpu" when a model runs on CUDA or TensorRT or the hardware lists an NVIDIA GPU (the agent
    lists GPUs that NVML found); "openvino" when a model runs on OpenVINO; else the CPU's family.
    """
    backends = [m.get("backend") for m in models]
    names = [b.lower() for b in backends if isinstance(b, str)]
    gpus = hardware.get("gpus") if hardware else None
    if any(b.partition("/")[2] in GPU_DEVICES for b in names) or (isinstance(gpus, list) and gpus):
        return "gpu"
    if any(b.startswith("openvino/") for b in names):
        return "openvino"
    arch = hardware.get("arch") if hardware else None
    arch = arch.lower() if isinstance(arch, str) else ""
    if arch in ARM_ARCHES or arch.startswith("armv"):
        return "arm-cpu"
    if arch in X86_ARCHES:
        return "x86-cpu"
    return "unknown"


def _is_number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_INT64


def _are_counts(values: list[Any]) -> bool:
    """`_is_count` of every value, in C loops: this runs on every latency bucket received."""
    # `type(v) is int` leaves out bool (and any other subclass, which JSON never produces).
    if not values:
        return True
    return set(map(type, values)) == _INT_ONLY and min(values) >= 0 and max(values) <= MAX_INT64


def _version(value: Any, reason: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_INT32:
        raise MalformedPayload(reason, "expected an integer version >= 0")
    return value


def _name(value: Any, limit: int, reason: str) -> str:
    name = _optional_name(value, limit, reason)
    if not name:
        raise MalformedPayload(reason, "missing or empty")
    return name


def _optional_name(value: Any, limit: int, reason: str) -> str | None:
    """A short printable string (no NUL, no lone surrogate: the database refuses those)."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit or not value.isprintable():
        raise MalformedPayload(reason, f"expected printable text of at most {limit} characters")
    return value


def _datetime(value: Any, reason: str) -> datetime:
    if not _is_number(value) or not 0 <= value <= MAX_TIME:
        raise MalformedPayload(reason, "expected a Unix time in seconds")
    return datetime.fromtimestamp(value, UTC)
