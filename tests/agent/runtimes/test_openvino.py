"""The OpenVINO adapter on real IR and ONNX files built by the tests."""

from __future__ import annotations

import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from agent.errors import BackendError, ModelLoadError
from agent.runtimes.base import Candidate, RuntimeOptions
from agent.runtimes.openvino import OpenVinoBackend, openvino_version
from agent.tensors import TensorSpec
from tests.agent.model_builders import (
    convert_onnx_to_openvino_ir,
    dense_reference,
    random_dense_stack,
    write_dense_onnx,
    write_string_identity_onnx,
)

LAYERS = random_dense_stack([4, 8, 3], seed=2)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("openvino")
    write_dense_onnx(directory / "mlp.onnx", LAYERS)
    convert_onnx_to_openvino_ir(directory / "mlp.onnx", directory / "mlp.xml")
    return directory


@pytest.fixture(scope="module")
def backend(model_dir: Path) -> OpenVinoBackend:
    loaded = OpenVinoBackend(Candidate("openvino", "CPU", model_dir / "mlp.xml"), RuntimeOptions())
    loaded.load()
    return loaded


def _batch(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def _check(x: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    assert set(outputs) == {"y"}
    np.testing.assert_allclose(outputs["y"], dense_reference(LAYERS, x), rtol=1e-5, atol=1e-5)


def test_describe_reports_names_types_and_dynamic_batch(
    backend: OpenVinoBackend, model_dir: Path
) -> None:
    description = backend.describe()
    assert description.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    assert description.outputs == (TensorSpec("y", "FP32", (-1, 3)),)
    assert description.batchable
    assert (description.runtime, description.device) == ("openvino", "CPU")
    assert description.runtime_version == openvino_version()
    assert (description.path, description.precision) == (model_dir / "mlp.xml", "fp32")
    # An FP32 candidate must run in f32 even on CPUs whose default would be bf16.
    assert description.extra["inference_precision"] == "f32"


@pytest.mark.parametrize("batch", [1, 7])
def test_infer_matches_numpy(backend: OpenVinoBackend, batch: int) -> None:
    x = _batch(batch, seed=batch)
    _check(x, backend.infer({"x": x}))


def test_onnx_file_and_options_load(model_dir: Path, tmp_path: Path) -> None:
    options = RuntimeOptions(
        intra_op_threads=1, performance_hint="THROUGHPUT", cache_dir=tmp_path / "cache"
    )
    backend = OpenVinoBackend(Candidate("openvino", "CPU", model_dir / "mlp.onnx"), options)
    backend.load()
    x = _batch(5, seed=5)
    _check(x, backend.infer({"x": x}))
    assert any((tmp_path / "cache").iterdir())


def test_auto_device_runs_when_pinned(model_dir: Path) -> None:
    candidate = Candidate("openvino", "AUTO", model_dir / "mlp.xml")
    backend = OpenVinoBackend(candidate, RuntimeOptions())
    backend.load()
    x = _batch(2, seed=2)
    outputs = backend.infer({"x": x})
    # AUTO may pick a reduced inference precision, so compare loosely.
    np.testing.assert_allclose(outputs["y"], dense_reference(LAYERS, x), rtol=0.05, atol=0.05)


def test_sequential_calls_reuse_one_request(model_dir: Path) -> None:
    backend = OpenVinoBackend(Candidate("openvino", "CPU", model_dir / "mlp.xml"), RuntimeOptions())
    backend.load()
    assert (backend.requests_created, backend.idle_requests) == (0, 0)
    for seed in range(20):
        x = _batch(1 + seed % 3, seed)
        _check(x, backend.infer({"x": x}))
    assert (backend.requests_created, backend.idle_requests) == (1, 1)


def test_concurrent_callers_each_get_their_own_answer(model_dir: Path) -> None:
    backend = OpenVinoBackend(Candidate("openvino", "CPU", model_dir / "mlp.xml"), RuntimeOptions())
    backend.load()
    start = threading.Barrier(8)

    def worker(seed: int) -> None:
        x = _batch(1 + seed % 4, seed)
        start.wait()
        for _ in range(50):
            _check(x, backend.infer({"x": x}))

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(worker, i) for i in range(8)]:
            future.result()
    assert 1 <= backend.requests_created <= 8
    assert backend.idle_requests == backend.requests_created


def test_non_contiguous_input_is_handled(backend: OpenVinoBackend) -> None:
    x = np.asfortranarray(_batch(6, seed=6))
    _check(x, backend.infer({"x": x}))


def test_corrupt_model_raises_model_load_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.xml"
    path.write_text("<net><layers>not an IR")
    backend = OpenVinoBackend(Candidate("openvino", "CPU", path), RuntimeOptions())
    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        backend.load()


def test_string_models_are_refused(tmp_path: Path) -> None:
    path = write_string_identity_onnx(tmp_path / "strings.onnx")
    backend = OpenVinoBackend(Candidate("openvino", "CPU", path), RuntimeOptions())
    with pytest.raises(ModelLoadError, match="string"):
        backend.load()


@pytest.mark.parametrize(
    "inputs",
    [
        {"x": np.zeros((2, 5), np.float32)},
        {"x": np.zeros((2, 4), np.float64)},
        {"wrong": np.zeros((2, 4), np.float32)},
        {},
    ],
    ids=["shape", "dtype", "name", "missing"],
)
def test_bad_input_raises_backend_error(
    backend: OpenVinoBackend, inputs: dict[str, np.ndarray]
) -> None:
    with pytest.raises(BackendError):
        backend.infer(inputs)
    x = _batch(1, seed=0)  # the request that failed went back to the pool and still works
    _check(x, backend.infer({"x": x}))


def test_unloaded_backend_refuses_calls(model_dir: Path) -> None:
    backend = OpenVinoBackend(Candidate("openvino", "CPU", model_dir / "mlp.xml"), RuntimeOptions())
    with pytest.raises(BackendError):
        backend.describe()
    backend.load()
    backend.unload()
    with pytest.raises(BackendError):
        backend.infer({"x": _batch(1, 0)})
