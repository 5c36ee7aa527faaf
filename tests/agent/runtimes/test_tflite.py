"""What only the TFLite (LiteRT) adapter does: per-thread interpreters, padding, legacy runtime.

The contract every adapter keeps (describe, inference, threads, bad input, unload) is in
`test_backend_contract.py`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from agent.errors import ModelLoadError
from agent.runtimes import tflite
from agent.runtimes.base import RuntimeOptions
from tests.agent.runtimes.contract import TFLITE, assert_matches_reference, random_batch


def test_batch_size_changes_back_and_forth(tmp_path: Path) -> None:
    backend = TFLITE.loaded(TFLITE.model_in(tmp_path), RuntimeOptions(intra_op_threads=1))
    # More distinct shapes than the per-thread cache holds, then the early ones again.
    for batch in [1, 7, 32, 2, 3, 5, 1, 7, 32]:
        x = random_batch(batch, seed=batch)
        assert_matches_reference(TFLITE.layers, x, backend.infer({"x": x}))


def test_batches_are_padded_to_powers_of_two(tmp_path: Path) -> None:
    backend = TFLITE.loaded(TFLITE.model_in(tmp_path))
    for rows in (3, 5, 6, 7, 8):
        x = random_batch(rows, seed=rows)
        outputs = backend.infer({"x": x})
        assert outputs["y"].shape == (rows, 3)
        assert_matches_reference(TFLITE.layers, x, outputs)
    shapes = {shape[0][0] for shape in backend._local.cache}
    assert shapes <= {1, 4, 8}, "sizes 3..8 must share the interpreters for 4 and 8 rows"


class _Numpy2BrokenInterpreter:
    """Behaves like tflite-runtime 2.14 under numpy 2: fails when constructed."""

    def __init__(self, **kwargs: object) -> None:
        raise AttributeError("_ARRAY_API not found")


def test_legacy_runtime_under_numpy_2_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if int(np.__version__.split(".")[0]) < 2:
        pytest.skip("needs numpy 2")
    monkeypatch.setattr(
        tflite, "import_interpreter", lambda: (_Numpy2BrokenInterpreter, "tflite-runtime")
    )
    backend = TFLITE.backend(TFLITE.model_in(tmp_path))
    with pytest.raises(ModelLoadError, match=r"numpy<2.*ai-edge-litert"):
        backend.load()
