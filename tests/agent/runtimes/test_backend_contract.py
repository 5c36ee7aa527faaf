"""The backend contract, run over every runtime adapter on real model files built by the tests."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from agent.errors import BackendError, ModelLoadError
from agent.runtimes.base import Backend, RuntimeOptions
from agent.tensors import TensorSpec
from tests.agent.runtimes.contract import (
    ADAPTERS,
    AdapterUnderTest,
    assert_callers_from_threads_get_their_own_answers,
    assert_matches_reference,
    random_batch,
)


@pytest.fixture(scope="module", params=ADAPTERS, ids=lambda adapter: adapter.runtime)
def adapter(request: pytest.FixtureRequest) -> AdapterUnderTest[Backend]:
    """Each runtime adapter in turn."""
    chosen: AdapterUnderTest[Backend] = request.param
    return chosen


@pytest.fixture(scope="module")
def model_path(
    adapter: AdapterUnderTest[Backend], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The adapter's dense model, written once per adapter."""
    return adapter.model_in(tmp_path_factory.mktemp(adapter.runtime))


@pytest.fixture
def backend(adapter: AdapterUnderTest[Backend], model_path: Path) -> Backend:
    """A freshly loaded backend on the CPU, so no test sees another's requests or caches."""
    return adapter.loaded(model_path)


def test_describe_reports_names_types_and_dynamic_batch(
    adapter: AdapterUnderTest[Backend], backend: Backend, model_path: Path
) -> None:
    description = backend.describe()
    assert description.inputs == (TensorSpec("x", "FP32", (-1, 4)),)
    assert description.outputs == (TensorSpec("y", "FP32", (-1, 3)),)
    assert description.batchable
    assert (description.runtime, description.device, description.path) == (
        adapter.runtime,
        "CPU",
        model_path,
    )
    assert description.precision == "fp32"
    assert description.runtime_version == adapter.version_of(description)
    assert description.platform == adapter.platform
    assert {key: description.extra.get(key) for key in adapter.extra} == adapter.extra


@pytest.mark.parametrize("batch", [1, 7])
def test_infer_matches_numpy(
    adapter: AdapterUnderTest[Backend], backend: Backend, batch: int
) -> None:
    x = random_batch(batch, seed=batch)
    assert_matches_reference(adapter.layers, x, backend.infer({"x": x}))


def test_thread_options_are_accepted(adapter: AdapterUnderTest[Backend], model_path: Path) -> None:
    options = RuntimeOptions(intra_op_threads=1, inter_op_threads=1)
    backend = adapter.loaded(model_path, options)
    x = random_batch(3, seed=3)
    assert_matches_reference(adapter.layers, x, backend.infer({"x": x}))


def test_concurrent_callers_each_get_their_own_answer(
    adapter: AdapterUnderTest[Backend], backend: Backend
) -> None:
    assert_callers_from_threads_get_their_own_answers(backend, adapter.layers)


def test_outputs_are_not_overwritten_by_the_next_call(
    adapter: AdapterUnderTest[Backend], backend: Backend
) -> None:
    first_x, second_x = random_batch(2, seed=10), random_batch(2, seed=11)
    first = backend.infer({"x": first_x})
    backend.infer({"x": second_x})
    assert_matches_reference(adapter.layers, first_x, first)


def test_non_contiguous_input_is_handled(
    adapter: AdapterUnderTest[Backend], backend: Backend
) -> None:
    x = np.asfortranarray(random_batch(6, seed=6))
    assert_matches_reference(adapter.layers, x, backend.infer({"x": x}))


def test_corrupt_model_raises_model_load_error_naming_the_file(
    adapter: AdapterUnderTest[Backend], tmp_path: Path
) -> None:
    path = tmp_path / f"corrupt{adapter.suffix}"
    path.write_bytes(adapter.corrupt_bytes)
    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        adapter.backend(path).load()


def test_missing_file_raises_model_load_error(
    adapter: AdapterUnderTest[Backend], tmp_path: Path
) -> None:
    path = tmp_path / f"absent{adapter.suffix}"
    with pytest.raises(ModelLoadError, match=re.escape(str(path))):
        adapter.backend(path).load()


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
    adapter: AdapterUnderTest[Backend], backend: Backend, inputs: dict[str, np.ndarray]
) -> None:
    with pytest.raises(BackendError, match=adapter.runtime):
        backend.infer(inputs)
    # The failed call left nothing broken behind (OpenVINO: its request went back to the pool).
    for rows in (1, 2):
        x = random_batch(rows, seed=0)
        assert_matches_reference(adapter.layers, x, backend.infer({"x": x}))


def test_unloaded_backend_refuses_calls(
    adapter: AdapterUnderTest[Backend], model_path: Path
) -> None:
    backend = adapter.backend(model_path)
    with pytest.raises(BackendError):
        backend.describe()
    backend.load()
    backend.unload()
    with pytest.raises(BackendError):
        backend.infer({"x": random_batch(1, 0)})
