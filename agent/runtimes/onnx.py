"""onnxruntime adapter: one `InferenceSession` per model file and execution provider.

Concurrency: `InferenceSession.run` is thread-safe, so every worker thread calls the one
session directly. BYTES tensors are object arrays of `bytes` on the agent's side; onnxruntime
takes and returns `str`, so strings are converted (UTF-8) at this seam. An element that is not
UTF-8 cannot reach the session at all: that is the caller's `InvalidRequest`, not a backend
failure (which would count towards falling back to another backend).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from agent.errors import BackendError, InvalidRequest, ModelLoadError, RuntimeUnavailable
from agent.runtimes.base import Backend, BackendDescription, batchable
from agent.tensors import TensorSpec

# Candidate device -> provider list, most preferred first. CPU stays last as onnxruntime
# needs it for nodes the accelerator cannot run; Azure is never used (it calls remote endpoints).
PROVIDER_CHAINS: dict[str, tuple[str, ...]] = {
    "CPU": ("CPUExecutionProvider",),
    "CUDA": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "TensorRT": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
    "OpenVINO": ("OpenVINOExecutionProvider", "CPUExecutionProvider"),
}

_ORT_TO_OIP: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(bfloat16)": "BF16",
    "tensor(string)": "BYTES",
}


def import_onnxruntime() -> Any:
    """Import onnxruntime or raise `RuntimeUnavailable`."""
    try:
        import onnxruntime
    except ImportError as exc:
        raise RuntimeUnavailable(f"onnxruntime is not usable: {exc}") from exc
    return onnxruntime


def _spec(node: Any) -> TensorSpec:
    datatype = _ORT_TO_OIP.get(node.type)
    if datatype is None:
        raise ValueError(f"tensor {node.name!r} has type {node.type}, which OIP cannot carry")
    # Symbolic dims arrive as strings ("N"), unknown ones as None: both are variable.
    shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in node.shape)
    return TensorSpec(node.name, datatype, shape)


def _to_str(name: str, array: np.ndarray) -> np.ndarray:
    try:
        flat = [v.decode("utf-8") if isinstance(v, bytes) else v for v in array.ravel()]
    except UnicodeDecodeError as exc:
        raise InvalidRequest(
            f"input '{name}': onnxruntime takes BYTES elements only as UTF-8 text ({exc})"
        ) from None
    return np.array(flat, dtype=object).reshape(array.shape)


def _to_bytes(array: np.ndarray) -> np.ndarray:
    flat = [v.encode("utf-8") if isinstance(v, str) else v for v in array.ravel()]
    return np.array(flat, dtype=object).reshape(array.shape)


class OnnxRuntimeBackend(Backend):
    """A model file in an onnxruntime session on one execution provider."""

    _session: Any = None
    _description: BackendDescription | None = None

    def _providers(self) -> list[str | tuple[str, dict[str, Any]]]:
        device = self.candidate.device
        chain = PROVIDER_CHAINS.get(device)
        if chain is None:
            raise ValueError(f"unknown onnxruntime device {device!r}")
        providers: list[str | tuple[str, dict[str, Any]]] = list(chain)
        cache_dir = self.options.cache_dir
        if cache_dir is not None and device == "TensorRT":
            # Building a TensorRT engine takes seconds to minutes; cache it across restarts.
            providers[0] = (
                chain[0],
                {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache_dir)},
            )
        elif cache_dir is not None and device == "OpenVINO":
            providers[0] = (chain[0], {"cache_dir": str(cache_dir)})
        return providers

    def load(self) -> None:
        """Create the session and check the requested provider really is the one in use."""
        ort = import_onnxruntime()
        path, device = self.candidate.path, self.candidate.device
        where = f"{path} on onnxruntime/{device}"
        try:
            providers = self._providers()
            wanted = providers[0] if isinstance(providers[0], str) else providers[0][0]
            # Asking for a missing provider only warns and runs on CPU; refuse it up front.
            if wanted not in ort.get_available_providers():
                raise ValueError(f"{wanted} is not available in this onnxruntime build")
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.options.intra_op_threads
            options.inter_op_num_threads = self.options.inter_op_threads
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
            active = session.get_providers()
            if not active or active[0] != wanted:
                # A silent fallback to CPU would make a measured accelerator choice a lie.
                raise ValueError(f"requested {wanted} but the session runs on {active}")
            inputs = tuple(_spec(node) for node in session.get_inputs())
            outputs = tuple(_spec(node) for node in session.get_outputs())
        except Exception as exc:
            raise ModelLoadError(f"cannot load {where}: {exc}") from exc
        self._string_inputs = frozenset(s.name for s in inputs if s.datatype == "BYTES")
        self._string_outputs = frozenset(s.name for s in outputs if s.datatype == "BYTES")
        self._output_names = [s.name for s in outputs]
        self._session = session
        self._description = BackendDescription(
            runtime="onnxruntime",
            runtime_version=str(ort.__version__),
            device=device,
            path=path,
            precision=self.candidate.precision,
            inputs=inputs,
            outputs=outputs,
            batchable=batchable(inputs, outputs),
            extra={"providers": ",".join(active)},
        )

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the session on named arrays; safe to call from several threads at once."""
        session = self._session
        if session is None:
            raise BackendError(f"{self.candidate.key} is not loaded")
        feed = dict(inputs)
        for name in self._string_inputs.intersection(feed):
            feed[name] = _to_str(name, feed[name])
        try:
            results = session.run(self._output_names, feed)
            outputs = dict(zip(self._output_names, results, strict=True))
            for name in self._string_outputs:
                outputs[name] = _to_bytes(outputs[name])
        except Exception as exc:
            raise BackendError(f"onnxruntime failed running {self.candidate.key}: {exc}") from exc
        return outputs

    def describe(self) -> BackendDescription:
        """Describe the loaded session."""
        if self._description is None:
            raise BackendError(f"{self.candidate.key} is not loaded")
        return self._description

    def unload(self) -> None:
        """Drop the session; onnxruntime frees it when the last reference goes."""
        self._session = None
