"""What every runtime adapter's tests share: the adapters under test and the reference checks.

Each adapter runs the same dense network (`tests.agent.model_builders`), so one numpy reference
checks all three. `test_backend_contract.py` runs the common tests over `ADAPTERS`; each
adapter's own module uses its entry here for what only that adapter does.
"""

from __future__ import annotations

import importlib.metadata
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np
import onnxruntime

from agent.runtimes.base import Backend, BackendDescription, Candidate, RuntimeOptions
from agent.runtimes.onnx import OnnxRuntimeBackend
from agent.runtimes.openvino import OpenVinoBackend, openvino_version
from agent.runtimes.tflite import TfliteBackend
from tests.agent.model_builders import (
    Dense,
    convert_onnx_to_openvino_ir,
    dense_reference,
    random_dense_stack,
    write_dense_onnx,
    write_dense_tflite,
)

BackendT = TypeVar("BackendT", bound=Backend, covariant=True)


def random_batch(rows: int, seed: int) -> np.ndarray:
    """A reproducible float32 batch of `rows` inputs for the dense test network."""
    return np.random.default_rng(seed).standard_normal((rows, 4)).astype(np.float32)


def assert_matches_reference(
    layers: list[Dense], x: np.ndarray, outputs: dict[str, np.ndarray], tolerance: float = 1e-5
) -> None:
    """`outputs` is exactly {"y": the numpy reference for `x`}, within `tolerance`."""
    assert set(outputs) == {"y"}, f"expected only output 'y', got {sorted(outputs)}"
    np.testing.assert_allclose(
        outputs["y"], dense_reference(layers, x), rtol=tolerance, atol=tolerance
    )


def assert_callers_from_threads_get_their_own_answers(
    backend: Backend, layers: list[Dense], threads: int = 8, calls: int = 50
) -> None:
    """Callers on `threads` threads, released together, each get the answer to their input."""
    start = threading.Barrier(threads)

    def caller(seed: int) -> None:
        x = random_batch(1 + seed % 4, seed)
        start.wait()
        for _ in range(calls):
            assert_matches_reference(layers, x, backend.infer({"x": x}))

    with ThreadPoolExecutor(threads) as pool:
        for future in [pool.submit(caller, i) for i in range(threads)]:
            future.result()


@dataclass(frozen=True)
class AdapterUnderTest(Generic[BackendT]):
    """One runtime adapter, its model file and what its description must say."""

    runtime: str
    open_backend: Callable[[Candidate, RuntimeOptions], BackendT]
    layers: list[Dense]
    # Writes the dense network into a directory and returns the file the adapter loads.
    write_model: Callable[[Path, list[Dense]], Path]
    suffix: str  # the extension of this runtime's model files
    corrupt_bytes: bytes  # what no model file of this runtime can hold
    platform: str  # Triton's name for the model format
    version_of: Callable[[BackendDescription], str]  # the version `describe` must report
    extra: dict[str, str] = field(default_factory=dict)  # entries `describe` must report

    def model_in(self, directory: Path) -> Path:
        """Write this adapter's model into `directory`; return the file to load."""
        return self.write_model(directory, self.layers)

    def backend(
        self, path: Path, options: RuntimeOptions | None = None, device: str = "CPU"
    ) -> BackendT:
        """An unloaded backend for `path` on `device`."""
        return self.open_backend(Candidate(self.runtime, device, path), options or RuntimeOptions())

    def loaded(self, path: Path, options: RuntimeOptions | None = None) -> BackendT:
        """A backend for `path` on the CPU, loaded."""
        backend = self.backend(path, options)
        backend.load()
        return backend


def _write_openvino_ir(directory: Path, layers: list[Dense]) -> Path:
    # The ONNX file stays next to the IR: OpenVINO loads both.
    onnx_path = write_dense_onnx(directory / "mlp.onnx", layers)
    return convert_onnx_to_openvino_ir(onnx_path, directory / "mlp.xml")


ONNXRUNTIME = AdapterUnderTest(
    runtime="onnxruntime",
    open_backend=OnnxRuntimeBackend,
    layers=random_dense_stack([4, 8, 3], seed=1),
    write_model=lambda directory, layers: write_dense_onnx(directory / "mlp.onnx", layers),
    suffix=".onnx",
    corrupt_bytes=b"this is not a protobuf",
    platform="onnxruntime_onnx",
    version_of=lambda _: onnxruntime.__version__,
    extra={"providers": "CPUExecutionProvider"},
)

OPENVINO = AdapterUnderTest(
    runtime="openvino",
    open_backend=OpenVinoBackend,
    layers=random_dense_stack([4, 8, 3], seed=2),
    write_model=_write_openvino_ir,
    suffix=".xml",
    corrupt_bytes=b"<net><layers>not an IR",
    platform="openvino",
    version_of=lambda _: openvino_version(),
    # An FP32 candidate must run in f32 even on CPUs whose default would be bf16.
    extra={"inference_precision": "f32"},
)

TFLITE = AdapterUnderTest(
    runtime="tflite",
    open_backend=TfliteBackend,
    layers=random_dense_stack([4, 8, 3], seed=3),
    write_model=lambda directory, layers: write_dense_tflite(directory / "mlp.tflite", layers),
    suffix=".tflite",
    corrupt_bytes=b"not a flatbuffer" * 8,
    platform="tflite",
    # The adapter names the package it imported (ai-edge-litert or the legacy tflite-runtime).
    version_of=lambda description: importlib.metadata.version(description.extra["package"]),
)

ADAPTERS: tuple[AdapterUnderTest[Backend], ...] = (ONNXRUNTIME, OPENVINO, TFLITE)
