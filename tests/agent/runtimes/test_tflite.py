"""The TFLite (LiteRT) adapter on a real .tflite file built by the tests."""

from __future__ import annotations

import importlib.metadata
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from agent.errors import BackendError, ModelLoadError
from agent.runtimes import tflite
from agent.runtimes.base import Candidate, RuntimeOptions
from agent.runtimes.tflite import TfliteBackend
from agent.tensors import TensorSpec
from tests.agent.model_builders import dense_reference, random_dense_stack, write_dense_tflite

LAYERS = random_dense_stack([4, 8, 3], seed=3)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dense_tflite(tmp_path_factory.mktemp("tflite") / "mlp.tflite", LAYERS)


@pytest.fixture
def backend(model_path: Path) -> TfliteBackend:
    loaded = TfliteBackend(Candidate("tflite", "CPU", model_path), RuntimeOptions())
    loaded.load()
    return loaded


def _batch(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 4)).astype(np.float32)


def _check(x: np.ndarray, outputs: dict[str, np.ndarray]) -> None:
    assert set(outputs) == {"y"}
    np.testing.assert_allclose(outputs["y"], dense_reference(LAYERS, x), rtol=1e-5, atol=1e-5)


def test_describe_reports_names_types_and_dynamic_batch(
    backend: TfliteBackend, model_path: Path
) -> None:
    description = backend.describe()
    assert description.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    assert description.outputs == (TensorSpec("y", "FP32", (-1, 3)),)
    assert description.batchable
    assert (description.runtime, description.device, description.path) == (
        "tflite",
        "CPU",
        model_path,
    )
    package = description.extra["package"]
    assert description.runtime_version == importlib.metadata.version(package)
    assert description.platform == "tflite"


@pytest.mark.parametrize("batch", [1, 7])
def test_infer_matches_numpy(backend: TfliteBackend, batch: int) -> None:
    x = _batch(batch, seed=batch)
    _check(x, backend.infer({"x": x}))


def test_batch_size_changes_back_and_forth(model_path: Path) -> None:
    backend = TfliteBackend(
        Candidate("tflite", "CPU", model_path), RuntimeOptions(intra_op_threads=1)
    )
    backend.load()
    # More distinct shapes than the per-thread cache holds, then the early ones again.
    for batch in [1, 7, 32, 2, 3, 5, 1, 7, 32]:
        x = _batch(batch, seed=batch)
        _check(x, backend.infer({"x": x}))


def test_outputs_are_not_overwritten_by_the_next_call(backend: TfliteBackend) -> None:
    first_x, second_x = _batch(2, seed=10), _batch(2, seed=11)
    first = backend.infer({"x": first_x})
    backend.infer({"x": second_x})
    _check(first_x, first)


def test_concurrent_callers_each_get_their_own_answer(backend: TfliteBackend) -> None:
    start = threading.Barrier(8)

    def worker(seed: int) -> None:
        x = _batch(1 + seed % 4, seed)
        start.wait()
        for _ in range(50):
            _check(x, backend.infer({"x": x}))

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(worker, i) for i in range(8)]:
            future.result()


def test_corrupt_model_raises_model_load_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "corrupt.tflite"
    path.write_bytes(b"not a flatbuffer" * 8)
    backend = TfliteBackend(Candidate("tflite", "CPU", path), RuntimeOptions())
    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        backend.load()


def test_missing_file_raises_model_load_error(tmp_path: Path) -> None:
    path = tmp_path / "absent.tflite"
    backend = TfliteBackend(Candidate("tflite", "CPU", path), RuntimeOptions())
    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        backend.load()


class _Numpy2BrokenInterpreter:
    """Behaves like tflite-runtime 2.14 under numpy 2: fails when constructed."""

    def __init__(self, **kwargs: object) -> None:
        raise AttributeError("_ARRAY_API not found")


def test_legacy_runtime_under_numpy_2_says_what_to_do(
    model_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("needs numpy 2")
    monkeypatch.setattr(
        tflite, "import_interpreter", lambda: (_Numpy2BrokenInterpreter, "tflite-runtime")
    )
    backend = TfliteBackend(Candidate("tflite", "CPU", model_path), RuntimeOptions())
    with pytest.raises(ModelLoadError, match=r"numpy<2.*ai-edge-litert"):
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
    backend: TfliteBackend, inputs: dict[str, np.ndarray]
) -> None:
    with pytest.raises(BackendError, match="tflite"):
        backend.infer(inputs)
    x = _batch(2, seed=0)
    _check(x, backend.infer({"x": x}))


def test_unloaded_backend_refuses_calls(model_path: Path) -> None:
    backend = TfliteBackend(Candidate("tflite", "CPU", model_path), RuntimeOptions())
    with pytest.raises(BackendError):
        backend.describe()
    backend.load()
    backend.unload()
    with pytest.raises(BackendError):
        backend.infer({"x": _batch(1, 0)})


def test_batches_are_padded_to_powers_of_two(backend: TfliteBackend) -> None:
    for rows in (3, 5, 6, 7, 8):
        x = _batch(rows, seed=rows)
        outputs = backend.infer({"x": x})
        assert outputs["y"].shape == (rows, 3)
        _check(x, outputs)
    shapes = {shape[0][0] for shape in backend._local.cache}
    assert shapes <= {1, 4, 8}, "sizes 3..8 must share the interpreters for 4 and 8 rows"
