"""ONNX FP32 graphs built with `onnx.helper`, their dynamic INT8 quantization, and a check run.

`onnx` is imported inside each function: it is a build-time extra (`edgefleet[samples]`), and
`edgefleet --help` must not pay for it.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import numpy as np

from agent.sample_models.errors import SampleModelsError
from agent.sample_models.networks import FloatArray, SampleNetwork

OPSET = 17
IR_VERSION = 9
BATCH_DIM = "N"


def require_onnx() -> None:
    """Raise `SampleModelsError` with the install hint when `onnx` is not importable."""
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise SampleModelsError(
            "generating sample models needs the 'onnx' package: pip install 'edgefleet[samples]'"
        ) from exc


def write_fp32(network: SampleNetwork, path: Path) -> None:
    """Build the network as an FP32 ONNX model, validate it fully and save it to `path`."""
    import onnx

    builders: dict[str, Callable[[SampleNetwork], list[Any]]] = {
        "mlp": _mlp_nodes,
        "cnn": _cnn_nodes,
    }
    graph = onnx.helper.make_graph(
        builders[network.name](network),
        network.name,
        [_value_info(network.input.name, network.input.shape)],
        [_value_info(network.output.name, network.output.shape)],
        [onnx.numpy_helper.from_array(value, name) for name, value in network.weights.items()],
    )
    model = onnx.helper.make_model(
        graph,
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="edgefleet.sample_models",
        doc_string=network.description,
    )
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def write_int8(fp32_path: Path, path: Path) -> None:
    """Quantize an FP32 ONNX model's weights to INT8 (dynamic quantization) into `path`."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as scratch:
        # The recommended pre-processing (shape inference, tagged in the model's metadata) also
        # keeps quantize_dynamic from logging its "consider pre-processing" warning. The graph
        # optimisation step is skipped: it adds a dozen unused opset imports and changes nothing
        # for these graphs; symbolic shape inference would need sympy.
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(
            str(fp32_path), str(prepared), skip_optimization=True, skip_symbolic_shape=True
        )
        with _quantizer_chatter_dropped():
            quantize_dynamic(prepared, path, weight_type=QuantType.QInt8)


def run_onnxruntime(path: Path, input_name: str, x: FloatArray) -> FloatArray:
    """Run an ONNX model once on the CPU and return its single output."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = cast(list[FloatArray], session.run(None, {input_name: x}))
    return np.asarray(outputs[0], dtype=np.float32)


@contextmanager
def _quantizer_chatter_dropped() -> Iterator[None]:
    """Drop the quantizer's INFO lines ("Quantization parameters ... not specified")."""

    # It logs through the root logger, so a filter there is the only handle; warnings pass.
    def keep(record: logging.LogRecord) -> bool:
        noise = record.levelno < logging.WARNING and "onnxruntime" in record.pathname
        return not noise

    root = logging.getLogger()
    root.addFilter(keep)
    try:
        yield
    finally:
        root.removeFilter(keep)


def _value_info(name: str, shape: tuple[int, ...]) -> Any:
    import onnx

    dims: list[int | str] = [BATCH_DIM if d == -1 else d for d in shape]
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)


def _node(op: str, inputs: list[str], output: str, **attributes: Any) -> Any:
    from onnx.helper import make_node

    # Named nodes give the quantizer's generated tensors readable names too.
    return make_node(op, inputs, [output], name=output, **attributes)


def _mlp_nodes(network: SampleNetwork) -> list[Any]:
    return [
        _node("Gemm", [network.input.name, "fc1.weight", "fc1.bias"], "fc1"),
        _node("Relu", ["fc1"], "relu1"),
        _node("Gemm", ["relu1", "fc2.weight", "fc2.bias"], "logits"),
        _node("Softmax", ["logits"], network.output.name, axis=-1),
    ]


def _cnn_nodes(network: SampleNetwork) -> list[Any]:
    conv = {"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}
    return [
        _node("Conv", [network.input.name, "conv1.weight", "conv1.bias"], "conv1", **conv),
        _node("Relu", ["conv1"], "relu1"),
        _node("MaxPool", ["relu1"], "pool1", kernel_shape=[2, 2], strides=[2, 2]),
        _node("Conv", ["pool1", "conv2.weight", "conv2.bias"], "conv2", **conv),
        _node("Relu", ["conv2"], "relu2"),
        _node("GlobalAveragePool", ["relu2"], "pool2"),
        _node("Flatten", ["pool2"], "features", axis=1),
        _node("Gemm", ["features", "fc.weight", "fc.bias"], network.output.name),
    ]
