"""Does a bundle suit this device? The manifest's signed compatibility section, checked.

A variant is usable when its runtime is installed at (at least) the version the bundle asks
for; the bundle is refused when no variant is usable, when the CPU lacks a feature it requires
(say `avx512_vnni` for an INT8 build), or when the device has less memory than it needs. The
check runs before anything is loaded, so an unsuitable bundle fails with a reason instead of
crashing a runtime.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from agent.errors import ActivationFailed
from shared.manifest import Compatibility, Variant


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    """What the device offers: runtime versions, CPU features, memory."""

    runtimes: Mapping[str, str]  # runtime name -> installed version ("1.32.0")
    cpu_features: frozenset[str]
    memory_bytes: int


def usable_variants(
    compatibility: Compatibility, variants: Sequence[Variant], device: DeviceProfile
) -> list[Variant]:
    """The variants this device can run; raise ActivationFailed saying why if none or unsuited."""
    missing = sorted(set(compatibility.cpu_features) - device.cpu_features)
    if missing:
        raise ActivationFailed(f"the bundle needs CPU features this device lacks: {missing}")
    if compatibility.min_memory_bytes > device.memory_bytes:
        raise ActivationFailed(
            f"the bundle needs {compatibility.min_memory_bytes / 2**20:.0f} MiB of memory, "
            f"this device has {device.memory_bytes / 2**20:.0f} MiB"
        )
    usable, reasons = [], []
    for variant in variants:
        installed = device.runtimes.get(variant.runtime)
        wanted = compatibility.min_runtime_versions.get(variant.runtime)
        if installed is None:
            reasons.append(f"{variant.file}: {variant.runtime} is not installed")
        elif wanted is not None and _older(installed, wanted):
            reasons.append(f"{variant.file}: {variant.runtime} {installed} < {wanted} required")
        else:
            usable.append(variant)
    if not usable:
        raise ActivationFailed("no variant of the bundle can run here: " + "; ".join(reasons))
    return usable


def _older(installed: str, wanted: str) -> bool:
    try:
        return Version(installed) < Version(wanted)
    except InvalidVersion:
        return installed != wanted  # unparseable: only an exact match is known to be fine
