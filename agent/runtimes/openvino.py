"""OpenVINO adapter: a compiled model on one device (CPU, GPU, NPU or AUTO).

Concurrency: an `InferRequest` must not be used by two threads at once, so the backend keeps
a pool of idle requests (a `queue.SimpleQueue`). A thread takes one (creating it when the pool
is empty), runs it and puts it back, so the pool grows to the peak number of concurrent callers.
The fast call path wraps inputs in zero-copy `ov.Tensor`s and copies outputs out, because a
request reuses its output buffers on the next call.
"""

from __future__ import annotations

import importlib.metadata
import queue
import threading
from collections.abc import Mapping
from typing import Any

import numpy as np

from agent.errors import BackendError, ModelLoadError, RuntimeUnavailable
from agent.runtimes.base import Backend, BackendDescription, batchable
from agent.tensors import TensorSpec

_OV_TO_OIP: dict[str, str] = {
    "boolean": "BOOL",
    "u8": "UINT8",
    "u16": "UINT16",
    "u32": "UINT32",
    "u64": "UINT64",
    "i8": "INT8",
    "i16": "INT16",
    "i32": "INT32",
    "i64": "INT64",
    "f16": "FP16",
    "f32": "FP32",
    "f64": "FP64",
    "bf16": "BF16",
}

_core_lock = threading.Lock()
_core: Any = None


def import_openvino() -> Any:
    """Import openvino or raise `RuntimeUnavailable`."""
    try:
        import openvino
    except ImportError as exc:
        raise RuntimeUnavailable(f"openvino is not usable: {exc}") from exc
    return openvino


def shared_core() -> Any:
    """Return the process's one `openvino.Core` (creating a Core loads plugins; do it once)."""
    global _core
    if _core is None:
        with _core_lock:
            if _core is None:
                _core = import_openvino().Core()
    return _core


def openvino_version() -> str:
    """Return the installed openvino package version (e.g. `2026.4.1`)."""
    try:
        return importlib.metadata.version("openvino")
    except importlib.metadata.PackageNotFoundError:
        return str(import_openvino().get_version())


def _spec(port: Any) -> TensorSpec:
    name = port.get_any_name()
    type_name = port.get_element_type().get_type_name()
    datatype = _OV_TO_OIP.get(type_name)
    if datatype is None:
        # String tensors are refused too: OpenVINO 2026.4 aborts the process at exit
        # (munmap_chunk) after running a string model, which would take the agent down.
        raise ValueError(f"tensor {name!r} has element type {type_name}, not supported here")
    partial = port.get_partial_shape()
    if partial.rank.is_dynamic:
        shape: tuple[int, ...] = (-1,)  # unknown rank: the best OIP metadata can say
    else:
        shape = tuple(d.get_length() if d.is_static else -1 for d in partial)
    return TensorSpec(name, datatype, shape)


def _inference_precision(compiled: Any) -> dict[str, str]:
    # Worth reporting: a device may silently run an FP32 model in bf16 or f16.
    # AUTO (and possibly other plugins) refuse the property; that is not an error.
    try:
        value = compiled.get_property("INFERENCE_PRECISION_HINT")
    except Exception:
        return {}
    name = value.get_type_name() if hasattr(value, "get_type_name") else str(value)
    return {"inference_precision": str(name)}


class OpenVinoBackend(Backend):
    """A model file (.xml IR or .onnx) compiled by OpenVINO on one device."""

    _compiled: Any = None
    _description: BackendDescription | None = None

    def _compile_config(self) -> dict[str, str]:
        config = {"PERFORMANCE_HINT": self.options.performance_hint}
        if self.options.cache_dir is not None:
            config["CACHE_DIR"] = str(self.options.cache_dir)
        if self.candidate.device == "CPU":
            if self.options.intra_op_threads > 0:
                config["INFERENCE_NUM_THREADS"] = str(self.options.intra_op_threads)
            if self.candidate.precision == "fp32":
                # CPUs with bf16 support otherwise run FP32 models in bf16 (errors ~5e-3).
                config["INFERENCE_PRECISION_HINT"] = "f32"
        return config

    def load(self) -> None:
        """Read and compile the model; the first infer request is created on first use."""
        ov = import_openvino()
        path, device = self.candidate.path, self.candidate.device
        try:
            core = shared_core()
            model = core.read_model(str(path))
            compiled = core.compile_model(model, device, self._compile_config())
            inputs = tuple(_spec(port) for port in compiled.inputs)
            outputs = tuple(_spec(port) for port in compiled.outputs)
        except Exception as exc:
            raise ModelLoadError(f"cannot load {path} on openvino/{device}: {exc}") from exc
        self._tensor = ov.Tensor
        self._input_index = {spec.name: i for i, spec in enumerate(inputs)}
        self._output_names = [spec.name for spec in outputs]
        self._pool: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._created_lock = threading.Lock()
        self.requests_created = 0
        self._compiled = compiled
        self._description = BackendDescription(
            runtime="openvino",
            runtime_version=openvino_version(),
            device=device,
            path=path,
            precision=self.candidate.precision,
            inputs=inputs,
            outputs=outputs,
            batchable=batchable(inputs, outputs),
            extra=_inference_precision(compiled),
        )

    def _take_request(self, compiled: Any) -> Any:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            request = compiled.create_infer_request()
            with self._created_lock:
                self.requests_created += 1
            return request

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one pooled infer request; safe to call from several threads at once."""
        compiled = self._compiled
        if compiled is None:
            raise BackendError(f"{self.candidate.key} is not loaded")
        if len(inputs) != len(self._input_index):
            # A pooled request still holds the previous caller's tensors: never run with a gap.
            raise BackendError(
                f"{self.candidate.key} needs inputs {sorted(self._input_index)}, "
                f"got {sorted(inputs)}"
            )
        pool = self._pool
        try:
            request = self._take_request(compiled)
        except Exception as exc:
            raise BackendError(f"openvino failed running {self.candidate.key}: {exc}") from exc
        try:
            tensor = self._tensor
            for name, array in inputs.items():
                data = np.ascontiguousarray(array)
                if not data.flags.writeable:
                    # OpenVINO refuses to share read-only memory (tensors decoded straight
                    # from a request body are read-only views of it), so copy those.
                    data = data.copy()
                request.set_input_tensor(self._input_index[name], tensor(data, shared_memory=True))
            request.infer()
            return {
                name: request.get_output_tensor(i).data.copy()
                for i, name in enumerate(self._output_names)
            }
        except Exception as exc:
            raise BackendError(f"openvino failed running {self.candidate.key}: {exc}") from exc
        finally:
            pool.put(request)

    def describe(self) -> BackendDescription:
        """Describe the compiled model."""
        if self._description is None:
            raise BackendError(f"{self.candidate.key} is not loaded")
        return self._description

    @property
    def idle_requests(self) -> int:
        """How many infer requests wait in the pool (for tests and metrics)."""
        return self._pool.qsize() if self._compiled is not None else 0

    def unload(self) -> None:
        """Drop the compiled model and its requests."""
        self._compiled = None
        self._pool = queue.SimpleQueue()
