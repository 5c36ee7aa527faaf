"""What only the onnxruntime adapter does: providers, devices and string tensors.

The contract every adapter keeps (describe, inference, threads, bad input, unload) is in
`test_backend_contract.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from agent.errors import InvalidRequest, ModelLoadError
from agent.tensors import TensorSpec
from tests.agent.model_builders import write_string_identity_onnx
from tests.agent.runtimes.contract import ONNXRUNTIME


def test_bytes_tensors_round_trip_as_object_arrays_of_bytes(tmp_path: Path) -> None:
    backend = ONNXRUNTIME.loaded(write_string_identity_onnx(tmp_path / "strings.onnx"))
    assert backend.describe().inputs == (TensorSpec("x", "BYTES", (-1,)),)
    assert backend.describe().outputs == (TensorSpec("y", "BYTES", (-1,)),)
    x = np.array([b"edge", "fleet \u00e9".encode(), b""], dtype=object)
    y = backend.infer({"x": x})["y"]
    assert y.dtype == np.dtype(object)
    assert list(y) == list(x)
    assert all(isinstance(v, bytes) for v in y)


def test_bytes_that_are_not_utf8_are_the_callers_error_not_a_backend_failure(
    tmp_path: Path,
) -> None:
    # onnxruntime's Python API takes strings only as text; found by tests/fuzz. A backend
    # failure here was a 500 and counted towards falling back to another backend.
    backend = ONNXRUNTIME.loaded(write_string_identity_onnx(tmp_path / "strings.onnx"))
    with pytest.raises(InvalidRequest, match=r"input 'x': onnxruntime takes BYTES .* UTF-8"):
        backend.infer({"x": np.array([b"edge", b"\xff"], dtype=object)})


def test_missing_provider_is_refused_not_silently_run_on_cpu(tmp_path: Path) -> None:
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime build has CUDA")
    backend = ONNXRUNTIME.backend(ONNXRUNTIME.model_in(tmp_path), device="CUDA")
    with pytest.raises(ModelLoadError, match="CUDAExecutionProvider"):
        backend.load()


def test_unknown_device_raises_model_load_error(tmp_path: Path) -> None:
    backend = ONNXRUNTIME.backend(ONNXRUNTIME.model_in(tmp_path), device="Quantum")
    with pytest.raises(ModelLoadError, match="Quantum"):
        backend.load()
