"""Tiny real model files for the runtime tests, built offline without TensorFlow or torch.

Every builder writes the same network in one format: a stack of dense layers
`y = relu?(x @ W + b)` with a dynamic batch dimension, input `x` and output `y`, so one numpy
reference (`dense_reference`) checks all three runtimes.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Dense:
    """One fully connected layer: `weight` is [in, out], `bias` is [out]."""

    weight: FloatArray
    bias: FloatArray
    relu: bool = False


def random_dense_stack(sizes: list[int], seed: int = 0) -> list[Dense]:
    """Return layers for `sizes` (e.g. [64, 128, 10]) with ReLU between them, not after the last."""
    rng = np.random.default_rng(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        weight = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        bias = rng.standard_normal(n_out).astype(np.float32) * np.float32(0.1)
        layers.append(Dense(weight, bias, relu=i < len(sizes) - 2))
    return layers


def dense_reference(layers: list[Dense], x: FloatArray) -> FloatArray:
    """Compute the stack in numpy (float64 accumulate, float32 result)."""
    h = x.astype(np.float64)
    for layer in layers:
        h = h @ layer.weight.astype(np.float64) + layer.bias
        if layer.relu:
            h = np.maximum(h, 0.0)
    return h.astype(np.float32)


def _onnx_model(layers: list[Dense]) -> Any:
    from onnx import TensorProto, helper, numpy_helper

    nodes = []
    initializers = []
    current = "x"
    for i, layer in enumerate(layers):
        last = i == len(layers) - 1
        gemm_out = "y" if last and not layer.relu else f"gemm{i}"
        initializers.append(numpy_helper.from_array(layer.weight, f"w{i}"))
        initializers.append(numpy_helper.from_array(layer.bias, f"b{i}"))
        nodes.append(helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [gemm_out]))
        current = gemm_out
        if layer.relu:
            relu_out = "y" if last else f"relu{i}"
            nodes.append(helper.make_node("Relu", [current], [relu_out]))
            current = relu_out
    n_in = layers[0].weight.shape[0]
    n_out = layers[-1].weight.shape[1]
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def write_dense_onnx(path: Path, layers: list[Dense]) -> Path:
    """Write the stack as an ONNX model (Gemm + Relu, batch dim `N`)."""
    import onnx

    model = _onnx_model(layers)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def write_string_identity_onnx(path: Path) -> Path:
    """Write an ONNX model whose string output `y` [N] equals its string input `x` [N]."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "strings",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["N"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def convert_onnx_to_openvino_ir(onnx_path: Path, xml_path: Path) -> Path:
    """Convert an ONNX file to OpenVINO IR with FP32 weights (save_model defaults to FP16)."""
    import openvino as ov

    ov.save_model(ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False)
    return xml_path


def write_dense_tflite(path: Path, layers: list[Dense]) -> Path:
    """Write the stack as a TFLite model of FULLY_CONNECTED ops (shape signature [-1, in])."""
    from ai_edge_litert import schema_py_generated as s
    from ai_edge_litert.tools.flatbuffer_utils import convert_object_to_bytearray

    buffers: list[Any] = [s.BufferT()]  # buffer 0 must be the empty sentinel
    tensors: list[Any] = []

    def add_tensor(name: str, shape: list[int], data: FloatArray | None) -> int:
        tensor = s.TensorT()
        tensor.name = name
        tensor.type = s.TensorType.FLOAT32
        tensor.shape = [1 if d == -1 else d for d in shape]
        tensor.shapeSignature = shape
        if data is None:
            tensor.buffer = 0
        else:
            buffer = s.BufferT()
            buffer.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), dtype=np.uint8)
            buffers.append(buffer)
            tensor.buffer = len(buffers) - 1
        tensors.append(tensor)
        return len(tensors) - 1

    opcode = s.OperatorCodeT()
    opcode.builtinCode = s.BuiltinOperator.FULLY_CONNECTED
    opcode.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    opcode.version = 1

    operators = []
    current = add_tensor("x", [-1, layers[0].weight.shape[0]], None)
    graph_input = current
    for i, layer in enumerate(layers):
        n_out = layer.weight.shape[1]
        weight = add_tensor(f"w{i}", [n_out, layer.weight.shape[0]], layer.weight.T)
        bias = add_tensor(f"b{i}", [n_out], layer.bias)
        name = "y" if i == len(layers) - 1 else f"h{i}"
        out = add_tensor(name, [-1, n_out], None)
        op = s.OperatorT()
        op.opcodeIndex = 0
        op.inputs = [current, weight, bias]
        op.outputs = [out]
        op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
        op.builtinOptions = s.FullyConnectedOptionsT()
        op.builtinOptions.fusedActivationFunction = (
            s.ActivationFunctionType.RELU if layer.relu else s.ActivationFunctionType.NONE
        )
        operators.append(op)
        current = out

    subgraph = s.SubGraphT()
    subgraph.tensors = tensors
    subgraph.inputs = [graph_input]
    subgraph.outputs = [current]
    subgraph.operators = operators
    model = s.ModelT()
    model.version = 3
    model.subgraphs = [subgraph]
    model.buffers = buffers
    model.operatorCodes = [opcode]
    path.write_bytes(bytes(convert_object_to_bytearray(model)))
    return path
