"""What only the OpenVINO adapter does: ONNX input, AUTO, the request pool, no strings.

The contract every adapter keeps (describe and its f32 precision hint, inference, threads, bad
input, unload) is in `test_backend_contract.py`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import ModelLoadError
from agent.runtimes.base import RuntimeOptions
from tests.agent.model_builders import write_string_identity_onnx
from tests.agent.runtimes.contract import (
    OPENVINO,
    assert_callers_from_threads_get_their_own_answers,
    assert_matches_reference,
    random_batch,
)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dense model as OpenVINO IR (`mlp.xml`), with the ONNX file it came from beside it."""
    return OPENVINO.model_in(tmp_path_factory.mktemp("openvino"))


def test_onnx_file_and_options_load(model_path: Path, tmp_path: Path) -> None:
    options = RuntimeOptions(
        intra_op_threads=1, performance_hint="THROUGHPUT", cache_dir=tmp_path / "cache"
    )
    backend = OPENVINO.loaded(model_path.with_suffix(".onnx"), options)
    x = random_batch(5, seed=5)
    assert_matches_reference(OPENVINO.layers, x, backend.infer({"x": x}))
    assert any((tmp_path / "cache").iterdir())


def test_auto_device_runs_when_pinned(model_path: Path) -> None:
    backend = OPENVINO.backend(model_path, device="AUTO")
    backend.load()
    x = random_batch(2, seed=2)
    # AUTO may pick a reduced inference precision, so compare loosely.
    assert_matches_reference(OPENVINO.layers, x, backend.infer({"x": x}), tolerance=0.05)


def test_sequential_calls_reuse_one_request(model_path: Path) -> None:
    backend = OPENVINO.loaded(model_path)
    assert (backend.requests_created, backend.idle_requests) == (0, 0)
    for seed in range(20):
        x = random_batch(1 + seed % 3, seed)
        assert_matches_reference(OPENVINO.layers, x, backend.infer({"x": x}))
    assert (backend.requests_created, backend.idle_requests) == (1, 1)


def test_concurrent_callers_need_at_most_one_request_each(model_path: Path) -> None:
    backend = OPENVINO.loaded(model_path)
    assert_callers_from_threads_get_their_own_answers(backend, OPENVINO.layers, threads=8)
    assert 1 <= backend.requests_created <= 8
    assert backend.idle_requests == backend.requests_created


def test_string_models_are_refused(tmp_path: Path) -> None:
    backend = OPENVINO.backend(write_string_identity_onnx(tmp_path / "strings.onnx"))
    with pytest.raises(ModelLoadError, match="string"):
        backend.load()
