"""The onnxruntime adapter on real ONNX files built by the tests."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from agent.errors import BackendError, ModelLoadError
from agent.runtimes.base import Candidate, RuntimeOptions
from agent.runtimes.onnx import OnnxRuntimeBackend
from agent.tensors import TensorSpec
from tests.agent.model_builders import (
    Dense,
    dense_reference,
    random_dense_stack,
    write_dense_onnx,
    write_string_identity_onnx,
)

LAYERS = random_dense_stack([4, 8, 3], seed=1)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dense_onnx(tmp_path_factory.mktemp("onnx") / "mlp.onnx", LAYERS)


@pytest.fixture
def backend(model_path: Path) -> OnnxRuntimeBackend:
    loaded = OnnxRuntimeBackend(Candidate("onnxruntime", "CPU", model_path), RuntimeOptions())
    loaded.load()
    return loaded


def _batch(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def _check(layers: list[Dense], x: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    assert set(outputs) == {"y"}
    np.testing.assert_allclose(outputs["y"], dense_reference(layers, x), rtol=1e-5, atol=1e-5)


def test_describe_reports_names_types_and_dynamic_batch(
    backend: OnnxRuntimeBackend, model_path: Path
) -> None:
    description = backend.describe()
    assert description.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    assert description.outputs == (TensorSpec("y", "FP32", (-1, 3)),)
    assert description.batchable
    assert description.runtime == "onnxruntime"
    assert description.runtime_version == onnxruntime.__version__
    assert (description.device, description.path, description.precision) == (
        "CPU",
        model_path,
        "fp32",
    )
    assert description.extra["providers"] == "CPUExecutionProvider"
    assert description.platform == "onnxruntime_onnx"


@pytest.mark.parametrize("batch", [1, 7])
def test_infer_matches_numpy(backend: OnnxRuntimeBackend, batch: int) -> None:
    x = _batch(batch, seed=batch)
    _check(LAYERS, x, backend.infer({"x": x}))


def test_thread_options_are_accepted(model_path: Path) -> None:
    options = RuntimeOptions(intra_op_threads=1, inter_op_threads=1)
    backend = OnnxRuntimeBackend(Candidate("onnxruntime", "CPU", model_path), options)
    backend.load()
    x = _batch(3, seed=3)
    _check(LAYERS, x, backend.infer({"x": x}))


def test_concurrent_callers_each_get_their_own_answer(backend: OnnxRuntimeBackend) -> None:
    start = threading.Barrier(8)

    def worker(seed: int) -> None:
        x = _batch(1 + seed % 4, seed)
        start.wait()
        for _ in range(50):
            _check(LAYERS, x, backend.infer({"x": x}))

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(worker, i) for i in range(8)]:
            future.result()


def test_bytes_tensors_round_trip_as_object_arrays_of_bytes(tmp_path: Path) -> None:
    path = write_string_identity_onnx(tmp_path / "strings.onnx")
    backend = OnnxRuntimeBackend(Candidate("onnxruntime", "CPU", path), RuntimeOptions())
    backend.load()
    assert backend.describe().inputs == (TensorSpec("x", "BYTES", (-1,)),)
    assert backend.describe().outputs == (TensorSpec("y", "BYTES", (-1,)),)
    x = np.array([b"edge", "fleet \u00e9".encode(), b""], dtype=object)
    y = backend.infer({"x": x})["y"]
    assert y.dtype == np.dtype(object)
    assert list(y) == list(x)
    assert all(isinstance(v, bytes) for v in y)


def test_corrupt_model_raises_model_load_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.onnx"
    path.write_bytes(b"this is not a protobuf")
    backend = OnnxRuntimeBackend(Candidate("onnxruntime", "CPU", path), RuntimeOptions())
    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        backend.load()


def test_missing_provider_is_refused_not_silently_run_on_cpu(model_path: Path) -> None:
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    backend = OnnxRuntimeBackend(Candidate("onnxruntime", "CUDA", model_path), RuntimeOptions())
    with pytest.raises(ModelLoadError, match="CUDAExecutionProvider"):
        backend.load()


def test_unknown_device_raises_model_load_error(model_path: Path) -> None:
    backend = OnnxRuntimeBackend(Candidate("onnxruntime", "Quantum", model_path), RuntimeOptions())
    with pytest.raises(ModelLoadError, match="Quantum"):
        backend.load()


@pytest.mark.parametrize(
    "inputs",
    [
        {"x": np.zeros((2, 5), np.float32)},
        {"x": np.zeros((2, 4), np.float64)},
        {"wrong": np.zeros((2, 4), np.float32)},
    ],
    ids=["shape", "dtype", "name"],
)
def test_bad_input_raises_backend_error(
    backend: OnnxRuntimeBackend, inputs: dict[str, np.ndarray]
) -> None:
    with pytest.raises(BackendError, match="onnxruntime"):
        backend.infer(inputs)


def test_unloaded_backend_refuses_calls(model_path: Path) -> None:
    backend = OnnxRuntimeBackend(Candidate("onnxruntime", "CPU", model_path), RuntimeOptions())
    with pytest.raises(BackendError):
        backend.describe()
    backend.load()
    backend.unload()
    with pytest.raises(BackendError):
        backend.infer({"x": _batch(1, 0)})
