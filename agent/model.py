"""One served model version: its lifecycle state, its backend, its batcher and its statistics.

States and the transitions allowed between them (Triton's names, so `/v2/repository/index`
reports them as Triton does):

    LOADING -> READY | UNAVAILABLE       selection and load finished, or failed
    READY -> UNLOADING                   an unload or a replacement began
    UNLOADING -> UNAVAILABLE             in-flight requests drained, memory released
    UNAVAILABLE -> LOADING               a retry or a reload
"""

from __future__ import annotations

import asyncio
import enum
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from agent.batching import BatchingConfig, DynamicBatcher
from agent.errors import AgentError, BackendError, InvalidRequest, ModelLoadError, ModelNotReady
from agent.inference import InferenceRequest
from agent.runtimes.base import Backend, BackendDescription, Candidate
from agent.selection import AcceleratorSelector, SelectionRequest
from agent.selection_cache import SelectionReport
from agent.stats import ModelStatistics
from agent.tensors import BINARY_ONLY, TensorSpec

log = logging.getLogger(__name__)


class ModelState(enum.Enum):
    """Lifecycle of a served model version."""

    LOADING = "LOADING"
    READY = "READY"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


ALLOWED_TRANSITIONS: dict[ModelState, frozenset[ModelState]] = {
    ModelState.LOADING: frozenset({ModelState.READY, ModelState.UNAVAILABLE}),
    ModelState.READY: frozenset({ModelState.UNLOADING}),
    ModelState.UNLOADING: frozenset({ModelState.UNAVAILABLE}),
    ModelState.UNAVAILABLE: frozenset({ModelState.LOADING}),
}


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What to serve: a model name and version, its files, and how to run it."""

    name: str
    version: int
    paths: tuple[Path, ...]
    policy: str = "latency"
    pin: str | None = None
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    selection_budget_s: float = 3.0
    failures_before_fallback: int = 3


class BackendChain:
    """The chosen backend, with the ranked alternatives to fall back on when it keeps failing.

    Runs in worker threads. After `threshold` consecutive failed executions the current backend
    is replaced by the next candidate that loads, and the failing batch is retried on it.
    """

    def __init__(
        self,
        backend: Backend,
        alternatives: Sequence[Candidate],
        selector: AcceleratorSelector,
        threshold: int,
        on_switch: Callable[[Backend], None],
    ) -> None:
        self.current = backend
        self._alternatives = list(alternatives)
        self._selector = selector
        self._threshold = max(1, threshold)
        self._failures = 0
        self._lock = threading.Lock()
        self._on_switch = on_switch

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the current backend; fall back to the next candidate after repeated failures."""
        backend = self.current
        try:
            outputs = backend.infer(inputs)
        except BackendError:
            with self._lock:
                self._failures += 1
                if self._failures < self._threshold or not self._switch(backend):
                    raise
            return self.current.infer(inputs)
        self._failures = 0
        return outputs

    def _switch(self, failed: Backend) -> bool:
        """Replace `failed` by the next alternative that loads; False if none is left."""
        if self.current is not failed:  # another thread switched already
            return True
        while self._alternatives:
            candidate = self._alternatives.pop(0)
            try:
                replacement = self._selector.registry.create(candidate, self._selector.options)
                replacement.load()
            except AgentError as error:
                log.warning("fallback candidate %s does not load: %s", candidate.key, error)
                continue
            log.error(
                "%s failed %d times in a row; falling back to %s",
                failed.candidate.key,
                self._failures,
                candidate.key,
            )
            self.current = replacement
            self._failures = 0
            self._on_switch(replacement)
            failed.unload()
            return True
        return False

    def unload(self) -> None:
        """Release the current backend."""
        self.current.unload()


class ServedModel:
    """A model version the agent serves, from loading to unloading."""

    def __init__(self, spec: ModelSpec, executor: Executor) -> None:
        self.spec = spec
        self.state = ModelState.UNAVAILABLE
        self.reason = "not loaded yet"
        self.stats = ModelStatistics(name=spec.name, version=str(spec.version))
        self.description: BackendDescription | None = None
        self.report: SelectionReport | None = None
        self.batching = spec.batching
        self._executor = executor
        self._chain: BackendChain | None = None
        self._batcher: DynamicBatcher | None = None
        self._inputs: dict[str, TensorSpec] = {}
        # Told each time the model becomes ready (the reporter publishes the selection).
        self.on_ready: list[Callable[[ServedModel], None]] = []
        self._outputs: dict[str, TensorSpec] = {}
        self.loaded_at: float | None = None

    @property
    def name(self) -> str:
        """The model's name."""
        return self.spec.name

    @property
    def version(self) -> int:
        """The model's version number."""
        return self.spec.version

    @property
    def pending(self) -> int:
        """Requests queued for this model."""
        return self._batcher.pending if self._batcher else 0

    def _transition(self, state: ModelState, reason: str = "") -> None:
        if state not in ALLOWED_TRANSITIONS[self.state]:
            raise AssertionError(f"{self.name}: {self.state.value} -> {state.value} not allowed")
        log.debug("%s v%d: %s -> %s", self.name, self.version, self.state.value, state.value)
        self.state = state
        self.reason = reason

    def selection_request(self) -> SelectionRequest:
        """What the selector is asked for this model (also the key of its cached choice)."""
        return SelectionRequest(
            model=self.name,
            paths=self.spec.paths,
            policy=self.spec.policy,
            max_batch=max(1, self.spec.batching.max_batch_size),
            pin=self.spec.pin,
            budget_s=self.spec.selection_budget_s,
        )

    async def load(self, selector: AcceleratorSelector) -> None:
        """Choose a backend by measuring (or from the cache), load it and start batching."""
        self._transition(ModelState.LOADING, "selecting a backend")
        request = self.selection_request()
        loop = asyncio.get_running_loop()
        try:
            selection = await loop.run_in_executor(self._executor, selector.select, request)
        except ModelLoadError as error:
            log.error("%s v%d failed to load: %s", self.name, self.version, error)
            self._transition(ModelState.UNAVAILABLE, str(error))
            return
        backend, report = selection.backend, selection.report
        self._chain = BackendChain(
            backend, selection.fallbacks, selector, self.spec.failures_before_fallback, self._adopt
        )
        self._adopt(backend)
        self.report = report
        description = self.description
        assert description is not None
        self.batching = replace(
            self.spec.batching,
            max_batch_size=self.spec.batching.max_batch_size if description.batchable else 0,
        )
        self._batcher = DynamicBatcher(self._chain.infer, self._executor, self.batching, self.stats)
        self._batcher.start()
        self.loaded_at = time.time()
        log.info("%s v%d ready on %s (%s)", self.name, self.version, report.chosen, report.source)
        self._transition(ModelState.READY)
        for listener in self.on_ready:
            listener(self)

    def _adopt(self, backend: Backend) -> None:
        """Describe the model by the backend that now serves it."""
        self.description = description = backend.describe()
        self._inputs = {spec.name: spec for spec in description.inputs}
        self._outputs = {spec.name: spec for spec in description.outputs}
        self.stats.backend = f"{backend.candidate.runtime}/{backend.candidate.device}"

    async def unload(self) -> None:
        """Drain queued requests and release the backend."""
        if self.state is not ModelState.READY:
            return
        self._transition(ModelState.UNLOADING, "unloading")
        if self._batcher is not None:
            await self._batcher.close()
        if self._chain is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._chain.unload)
        self._batcher = self._chain = None
        self._transition(ModelState.UNAVAILABLE, "unloaded")

    async def run_direct(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run inputs on the backend, bypassing the queue (golden vectors and warm-up)."""
        if self._chain is None:
            raise ModelNotReady(f"model '{self.name}' version {self.version} is not loaded")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._chain.infer, inputs)

    async def infer(self, request: InferenceRequest) -> list[tuple[str, np.ndarray, bool]]:
        """Validate a request, run it through the batcher, and pick the requested outputs."""
        if self.state is not ModelState.READY or self._batcher is None:
            raise ModelNotReady(
                f"model '{self.name}' version {self.version} is not ready: {self.reason}",
                retry_after=2.0,
            )
        assert self.description is not None
        selected = self._select_outputs(request)
        self._validate_inputs(request)
        outputs = await self._batcher.submit(request.inputs, request.timeout_us)
        return [
            (name, _classify(outputs[name], k) if k else outputs[name], binary)
            for name, binary, k in selected
        ]

    def _select_outputs(self, request: InferenceRequest) -> list[tuple[str, bool, int]]:
        known = self._outputs
        if request.outputs is None:
            wanted = [(name, request.binary_output, 0) for name in known]
        else:
            wanted = []
            for output in request.outputs:
                if output.name not in known:
                    raise InvalidRequest(
                        f"unexpected inference output '{output.name}' for model '{self.name}'"
                    )
                binary = request.binary_output if output.binary is None else output.binary
                wanted.append((output.name, binary, output.classification))
        for name, binary, classes in wanted:
            if classes and known[name].datatype in ("BOOL", "BYTES"):
                raise InvalidRequest(
                    f"output '{name}' is {known[name].datatype}: classification ranks numbers only"
                )
            if not binary and not classes and known[name].datatype in BINARY_ONLY:
                raise InvalidRequest(
                    f"output '{name}' is {known[name].datatype}, which cannot be sent as JSON; "
                    "request it with binary_data=true"
                )
        return wanted

    def _validate_inputs(self, request: InferenceRequest) -> None:
        batchable = self.batching.max_batch_size > 0
        expected = self._inputs
        for name in request.inputs:
            if name not in expected:
                raise InvalidRequest(f"unexpected input '{name}' for model '{self.name}'")
        batch: int | None = None
        for spec in expected.values():
            if spec.name not in request.inputs:
                raise InvalidRequest(f"input '{spec.name}' is missing")
            datatype = request.datatypes[spec.name]
            if datatype != spec.datatype:
                raise InvalidRequest(
                    f"input '{spec.name}': datatype {datatype} does not match the model's "
                    f"{spec.datatype}"
                )
            shape = request.inputs[spec.name].shape
            if len(shape) != len(spec.shape) or any(
                want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
            ):
                raise InvalidRequest(
                    f"input '{spec.name}': shape {list(shape)} does not match the model's "
                    f"{list(spec.shape)}"
                )
            if batchable:
                if batch is not None and shape[0] != batch:
                    raise InvalidRequest(
                        f"input '{spec.name}': batch size {shape[0]} differs from the other "
                        f"inputs' {batch}"
                    )
                batch = shape[0]
                if not 1 <= batch <= self.batching.max_batch_size:
                    raise InvalidRequest(
                        f"input '{spec.name}': batch size {batch} is outside 1.."
                        f"{self.batching.max_batch_size} (the model's max_batch_size)"
                    )


def _classify(scores: np.ndarray, k: int) -> np.ndarray:
    """Top-k classes per row as BYTES `"value:index"` (Triton's classification extension)."""
    rows = scores.reshape(scores.shape[0], -1) if scores.ndim > 1 else scores.reshape(1, -1)
    k = min(k, rows.shape[1])
    # Ascending keys for descending scores; ~x for integers, where -x wraps around (unsigned
    # types, and the most negative value of a signed one).
    keys = ~rows if rows.dtype.kind in "iu" else -rows
    order = np.argsort(keys, axis=1, kind="stable")[:, :k]
    out = np.empty((rows.shape[0], k), dtype=np.object_)
    for r in range(rows.shape[0]):
        for c, index in enumerate(order[r]):
            out[r, c] = f"{float(rows[r, index]):f}:{int(index)}".encode()
    return out if scores.ndim > 1 else out.reshape(k)
