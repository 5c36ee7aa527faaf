"""Write every sample model in every available format, with fixed inputs and expected outputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from agent.sample_models import onnx_models, openvino_models, tflite_models
from agent.sample_models.errors import SampleModelsError
from agent.sample_models.index import FileDigest, ModelFile, SampleIndex, SampleModel, write_index
from agent.sample_models.networks import SEED, FloatArray, SampleNetwork, sample_networks

Progress = Callable[[str], None]

FP32_TOLERANCE = 1e-4

T = TypeVar("T")


def write_sample_models(out_dir: Path, progress: Progress | None = None) -> SampleIndex:
    """Write the sample models, their test data and `samples.json` into `out_dir`.

    Overwrites what a previous run wrote. Formats whose runtime package is missing (OpenVINO
    IR, TFLite) are skipped with a warning through `progress`; `onnx` itself is required.
    Raises `SampleModelsError` when anything cannot be written or fails its check.
    """
    say = progress or _quiet
    onnx_models.require_onnx()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SampleModelsError(f"cannot create {out_dir}: {exc}") from exc
    missing = {
        "openvino-ir": openvino_models.missing_reason(),
        "tflite": tflite_models.missing_reason(),
    }
    for fmt, reason in missing.items():
        if reason is not None:
            say(f"warning: skipping {fmt}: {reason}")
    skip = {fmt for fmt, reason in missing.items() if reason is not None}
    models = tuple(_write_network(out_dir, net, skip, say) for net in sample_networks())
    index = SampleIndex(seed=SEED, models=models)
    path = _step(f"writing {out_dir / 'samples.json'}", lambda: write_index(out_dir, index))
    say(f"wrote {path.name}")
    return index


def _write_network(out_dir: Path, net: SampleNetwork, skip: set[str], say: Progress) -> SampleModel:
    x = net.sample_inputs
    expected = net.reference(x)
    inputs_path = out_dir / f"{net.name}.inputs.npz"
    expected_path = out_dir / f"{net.name}.expected.npz"
    _step(f"writing {inputs_path}", lambda: _save_npz(inputs_path, net.input.name, x))
    say(f"wrote {inputs_path.name}")
    _step(f"writing {expected_path}", lambda: _save_npz(expected_path, net.output.name, expected))
    say(f"wrote {expected_path.name} (numpy reference)")

    fp32 = out_dir / f"{net.name}.onnx"
    _step(f"writing {fp32}", lambda: onnx_models.write_fp32(net, fp32))
    diff = _check_onnxruntime(fp32, net, expected, FP32_TOLERANCE)
    say(f"wrote {fp32.name} (onnxruntime vs reference: max |diff| {diff:.1e})")
    files = [ModelFile("onnx", "onnxruntime", "fp32", FileDigest.of(fp32))]

    int8 = out_dir / f"{net.name}.int8.onnx"
    _step(f"writing {int8}", lambda: onnx_models.write_int8(fp32, int8))
    diff = _check_onnxruntime(int8, net, expected, net.int8_tolerance)
    say(f"wrote {int8.name} (max |diff| {diff:.1e}, tolerance {net.int8_tolerance:g})")
    files.append(ModelFile("onnx", "onnxruntime", "int8", FileDigest.of(int8)))

    xml, weights = out_dir / f"{net.name}.xml", out_dir / f"{net.name}.bin"
    if "openvino-ir" in skip:
        _remove_stale(xml, weights)
    else:
        _step(f"writing {xml}", lambda: openvino_models.write_ir(fp32, xml, net.name))
        say(f"wrote {xml.name}")
        say(f"wrote {weights.name}")
        ir = ModelFile(
            "openvino-ir", "openvino", "fp32", FileDigest.of(xml), (FileDigest.of(weights),)
        )
        files.append(ir)

    tflite = out_dir / f"{net.name}.tflite"
    if "tflite" in skip:
        _remove_stale(tflite)
    else:
        _step(f"writing {tflite}", lambda: tflite.write_bytes(tflite_models.build_tflite(net)))
        say(f"wrote {tflite.name}")
        files.append(ModelFile("tflite", "tflite", "fp32", FileDigest.of(tflite)))

    return SampleModel(
        name=net.name,
        description=net.description,
        inputs=(net.input,),
        outputs=(net.output,),
        files=tuple(files),
        inputs_file=inputs_path.name,
        expected_file=expected_path.name,
        tolerance={"fp32": FP32_TOLERANCE, "int8": net.int8_tolerance},
    )


def _check_onnxruntime(
    path: Path, net: SampleNetwork, expected: FloatArray, tolerance: float
) -> float:
    """Run `path` in onnxruntime on the sample inputs; raise unless it matches the reference."""
    actual = _step(
        f"running {path.name} in onnxruntime",
        lambda: onnx_models.run_onnxruntime(path, net.input.name, net.sample_inputs),
    )
    if actual.shape != expected.shape:
        raise SampleModelsError(
            f"{path.name}: output shape {actual.shape}, expected {expected.shape}"
        )
    diff = float(np.max(np.abs(actual - expected)))
    # `not <=` also catches NaN.
    if not diff <= tolerance:
        raise SampleModelsError(
            f"{path.name}: onnxruntime output differs from the numpy reference by {diff:.2e} "
            f"(tolerance {tolerance:g}); the generator and the reference disagree"
        )
    return diff


def _step(what: str, action: Callable[[], T]) -> T:
    """Run one generation step, translating vendor and OS errors into `SampleModelsError`."""
    try:
        return action()
    except SampleModelsError:
        raise
    except Exception as exc:  # onnx, onnxruntime and OpenVINO raise their own exception types
        raise SampleModelsError(f"{what} failed: {type(exc).__name__}: {exc}") from exc


def _save_npz(path: Path, key: str, array: FloatArray) -> None:
    arrays: dict[str, Any] = {key: array}  # Any: savez's own keywords would clash in the stubs
    np.savez(path, **arrays)


def _remove_stale(*paths: Path) -> None:
    # A previous run with the runtime installed may have left files the new index no longer lists.
    for path in paths:
        path.unlink(missing_ok=True)


def _quiet(_line: str) -> None:
    """Discard progress lines."""
