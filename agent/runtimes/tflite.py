"""TFLite adapter on LiteRT (`ai-edge-litert`), or the legacy `tflite-runtime` where only it exists.

Concurrency: a TFLite `Interpreter` is not thread-safe, so each worker thread gets its own.
Within a thread, interpreters are cached by input shapes (a small LRU): a new batch size gets a
fresh interpreter resized *before* its first `allocate_tensors()`, which is faster and steadier
than resizing an allocated one back and forth. XNNPACK is LiteRT's default CPU delegate.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import numpy as np

from agent.errors import BackendError, ModelLoadError, RuntimeUnavailable
from agent.runtimes.base import Backend, BackendDescription, batchable
from agent.tensors import TensorSpec, numpy_to_oip

# (module, distribution), preferred first.
INTERPRETER_MODULES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
)
_SHAPES_PER_THREAD = 8  # batch sizes are padded to powers of two: 1, 2, 4, ..., 128

Shapes = tuple[tuple[int, ...], ...]


def import_interpreter() -> tuple[Any, str]:
    """Return the `Interpreter` class and the distribution that provides it."""
    for module_name, distribution in INTERPRETER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        return module.Interpreter, distribution
    raise RuntimeUnavailable("neither ai-edge-litert nor tflite-runtime is installed")


def _load_hint(distribution: str) -> str:
    # tflite-runtime 2.14 (its last release) imports fine under numpy 2, then fails when an
    # Interpreter is created (`_ARRAY_API not found`); the message should say what to do.
    if distribution == "tflite-runtime" and int(np.__version__.split(".")[0]) >= 2:
        return " (tflite-runtime needs numpy<2: pin numpy<2 or install ai-edge-litert)"
    return ""


def _spec(detail: Mapping[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature")
    shape = detail["shape"] if signature is None or len(signature) == 0 else signature
    return TensorSpec(
        str(detail["name"]), numpy_to_oip(np.dtype(detail["dtype"])), tuple(int(d) for d in shape)
    )


class TfliteBackend(Backend):
    """A .tflite model with one interpreter per worker thread and input shape."""

    _content: bytes | None = None
    _description: BackendDescription | None = None

    def _new_interpreter(self, shapes: Shapes | None) -> Any:
        assert self._content is not None
        threads = self.options.intra_op_threads or None  # None = the runtime's default
        interpreter = self._interpreter_class(model_content=self._content, num_threads=threads)
        if shapes is not None:
            for index, shape, default in zip(
                self._input_indices, shapes, self._default_shapes, strict=True
            ):
                if shape != default:
                    interpreter.resize_tensor_input(index, shape, strict=True)
        interpreter.allocate_tensors()
        return interpreter

    def load(self) -> None:
        """Read the model and create one interpreter to check it and describe it."""
        path = self.candidate.path
        interpreter_class, distribution = import_interpreter()
        self._interpreter_class = interpreter_class
        try:
            self._content = path.read_bytes()
            interpreter = self._new_interpreter(None)
            in_details = interpreter.get_input_details()
            out_details = interpreter.get_output_details()
            inputs = tuple(_spec(d) for d in in_details)
            outputs = tuple(_spec(d) for d in out_details)
        except Exception as exc:
            self._content = None
            hint = _load_hint(distribution)
            raise ModelLoadError(
                f"cannot load {path} on tflite/{self.candidate.device}: {exc}{hint}"
            ) from exc
        self._input_indices = [int(d["index"]) for d in in_details]
        self._inputs = list(zip([s.name for s in inputs], self._input_indices, strict=True))
        self._default_shapes = [tuple(int(v) for v in d["shape"]) for d in in_details]
        self._outputs = [
            (spec.name, int(d["index"])) for spec, d in zip(outputs, out_details, strict=True)
        ]
        self._local = threading.local()
        # The loading thread keeps the interpreter it just made, for the model's default shape.
        self._local.cache = OrderedDict({tuple(self._default_shapes): interpreter})
        self._description = BackendDescription(
            runtime="tflite",
            runtime_version=importlib.metadata.version(distribution),
            device=self.candidate.device,
            path=path,
            precision=self.candidate.precision,
            inputs=inputs,
            outputs=outputs,
            batchable=batchable(inputs, outputs),
            extra={"package": distribution},
        )

    def _interpreter_for(self, shapes: Shapes) -> Any:
        local = self._local
        try:
            cache: OrderedDict[Shapes, Any] = local.cache
        except AttributeError:
            cache = local.cache = OrderedDict()
        interpreter = cache.get(shapes)
        if interpreter is not None:
            cache.move_to_end(shapes)
            return interpreter
        interpreter = self._new_interpreter(shapes)
        cache[shapes] = interpreter
        if len(cache) > _SHAPES_PER_THREAD:
            cache.popitem(last=False)
        return interpreter

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run this thread's interpreter for these input shapes."""
        if self._content is None:
            raise BackendError(f"{self.candidate.key} is not loaded")
        try:
            feed = [(index, inputs[name]) for name, index in self._inputs]
            rows = int(feed[0][1].shape[0]) if feed and feed[0][1].ndim else 0
            padded = _bucket(rows) if self._description and self._description.batchable else rows
            if padded != rows:
                feed = [(index, _pad_rows(array, padded)) for index, array in feed]
            interpreter = self._interpreter_for(tuple([array.shape for _, array in feed]))
            for index, array in feed:
                interpreter.set_tensor(index, array)
            interpreter.invoke()
            # get_tensor returns a copy, so the next invoke cannot overwrite a result.
            outputs = {name: interpreter.get_tensor(index) for name, index in self._outputs}
            if padded != rows:
                outputs = {name: value[:rows] for name, value in outputs.items()}
            return outputs
        except Exception as exc:
            raise BackendError(f"tflite failed running {self.candidate.key}: {exc!r}") from exc

    def describe(self) -> BackendDescription:
        """Describe the loaded model."""
        if self._description is None:
            raise BackendError(f"{self.candidate.key} is not loaded")
        return self._description

    def unload(self) -> None:
        """Drop the model bytes and every thread's interpreters."""
        self._content = None
        self._local = threading.local()


def _bucket(rows: int) -> int:
    """Round a batch up to a power of two, so a thread needs few interpreters (one per size).

    Dynamic batches take every size from 1 to the maximum; an interpreter per size would be
    rebuilt constantly (and XNNPACK packs the weights again for each), so rows are padded.
    """
    return 1 << (rows - 1).bit_length() if rows > 1 else rows


def _pad_rows(array: np.ndarray, rows: int) -> np.ndarray:
    """Append zero rows up to `rows` (their outputs are dropped)."""
    padding = np.zeros((rows - array.shape[0], *array.shape[1:]), dtype=array.dtype)
    return np.concatenate([array, padding])
