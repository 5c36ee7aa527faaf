"""Probe the hardware the agent runs on: CPU, memory, NVIDIA GPUs and runtime devices.

Every probe degrades instead of failing: no /proc/cpuinfo (macOS, Windows) means an unknown
model and no features; no NVML means no GPUs, with the reason recorded. The fingerprint covers
only what changes performance, so it can key the cache of measured runtime choices.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from agent.runtimes.registry import RuntimeRegistry, RuntimeStatus

CPUINFO = Path("/proc/cpuinfo")

# cpuinfo flag -> reported feature. x86 "flags" and ARM "Features" lines share one table.
_FEATURE_NAMES = {
    "avx": "avx",
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512_bf16": "avx512_bf16",
    "avx512_vnni": "avx512_vnni",
    "avx512vnni": "avx512_vnni",
    "avx_vnni": "avx_vnni",
    "amx_tile": "amx",
    "amx_bf16": "amx",
    "amx_int8": "amx",
    "neon": "neon",
    "asimd": "neon",
    "asimddp": "asimddp",
    "sve": "sve",
    "sve2": "sve2",
    "i8mm": "i8mm",
    "bf16": "bf16",
}


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One NVIDIA GPU as NVML reports it."""

    name: str
    memory_bytes: int
    driver: str
    compute_capability: str


@dataclass(frozen=True, slots=True)
class OpenVinoDevice:
    """One OpenVINO device and its full name (e.g. `CPU`, `AMD EPYC`)."""

    name: str
    full_name: str


@dataclass(frozen=True, slots=True)
class HardwareInfo:
    """What the agent found about this machine."""

    os: str
    arch: str
    cpu_model: str
    logical_cores: int
    physical_cores: int | None
    cpu_features: tuple[str, ...]
    memory_bytes: int
    gpus: tuple[GpuInfo, ...]
    gpu_reason: str | None  # why `gpus` is empty, when it is
    onnxruntime_providers: tuple[str, ...]
    openvino_devices: tuple[OpenVinoDevice, ...]
    runtimes: tuple[RuntimeStatus, ...]

    def fingerprint(self) -> str:
        """A short hash of what affects performance; runtime versions are keyed separately."""
        relevant = {
            "arch": self.arch,
            "cpu": self.cpu_model,
            "features": sorted(self.cpu_features),
            "cores": self.logical_cores,
            "gpus": sorted(g.name for g in self.gpus),
            "ort": sorted(self.onnxruntime_providers),
            "ov": sorted(d.name for d in self.openvino_devices),
            "devices": sorted(f"{r.name}/{d}" for r in self.runtimes for d in r.devices),
        }
        digest = hashlib.sha256(json.dumps(relevant, sort_keys=True).encode())
        return digest.hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        """Return the probe as JSON-ready data, fingerprint included."""
        data = asdict(self)
        data["fingerprint"] = self.fingerprint()
        return data


def parse_cpuinfo(text: str) -> tuple[str, tuple[str, ...]]:
    """Return (model name, normalised features) from /proc/cpuinfo text (x86 or ARM)."""
    fields: dict[str, str] = {}
    flags: set[str] = set()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        else:
            fields.setdefault(key, value.strip())
    features = sorted({_FEATURE_NAMES[f] for f in flags if f in _FEATURE_NAMES})
    return _cpu_model(fields), tuple(features)


def _cpu_model(fields: dict[str, str]) -> str:
    # x86 has "model name" (its "model" is a number); ARM boards have "Model" or "Hardware",
    # ARM servers often only the implementer and part codes.
    for key in ("model name", "cpu model", "model", "hardware"):
        value = fields.get(key, "")
        if value and not value.isdigit():
            return value
    if "cpu implementer" in fields and "cpu part" in fields:
        return f"implementer {fields['cpu implementer']} part {fields['cpu part']}"
    return ""


def _read_cpuinfo(path: Path) -> tuple[str, tuple[str, ...]]:
    try:
        model, features = parse_cpuinfo(path.read_text(errors="replace"))
    except OSError:
        model, features = "", ()
    return model or platform.processor() or "unknown", features


def probe_nvidia_gpus() -> tuple[tuple[GpuInfo, ...], str | None]:
    """List NVIDIA GPUs through NVML, or return none and the reason."""
    if importlib.util.find_spec("pynvml") is None:
        return (), "nvidia-ml-py (pynvml) is not installed"
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # no driver, no libnvidia-ml: an ordinary CPU-only machine
        return (), f"NVML is not available: {exc}"
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
            gpus.append(
                GpuInfo(
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_bytes=int(pynvml.nvmlDeviceGetMemoryInfo(handle).total),
                    driver=driver,
                    compute_capability=f"{major}.{minor}",
                )
            )
    except Exception as exc:
        return (), f"NVML query failed: {exc}"
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return tuple(gpus), None if gpus else "NVML reports no GPUs"


def gpu_usage() -> list[dict[str, float | int | str]]:
    """Current utilisation, memory in use and temperature of each NVIDIA GPU (empty if none)."""
    if importlib.util.find_spec("pynvml") is None:
        return []
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no driver: a CPU-only device
        return []
    usage: list[dict[str, float | int | str]] = []
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            usage.append(
                {
                    "index": i,
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "utilization_percent": int(rates.gpu),
                    "memory_used_bytes": int(memory.used),
                    "memory_total_bytes": int(memory.total),
                    "temperature_c": int(pynvml.nvmlDeviceGetTemperature(handle, 0)),
                }
            )
    except Exception:  # a GPU that vanished or a driver hiccup: report what was read
        pass
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return usage


def _text(value: object) -> str:
    # Older nvidia-ml-py releases return bytes, newer ones str.
    return value.decode() if isinstance(value, bytes) else str(value)


def _onnxruntime_providers(status: RuntimeStatus | None) -> tuple[str, ...]:
    if status is None or not status.installed:
        return ()
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except Exception:
        return ()
    return tuple(str(p) for p in providers if p != "AzureExecutionProvider")


def _openvino_devices(status: RuntimeStatus | None) -> tuple[OpenVinoDevice, ...]:
    if status is None or not status.installed:
        return ()
    from agent.runtimes.openvino import shared_core

    devices = []
    try:
        core = shared_core()
        for name in core.available_devices:
            try:
                full_name = str(core.get_property(name, "FULL_DEVICE_NAME"))
            except Exception:
                full_name = "unknown"
            devices.append(OpenVinoDevice(str(name), full_name))
    except Exception:
        return ()
    return tuple(devices)


def probe_hardware(
    registry: RuntimeRegistry, cpuinfo: Path = CPUINFO, list_devices: bool = True
) -> HardwareInfo:
    """Probe this machine; never raises for missing sources.

    With `list_devices=False` the runtimes are not asked for their devices, which would import
    every installed runtime (OpenVINO alone adds about 50 MB); the serving agent uses that
    lighter probe for its selection-cache fingerprint, since runtime versions are keyed apart.
    """
    cpu_model, features = _read_cpuinfo(cpuinfo)
    gpus, gpu_reason = probe_nvidia_gpus()
    statuses = {s.name: s for s in registry.statuses()} if list_devices else {}
    return HardwareInfo(
        os=f"{platform.system() or 'unknown'} {platform.release()}".strip(),
        arch=platform.machine() or "unknown",
        cpu_model=cpu_model,
        logical_cores=psutil.cpu_count(logical=True) or 1,
        physical_cores=psutil.cpu_count(logical=False),
        cpu_features=features,
        memory_bytes=int(psutil.virtual_memory().total),
        gpus=gpus,
        gpu_reason=gpu_reason,
        onnxruntime_providers=_onnxruntime_providers(statuses.get("onnxruntime")),
        openvino_devices=_openvino_devices(statuses.get("openvino")),
        runtimes=tuple(statuses.values()),
    )


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def format_table(info: HardwareInfo) -> str:
    """Render the probe as aligned plain-text tables for the CLI."""
    gib = 1024**3
    machine = [
        ("os", info.os),
        ("arch", info.arch),
        ("cpu", info.cpu_model),
        ("cores", f"{info.logical_cores} logical, {info.physical_cores or '?'} physical"),
        ("features", " ".join(info.cpu_features) or "-"),
        ("memory", f"{info.memory_bytes / gib:.1f} GiB"),
        ("onnxruntime providers", " ".join(info.onnxruntime_providers) or "-"),
        ("fingerprint", info.fingerprint()),
    ]
    lines = _table(("machine", ""), machine)
    gpus = [
        (g.name, f"{g.memory_bytes / gib:.1f} GiB", g.compute_capability, g.driver)
        for g in info.gpus
    ]
    lines.append("")
    if gpus:
        lines += _table(("gpu", "memory", "compute", "driver"), gpus)
    else:
        lines.append(f"gpu: none ({info.gpu_reason})")
    if info.openvino_devices:
        lines.append("")
        ov_rows = [(d.name, d.full_name) for d in info.openvino_devices]
        lines += _table(("openvino device", "name"), ov_rows)
    runtimes = [
        (
            r.name,
            "yes" if r.installed else "no",
            r.version or "-",
            " ".join(r.devices) or "-",
            r.reason or "",
        )
        for r in info.runtimes
    ]
    lines.append("")
    lines += _table(("runtime", "installed", "version", "devices", "note"), runtimes)
    return "\n".join(lines)
