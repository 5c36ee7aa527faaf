"""Tests for `agent.sample_models`: every written file runs in its runtime and matches."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from agent.sample_models import (
    INDEX_FILE,
    ModelFile,
    SampleIndex,
    SampleModel,
    SampleModelsError,
    read_index,
    write_sample_models,
)
from agent.tensors import TensorSpec
from shared.cli import main

Array = npt.NDArray[np.float32]

# (model, file, runtime, precision): everything a full install must write.
EXPECTED_FILES = [
    ("mlp", "mlp.onnx", "onnxruntime", "fp32"),
    ("mlp", "mlp.int8.onnx", "onnxruntime", "int8"),
    ("mlp", "mlp.xml", "openvino", "fp32"),
    ("mlp", "mlp.tflite", "tflite", "fp32"),
    ("cnn", "cnn.onnx", "onnxruntime", "fp32"),
    ("cnn", "cnn.int8.onnx", "onnxruntime", "int8"),
    ("cnn", "cnn.xml", "openvino", "fp32"),
    ("cnn", "cnn.tflite", "tflite", "fp32"),
]
RUNTIME_PACKAGES = {
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "tflite": "ai_edge_litert",
}
SIGNATURES = {
    "mlp": (TensorSpec("input", "FP32", (-1, 64)), TensorSpec("probabilities", "FP32", (-1, 10))),
    "cnn": (TensorSpec("image", "FP32", (-1, 3, 32, 32)), TensorSpec("logits", "FP32", (-1, 10))),
}


@dataclass(frozen=True)
class Samples:
    """A sample directory written once for the whole module."""

    directory: Path
    index: SampleIndex
    progress: list[str]


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Samples:
    """Write the sample models once into a temporary directory."""
    directory = tmp_path_factory.mktemp("samples")
    progress: list[str] = []
    index = write_sample_models(directory, progress=progress.append)
    return Samples(directory, index, progress)


def _entry(model: SampleModel, file: str) -> ModelFile:
    matches = [f for f in model.files if f.model.file == file]
    assert len(matches) == 1, f"{file} listed {len(matches)} times in {INDEX_FILE}"
    return matches[0]


def _load(path: Path, key: str) -> Array:
    with np.load(path) as data:
        assert list(data.keys()) == [key]
        return np.asarray(data[key], dtype=np.float32)


def _run_onnxruntime(path: Path, input_name: str, output_name: str, x: Array) -> Array:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [input_name]
    assert [o.name for o in session.get_outputs()] == [output_name]
    assert session.get_inputs()[0].shape[0] == "N"
    outputs: list[Any] = session.run([output_name], {input_name: x})
    return np.asarray(outputs[0])


def _run_openvino(path: Path, input_name: str, output_name: str, x: Array) -> Array:
    import openvino as ov

    # The CPU plugin runs FP32 models in bf16 by default on CPUs with AVX512-BF16 or AMX
    # (max |diff| about 3e-3 here); FP32 files are checked at FP32, so ask for it.
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    assert [i.get_any_name() for i in compiled.inputs] == [input_name]
    assert [o.get_any_name() for o in compiled.outputs] == [output_name]
    assert compiled.input(input_name).get_partial_shape()[0].is_dynamic
    result = compiled({input_name: x})
    return np.asarray(result[compiled.output(output_name)])


def _run_tflite(path: Path, input_name: str, output_name: str, x: Array) -> Array:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    (input_detail,) = interpreter.get_input_details()
    (output_detail,) = interpreter.get_output_details()
    assert (input_detail["name"], output_detail["name"]) == (input_name, output_name)
    assert input_detail["shape_signature"][0] == -1
    interpreter.resize_tensor_input(input_detail["index"], list(x.shape))
    interpreter.allocate_tensors()
    interpreter.set_tensor(input_detail["index"], x)
    interpreter.invoke()
    return np.asarray(interpreter.get_tensor(output_detail["index"]))


RUNNERS = {"onnxruntime": _run_onnxruntime, "openvino": _run_openvino, "tflite": _run_tflite}


@pytest.mark.parametrize(("model_name", "file", "runtime", "precision"), EXPECTED_FILES)
@pytest.mark.parametrize("batch", [4, 1])
def test_file_matches_expected_outputs(
    samples: Samples, model_name: str, file: str, runtime: str, precision: str, batch: int
) -> None:
    """Each listed file, run by its raw runtime, reproduces the numpy reference."""
    if importlib.util.find_spec(RUNTIME_PACKAGES[runtime]) is None:
        pytest.skip(f"{RUNTIME_PACKAGES[runtime]} is not installed")
    model = samples.index.model(model_name)
    entry = _entry(model, file)
    assert (entry.runtime, entry.precision) == (runtime, precision)
    (spec_in,), (spec_out,) = model.inputs, model.outputs
    x = _load(samples.directory / model.inputs_file, spec_in.name)[:batch]
    expected = _load(samples.directory / model.expected_file, spec_out.name)[:batch]

    actual = RUNNERS[runtime](samples.directory / file, spec_in.name, spec_out.name, x)

    assert actual.dtype == np.float32
    assert actual.shape == (batch, 10)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=model.tolerance[precision])


def test_index_describes_the_files(samples: Samples) -> None:
    """samples.json names every file with the right signature, size and checksum."""
    index = samples.index
    assert read_index(samples.directory) == index
    on_disk = json.loads((samples.directory / INDEX_FILE).read_text(encoding="utf-8"))
    assert on_disk == index.as_json()
    assert [m.name for m in index.models] == ["mlp", "cnn"]
    listed = sorted(f.model.file for m in index.models for f in m.files)
    assert listed == sorted(file for _, file, _, _ in EXPECTED_FILES)
    for model in index.models:
        want_in, want_out = SIGNATURES[model.name]
        assert (model.inputs, model.outputs) == ((want_in,), (want_out,))
        assert model.tolerance["fp32"] == 1e-4
        assert 0 < model.tolerance["int8"] <= 0.5
        for entry in model.files:
            for digest in (entry.model, *entry.companions):
                data = (samples.directory / digest.file).read_bytes()
                assert digest.size == len(data)
                assert digest.sha256 == hashlib.sha256(data).hexdigest()
        ir = _entry(model, f"{model.name}.xml")
        assert [c.file for c in ir.companions] == [f"{model.name}.bin"]
        assert _load(samples.directory / model.inputs_file, want_in.name).shape[0] == 4
        assert _load(samples.directory / model.expected_file, want_out.name).shape == (4, 10)


def test_expected_outputs_are_not_degenerate(samples: Samples) -> None:
    """The reference outputs differ per sample and the softmax is not saturated."""
    probabilities = _load(samples.directory / "mlp.expected.npz", "probabilities")
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert 0.2 < probabilities.max() < 0.9
    logits = _load(samples.directory / "cnn.expected.npz", "logits")
    assert len(set(logits.argmax(axis=1).tolist())) > 1
    assert logits.std(axis=0).mean() > 0.5


def test_progress_has_one_line_per_file(samples: Samples) -> None:
    """Progress reports every written file exactly once."""
    written = sorted(line.split()[1] for line in samples.progress if line.startswith("wrote "))
    on_disk = sorted(p.name for p in samples.directory.iterdir())
    assert written == on_disk


def test_missing_optional_runtimes_are_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without openvino and ai-edge-litert, their formats are skipped with a warning."""
    (tmp_path / "mlp.xml").write_text("stale")  # from an earlier run that had openvino
    # None in sys.modules makes `import` raise ImportError, as for a missing package.
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    progress: list[str] = []

    index = write_sample_models(tmp_path, progress=progress.append)

    assert {(f.format, f.precision) for m in index.models for f in m.files} == {
        ("onnx", "fp32"),
        ("onnx", "int8"),
    }
    warnings = [line for line in progress if line.startswith("warning:")]
    assert len(warnings) == 2
    assert "openvino" in warnings[0]
    assert "ai_edge_litert" in warnings[1]
    assert not (tmp_path / "mlp.xml").exists()
    assert not list(tmp_path.glob("*.tflite"))


def test_missing_onnx_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without onnx, generation fails with the install hint and writes nothing."""
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(SampleModelsError, match=r"pip install 'edgefleet\[samples\]'"):
        write_sample_models(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_writes_samples_and_prints_table(
    samples: Samples, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`edgefleet sample-models DIR` exits 0, prints a table and writes the same bytes."""
    assert main(["sample-models", str(tmp_path / "cli")]) == 0

    out = capsys.readouterr().out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("model"))
    assert header.split() == ["model", "format", "runtime", "precision", "file", "size"]
    rows = [
        line.split() for line in lines[lines.index(header) + 1 :] if line.startswith(("mlp", "cnn"))
    ]
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == [
        (model, runtime, precision, file) for model, file, runtime, precision in EXPECTED_FILES
    ]
    assert "wrote mlp.onnx" in out
    # Deterministic: the index (with every file's sha256) matches the module's run byte for byte.
    written = (tmp_path / "cli" / INDEX_FILE).read_bytes()
    assert written == (samples.directory / INDEX_FILE).read_bytes()


def test_cli_failure_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A generation failure is reported on stderr with exit status 1."""
    monkeypatch.setitem(sys.modules, "onnx", None)
    assert main(["sample-models", str(tmp_path)]) == 1
    assert "edgefleet[samples]" in capsys.readouterr().err


def test_cli_help(capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` documents DIR and the file names."""
    with pytest.raises(SystemExit) as exit_info:
        main(["sample-models", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for text in ("DIR", "samples.json", "<model>.int8.onnx"):
        assert text in out


def test_cli_module_imports_no_runtime() -> None:
    """Registering the command (what `edgefleet --help` does) loads no runtime package."""
    runtimes = ("onnx", "onnxruntime", "openvino", "ai_edge_litert")
    code = (
        f"import sys, agent.sample_models.cli; print([m for m in {runtimes!r} if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
