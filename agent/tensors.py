"""Open Inference Protocol datatypes and their numpy equivalents.

BYTES tensors are numpy object arrays of `bytes`. BF16 has no numpy dtype of its own; like
tritonclient (since r26.06) the agent uses `ml_dtypes.bfloat16`, whose bytes are the upper half
of an IEEE float32.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

# OIP datatype -> numpy dtype. Element sizes follow from the dtype, except BYTES (variable).
OIP_TO_NUMPY: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "BYTES": np.dtype(np.object_),
}

_NUMPY_TO_OIP: dict[np.dtype[np.generic], str] = {
    dtype: name for name, dtype in OIP_TO_NUMPY.items()
}

# Datatypes that cannot travel as JSON numbers without losing meaning (Triton refuses them too).
BINARY_ONLY = frozenset({"FP16", "BF16"})


def numpy_to_oip(dtype: np.dtype[np.generic]) -> str:
    """Return the OIP datatype name for a numpy dtype (str and bytes arrays are BYTES)."""
    if dtype.kind in ("O", "S", "U"):
        return "BYTES"
    try:
        return _NUMPY_TO_OIP[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"numpy dtype {dtype} has no Open Inference Protocol datatype") from None


def triton_config_type(datatype: str) -> str:
    """Return Triton's model-config type name (`TYPE_FP32`, `TYPE_STRING`) for an OIP datatype."""
    return "TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}"


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """Name, OIP datatype and shape of a model input or output; -1 marks a variable dimension."""

    name: str
    datatype: str
    shape: tuple[int, ...]

    def as_json(self) -> dict[str, object]:
        """Return the tensor as OIP model metadata (`{"name", "datatype", "shape"}`)."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}
