"""The backend contract every runtime adapter implements.

A `Backend` wraps one loaded model file on one device. It is synchronous on purpose: the
batcher calls `infer` from a worker thread, never from the event loop. Adapters must be
safe to call `infer` from several threads at once (each adapter documents how: a shared
thread-safe session, a pool of infer requests, or one interpreter per thread).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.tensors import TensorSpec


@dataclass(frozen=True, slots=True)
class Candidate:
    """One way to run a model: a runtime, a device of that runtime, and a model file."""

    runtime: str  # "onnxruntime" | "openvino" | "tflite"
    device: str  # runtime-specific: "CPU", "CUDA", "TensorRT", "OpenVINO", "GPU", "AUTO", ...
    path: Path
    precision: str = "fp32"

    @property
    def key(self) -> str:
        """A stable identifier, e.g. `onnxruntime/CPU/mlp.onnx`, used in pins and caches."""
        return f"{self.runtime}/{self.device}/{self.path.name}"


@dataclass(frozen=True, slots=True)
class RuntimeOptions:
    """Tuning that applies to every runtime; adapters map these onto their own knobs."""

    intra_op_threads: int = 0  # 0 = the runtime's default
    inter_op_threads: int = 0
    performance_hint: str = "LATENCY"  # OpenVINO: LATENCY | THROUGHPUT
    max_batch_size: int = 32  # largest batch the backend should expect (TFLite pre-sizes for it)
    # Where runtimes may keep compiled artefacts (TensorRT engines, OpenVINO blobs); None = off.
    cache_dir: Path | None = None


@dataclass(frozen=True, slots=True)
class BackendDescription:
    """What a loaded backend is and what it accepts."""

    runtime: str
    runtime_version: str
    device: str
    path: Path
    precision: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # True when dim 0 of every input and output is a variable batch dimension.
    batchable: bool
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def platform(self) -> str:
        """Triton's platform name for this backend's model format."""
        return {
            "onnxruntime": "onnxruntime_onnx",
            "openvino": "openvino",
            "tflite": "tflite",
        }.get(self.runtime, self.runtime)


class Backend(abc.ABC):
    """One model file loaded on one device of one runtime."""

    def __init__(self, candidate: Candidate, options: RuntimeOptions) -> None:
        self.candidate = candidate
        self.options = options

    @abc.abstractmethod
    def load(self) -> None:
        """Load and compile the model; raise `ModelLoadError` on failure."""

    @abc.abstractmethod
    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the model on named inputs and return every output; raise `BackendError`."""

    @abc.abstractmethod
    def describe(self) -> BackendDescription:
        """Describe the loaded model (valid only after `load`)."""

    @abc.abstractmethod
    def unload(self) -> None:
        """Release the model's memory; the backend cannot be used afterwards."""


def batchable(inputs: tuple[TensorSpec, ...], outputs: tuple[TensorSpec, ...]) -> bool:
    """Return True when every input and output has a variable leading (batch) dimension."""
    tensors = inputs + outputs
    return bool(tensors) and all(t.shape and t.shape[0] == -1 for t in tensors)
