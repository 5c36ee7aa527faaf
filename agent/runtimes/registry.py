"""Which runtimes are installed here, and which (runtime, device, file) candidates they offer.

`status()` is cheap for a missing runtime (a `find_spec` and a metadata read); listing devices
imports the runtime, once per adapter. A runtime that is missing or fails to import is reported
with a reason and offers no candidates; it never raises out of the registry.
"""

from __future__ import annotations

import abc
import importlib.metadata
import importlib.util
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.errors import RuntimeUnavailable
from agent.runtimes.base import Backend, Candidate, RuntimeOptions

# Default preference when nothing has been measured yet: accelerators first, then CPU.
_DEVICE_RANK = {"TensorRT": 0, "CUDA": 1, "GPU": 2, "NPU": 3}
_CPU_RANK = len(_DEVICE_RANK)


@dataclass(frozen=True, slots=True)
class RuntimeStatus:
    """Whether a runtime is usable here, which version, and which devices it offers."""

    name: str
    installed: bool
    version: str | None
    devices: tuple[str, ...]
    reason: str | None = None  # why it is not installed / not usable
    package: str | None = None  # the distribution providing it, e.g. "ai-edge-litert"


def guess_precision(path: Path) -> str:
    """Guess a model file's precision from tokens in its name (`mlp.int8.onnx` -> `int8`)."""
    tokens = set(re.split(r"[^a-z0-9]+", path.stem.lower()))
    for precision in ("int8", "fp16", "bf16"):
        if precision in tokens:
            return precision
    return "fp32"


def device_rank(device: str) -> int:
    """Sort key for the default preference (`GPU.1` ranks as `GPU`)."""
    return _DEVICE_RANK.get(device.split(".", 1)[0], _CPU_RANK)


class RuntimeAdapter(abc.ABC):
    """What the registry needs to know about one runtime."""

    name: str

    @abc.abstractmethod
    def status(self) -> RuntimeStatus:
        """Report whether the runtime is usable here; never raises."""

    @abc.abstractmethod
    def candidates_for(self, path: Path) -> list[Candidate]:
        """Return one candidate per usable device for a model file this runtime reads."""

    @abc.abstractmethod
    def create(self, candidate: Candidate, options: RuntimeOptions) -> Backend:
        """Return an unloaded backend for the candidate."""

    def package_version(self) -> str | None:
        """The installed version, part of selection cache keys (None when not installed)."""
        status = self.status()
        return status.version if status.installed else None


class PackageRuntimeAdapter(RuntimeAdapter):
    """A runtime provided by a Python package: status from metadata, devices probed once."""

    # (importable module, distribution names that provide it), preferred first.
    packages: tuple[tuple[str, tuple[str, ...]], ...]
    suffixes: frozenset[str]

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: RuntimeStatus | None = None

    @abc.abstractmethod
    def devices(self) -> tuple[str, ...]:
        """List the devices this runtime can use here (may import the runtime)."""

    def _find_package(self) -> tuple[str, str] | None:
        for module, distributions in self.packages:
            if importlib.util.find_spec(module) is None:
                continue
            for distribution in distributions:
                try:
                    return distribution, importlib.metadata.version(distribution)
                except importlib.metadata.PackageNotFoundError:
                    continue
        return None

    def _unusable_reason(self, distribution: str) -> str | None:
        return None

    def package_version(self) -> str | None:
        """`distribution==version` from package metadata, without importing the runtime."""
        found = self._find_package()
        return f"{found[0]}=={found[1]}" if found else None

    def status(self) -> RuntimeStatus:
        """Probe once (find the package, then list devices) and remember the answer."""
        with self._lock:
            if self._status is None:
                self._status = self._probe()
            return self._status

    def _probe(self) -> RuntimeStatus:
        found = self._find_package()
        if found is None:
            wanted = " or ".join(d for _, dists in self.packages for d in dists[:1])
            return RuntimeStatus(self.name, False, None, (), f"{wanted} is not installed")
        distribution, version = found
        reason = self._unusable_reason(distribution)
        if reason is None:
            try:
                return RuntimeStatus(self.name, True, version, self.devices(), None, distribution)
            except Exception as exc:  # a broken install must not take the agent down
                reason = f"{distribution} {version} failed to start: {exc}"
        return RuntimeStatus(self.name, False, version, (), reason, distribution)

    def candidates_for(self, path: Path) -> list[Candidate]:
        """One candidate per device, for files with a suffix this runtime reads."""
        status = self.status()
        if not status.installed or path.suffix.lower() not in self.suffixes:
            return []
        precision = guess_precision(path)
        return [Candidate(self.name, device, path, precision) for device in status.devices]


class OnnxRuntimeAdapter(PackageRuntimeAdapter):
    """onnxruntime: one device per available execution provider (never Azure)."""

    name = "onnxruntime"
    packages = (
        (
            "onnxruntime",
            ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino", "onnxruntime-directml"),
        ),
    )
    suffixes = frozenset({".onnx"})

    def devices(self) -> tuple[str, ...]:
        """Map available providers to devices (CPU, CUDA, TensorRT, OpenVINO)."""
        from agent.runtimes.onnx import PROVIDER_CHAINS, import_onnxruntime

        available = set(import_onnxruntime().get_available_providers())
        return tuple(dev for dev, chain in PROVIDER_CHAINS.items() if chain[0] in available)

    def create(self, candidate: Candidate, options: RuntimeOptions) -> Backend:
        """Return an `OnnxRuntimeBackend`."""
        from agent.runtimes.onnx import OnnxRuntimeBackend

        return OnnxRuntimeBackend(candidate, options)


class OpenVinoAdapter(PackageRuntimeAdapter):
    """OpenVINO: CPU, GPU and NPU devices; AUTO only when pinned."""

    name = "openvino"
    packages = (("openvino", ("openvino",)),)
    suffixes = frozenset({".xml", ".onnx"})

    def devices(self) -> tuple[str, ...]:
        """List OpenVINO's devices (`GPU.0`, `GPU.1` when there are several GPUs)."""
        from agent.runtimes.openvino import shared_core

        available = shared_core().available_devices
        return tuple(str(d) for d in available if str(d).split(".", 1)[0] in ("CPU", "GPU", "NPU"))

    def create(self, candidate: Candidate, options: RuntimeOptions) -> Backend:
        """Return an `OpenVinoBackend`."""
        from agent.runtimes.openvino import OpenVinoBackend

        return OpenVinoBackend(candidate, options)


class TfliteAdapter(PackageRuntimeAdapter):
    """TFLite through LiteRT (or legacy tflite-runtime): CPU with XNNPACK."""

    name = "tflite"
    packages = (
        ("ai_edge_litert", ("ai-edge-litert",)),
        ("tflite_runtime", ("tflite-runtime",)),
    )
    suffixes = frozenset({".tflite"})

    def devices(self) -> tuple[str, ...]:
        """Always the CPU (LiteRT's GPU/NPU accelerators are not used)."""
        return ("CPU",)

    def _unusable_reason(self, distribution: str) -> str | None:
        if distribution == "tflite-runtime" and int(np.__version__.split(".")[0]) >= 2:
            return (
                "tflite-runtime does not work with numpy 2: pin numpy<2 or install ai-edge-litert"
            )
        return None

    def create(self, candidate: Candidate, options: RuntimeOptions) -> Backend:
        """Return a `TfliteBackend`."""
        from agent.runtimes.tflite import TfliteBackend

        return TfliteBackend(candidate, options)


class RuntimeRegistry:
    """The runtimes this agent knows, in a fixed order; tests inject fakes."""

    def __init__(self, adapters: Sequence[RuntimeAdapter]) -> None:
        self.adapters = tuple(adapters)

    @classmethod
    def default(cls) -> RuntimeRegistry:
        """Return a registry of onnxruntime, OpenVINO and TFLite."""
        return cls([OnnxRuntimeAdapter(), OpenVinoAdapter(), TfliteAdapter()])

    def statuses(self) -> list[RuntimeStatus]:
        """Report every runtime, installed or not."""
        return [adapter.status() for adapter in self.adapters]

    def versions(self) -> dict[str, str]:
        """Return `{runtime: distribution==version}` of the installed runtimes (cache keys).

        Read from package metadata, so asking does not import (and load into memory) runtimes
        that no model uses.
        """
        versions = {}
        for adapter in self.adapters:
            version = adapter.package_version()
            if version:
                versions[adapter.name] = version
        return versions

    def candidates(self, paths: Sequence[Path]) -> list[Candidate]:
        """List every (runtime, device, file) candidate, accelerators first."""
        found = [
            c for path in paths for adapter in self.adapters for c in adapter.candidates_for(path)
        ]
        return sorted(found, key=lambda c: device_rank(c.device))  # stable: keeps runtime order

    def create(self, candidate: Candidate, options: RuntimeOptions) -> Backend:
        """Return an unloaded backend for the candidate, or raise `RuntimeUnavailable`."""
        for adapter in self.adapters:
            if adapter.name == candidate.runtime:
                status = adapter.status()
                if not status.installed:
                    raise RuntimeUnavailable(f"{candidate.runtime}: {status.reason}")
                return adapter.create(candidate, options)
        raise RuntimeUnavailable(f"no runtime named {candidate.runtime!r} is registered")
