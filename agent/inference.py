"""Transport-neutral inference request types, shared by the REST codec and the dataplane."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the client asked for, and how it wants it."""

    name: str
    binary: bool | None  # None = follow the request's `binary_data_output`
    classification: int = 0  # top-k classes as BYTES "value:index" when > 0


@dataclass(slots=True)
class InferenceRequest:
    """A decoded inference request, independent of the transport."""

    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    id: str | None = None
    outputs: list[RequestedOutput] | None = None  # None = every output
    binary_output: bool = False
    timeout_us: int = 0
    parameters: dict[str, Any] = field(default_factory=dict)
