"""TFLite flatbuffers built with ai-edge-litert's schema object API (no TensorFlow needed).

Tensor names and the external signature match the ONNX models: the CNN takes NCHW images and
transposes them to TFLite's NHWC inside the graph, and the batch dim is dynamic (`-1` in each
tensor's `shapeSignature`; `shape` holds batch 1 until the interpreter resizes it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.sample_models.networks import SampleNetwork

# The converter aligns constant data to 16 bytes (the schema's `force_align: 16`); do the same
# so kernels that read weights in place never see misaligned floats.
_BUFFER_ALIGNMENT = 16


def missing_reason() -> str | None:
    """Return why `.tflite` files cannot be written here, or None when ai-edge-litert imports."""
    try:
        from ai_edge_litert import schema_py_generated  # noqa: F401
        from ai_edge_litert.tools import flatbuffer_utils  # noqa: F401
    except ImportError as exc:
        return f"ai_edge_litert is not importable ({exc}); pip install 'edgefleet[tflite]'"
    return None


def build_tflite(network: SampleNetwork) -> bytes:
    """Return the network as a serialized `.tflite` model."""
    from ai_edge_litert.tools.flatbuffer_utils import convert_object_to_bytearray

    builders: dict[str, Callable[[SampleNetwork, _GraphBuilder], None]] = {
        "mlp": _mlp,
        "cnn": _cnn,
    }
    graph = _GraphBuilder()
    builders[network.name](network, graph)
    return bytes(convert_object_to_bytearray(graph.model(network)))


def _mlp(network: SampleNetwork, g: _GraphBuilder) -> None:
    s = g.schema
    w = network.weights
    x = g.input(network.input.name, network.input.shape)
    # FULLY_CONNECTED weights are [out, in]: the transpose of ONNX Gemm's B.
    hidden = g.activation("relu1", (-1, 128))
    g.fully_connected(x, w["fc1.weight"].T, w["fc1.bias"], hidden, s.ActivationFunctionType.RELU)
    logits = g.activation("logits", (-1, 10))
    g.fully_connected(
        hidden, w["fc2.weight"].T, w["fc2.bias"], logits, s.ActivationFunctionType.NONE
    )
    options = s.SoftmaxOptionsT()
    options.beta = 1.0
    probabilities = g.output(network.output.name, network.output.shape)
    g.operator(s.BuiltinOperator.SOFTMAX, [logits], [probabilities], "SoftmaxOptions", options)


def _cnn(network: SampleNetwork, g: _GraphBuilder) -> None:
    s = g.schema
    w = network.weights
    image = g.input(network.input.name, network.input.shape)
    nhwc = g.activation("image_nhwc", (-1, 32, 32, 3))
    perm = g.constant("perm", np.array([0, 2, 3, 1], dtype=np.int32))
    g.operator(
        s.BuiltinOperator.TRANSPOSE,
        [image, perm],
        [nhwc],
        "TransposeOptions",
        s.TransposeOptionsT(),
    )
    relu1 = g.activation("relu1", (-1, 32, 32, 16))
    g.conv3x3(nhwc, w["conv1.weight"], w["conv1.bias"], relu1)
    pool1 = g.activation("pool1", (-1, 16, 16, 16))
    pool = s.Pool2DOptionsT()
    pool.padding, pool.strideW, pool.strideH = s.Padding.VALID, 2, 2
    pool.filterWidth, pool.filterHeight = 2, 2
    g.operator(s.BuiltinOperator.MAX_POOL_2D, [relu1], [pool1], "Pool2DOptions", pool)
    relu2 = g.activation("relu2", (-1, 16, 16, 32))
    g.conv3x3(pool1, w["conv2.weight"], w["conv2.bias"], relu2)
    # MEAN over H and W without keep_dims is GlobalAveragePool and Flatten in one op.
    features = g.activation("features", (-1, 32))
    axes = g.constant("mean_axes", np.array([1, 2], dtype=np.int32))
    mean = s.ReducerOptionsT()
    mean.keepDims = False
    g.operator(s.BuiltinOperator.MEAN, [relu2, axes], [features], "ReducerOptions", mean)
    logits = g.output(network.output.name, network.output.shape)
    g.fully_connected(
        features, w["fc.weight"].T, w["fc.bias"], logits, s.ActivationFunctionType.NONE
    )


class _GraphBuilder:
    """Collects the tensors, buffers and operators of a single-subgraph TFLite model."""

    def __init__(self) -> None:
        from ai_edge_litert import schema_py_generated

        self.schema: Any = schema_py_generated
        self._tensors: list[Any] = []
        self._buffer_class = _aligned_buffer_class()
        self._buffers: list[Any] = [self.schema.BufferT()]  # buffer 0 is the empty sentinel
        self._opcodes: list[Any] = []
        self._operators: list[Any] = []
        self._inputs: list[int] = []
        self._outputs: list[int] = []

    def input(self, name: str, shape: tuple[int, ...]) -> int:
        """Add the graph's input tensor."""
        self._inputs.append(self.activation(name, shape))
        return self._inputs[-1]

    def output(self, name: str, shape: tuple[int, ...]) -> int:
        """Add the graph's output tensor."""
        self._outputs.append(self.activation(name, shape))
        return self._outputs[-1]

    def activation(self, name: str, shape: tuple[int, ...]) -> int:
        """Add a float32 tensor computed at run time; -1 in `shape` marks the batch dim."""
        index = self._tensor(name, self.schema.TensorType.FLOAT32, [max(d, 1) for d in shape])
        self._tensors[index].shapeSignature = list(shape)
        return index

    def constant(self, name: str, value: npt.NDArray[Any]) -> int:
        """Add a float32 or int32 constant tensor with its data in a new aligned buffer."""
        kinds = {"float32": self.schema.TensorType.FLOAT32, "int32": self.schema.TensorType.INT32}
        buffer = self._buffer_class()
        buffer.data = np.frombuffer(np.ascontiguousarray(value).tobytes(), dtype=np.uint8)
        self._buffers.append(buffer)
        index = self._tensor(name, kinds[value.dtype.name], list(value.shape))
        self._tensors[index].buffer = len(self._buffers) - 1
        return index

    def operator(
        self, code: int, inputs: list[int], outputs: list[int], options_type: str, options: Any
    ) -> None:
        """Add a builtin operator; `options_type` names its member of the BuiltinOptions union."""
        codes = [c.builtinCode for c in self._opcodes]
        if code not in codes:
            opcode = self.schema.OperatorCodeT()
            # Readers older than schema 3a only look at the deprecated int8 field; every
            # operator used here has a code below 127, so both fields can hold it.
            opcode.builtinCode = opcode.deprecatedBuiltinCode = code
            opcode.version = 1
            self._opcodes.append(opcode)
            codes.append(code)
        op = self.schema.OperatorT()
        op.opcodeIndex, op.inputs, op.outputs = codes.index(code), inputs, outputs
        op.builtinOptionsType = getattr(self.schema.BuiltinOptions, options_type)
        op.builtinOptions = options
        self._operators.append(op)

    def fully_connected(
        self,
        x: int,
        weight: npt.NDArray[np.float32],
        bias: npt.NDArray[np.float32],
        y: int,
        activation: int,
    ) -> None:
        """Add FULLY_CONNECTED with an `[out, in]` weight matrix and a fused activation."""
        name = self._tensors[y].name
        w = self.constant(f"{name}/weight", np.ascontiguousarray(weight))
        b = self.constant(f"{name}/bias", bias)
        options = self.schema.FullyConnectedOptionsT()
        options.fusedActivationFunction = activation
        fc = self.schema.BuiltinOperator.FULLY_CONNECTED
        self.operator(fc, [x, w, b], [y], "FullyConnectedOptions", options)

    def conv3x3(
        self, x: int, kernel: npt.NDArray[np.float32], bias: npt.NDArray[np.float32], y: int
    ) -> None:
        """Add CONV_2D (3x3, stride 1, SAME padding, fused ReLU) from an ONNX OIHW kernel."""
        name = self._tensors[y].name
        # TFLite filters are OHWI.
        w = self.constant(f"{name}/filter", np.ascontiguousarray(kernel.transpose(0, 2, 3, 1)))
        b = self.constant(f"{name}/bias", bias)
        options = self.schema.Conv2DOptionsT()
        options.padding, options.strideW, options.strideH = self.schema.Padding.SAME, 1, 1
        options.fusedActivationFunction = self.schema.ActivationFunctionType.RELU
        conv = self.schema.BuiltinOperator.CONV_2D
        self.operator(conv, [x, w, b], [y], "Conv2DOptions", options)

    def model(self, network: SampleNetwork) -> Any:
        """Return the finished `ModelT`, with a `serving_default` signature over its I/O."""
        s = self.schema
        subgraph = s.SubGraphT()
        subgraph.name = network.name
        subgraph.tensors, subgraph.operators = self._tensors, self._operators
        subgraph.inputs, subgraph.outputs = self._inputs, self._outputs
        signature = s.SignatureDefT()
        signature.signatureKey = "serving_default"
        signature.inputs = [self._tensor_map(i) for i in self._inputs]
        signature.outputs = [self._tensor_map(i) for i in self._outputs]
        model = s.ModelT()
        model.version = 3  # the current TFLite schema version
        model.description = network.description
        model.subgraphs, model.buffers, model.operatorCodes = (
            [subgraph],
            self._buffers,
            self._opcodes,
        )
        model.signatureDefs = [signature]
        return model

    def _tensor(self, name: str, kind: int, shape: list[int]) -> int:
        tensor = self.schema.TensorT()
        tensor.name, tensor.type, tensor.shape = name, kind, shape
        self._tensors.append(tensor)
        return len(self._tensors) - 1

    def _tensor_map(self, index: int) -> Any:
        entry = self.schema.TensorMapT()
        entry.name, entry.tensorIndex = self._tensors[index].name, index
        return entry


def _aligned_buffer_class() -> type:
    from ai_edge_litert import schema_py_generated as s

    class AlignedBuffer(s.BufferT):  # type: ignore[misc]
        def Pack(self, builder: Any) -> Any:
            data = None
            if self.data is not None:
                # Pad so that the bytes, once written, start on a 16-byte boundary.
                builder.Prep(_BUFFER_ALIGNMENT, len(self.data))
                data = builder.CreateByteVector(self.data.tobytes())
            s.BufferStart(builder)
            if data is not None:
                s.BufferAddData(builder, data)
            return s.BufferEnd(builder)

    return AlignedBuffer
