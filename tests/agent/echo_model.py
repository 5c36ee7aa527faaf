"""An ONNX model that returns each of its inputs unchanged, one input per OIP datatype."""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

# OIP datatype -> ONNX element type (BF16 is left out: numpy has no native bfloat16 for ORT).
ECHO_TYPES: dict[str, int] = {
    "BOOL": TensorProto.BOOL,
    "UINT8": TensorProto.UINT8,
    "UINT16": TensorProto.UINT16,
    "UINT32": TensorProto.UINT32,
    "UINT64": TensorProto.UINT64,
    "INT8": TensorProto.INT8,
    "INT16": TensorProto.INT16,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "FP16": TensorProto.FLOAT16,
    "FP32": TensorProto.FLOAT,
    "FP64": TensorProto.DOUBLE,
    "BYTES": TensorProto.STRING,
}


def build_echo_model(path: Path) -> Path:
    """Write `echo.onnx`: inputs `in_<TYPE>` [N,3] -> outputs `out_<TYPE>` [N,3]."""
    inputs, outputs, nodes = [], [], []
    for datatype, element in ECHO_TYPES.items():
        inputs.append(helper.make_tensor_value_info(f"in_{datatype}", element, ["N", 3]))
        outputs.append(helper.make_tensor_value_info(f"out_{datatype}", element, ["N", 3]))
        nodes.append(helper.make_node("Identity", [f"in_{datatype}"], [f"out_{datatype}"]))
    graph = helper.make_graph(nodes, "echo", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path
