"""Choosing the fastest way to run a model on this device, by measuring it.

For one model, `AcceleratorSelector.select` lists the candidates (runtime, device, file) that the
model's files and the installed runtimes allow, loads each, runs a warm-up and then timed runs at
batch 1 and at the largest batch inside a time budget, and picks by the model's policy: lowest
median batch-1 latency (`latency`) or most rows per second at the largest batch (`throughput`).

The decision is cached on disk keyed by the files' digests, the hardware fingerprint, the runtime
versions, the policy and the largest batch, so a restart loads the chosen candidate without
measuring again. A pin in the settings bypasses measuring. Candidates that fail to load or to run
are recorded with their error, and the ranked list is kept so serving can fall back to the next
candidate. Everything here blocks: call it from a worker thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.errors import AgentError, ModelLoadError
from agent.runtimes.base import Backend, BackendDescription, Candidate, RuntimeOptions
from agent.runtimes.registry import RuntimeRegistry
from agent.selection_cache import Measurement, SelectionCache, SelectionReport
from agent.tensors import OIP_TO_NUMPY

log = logging.getLogger(__name__)

POLICIES = ("latency", "throughput")


@dataclass(frozen=True, slots=True)
class SelectionRequest:
    """What to choose for: a model, its files, and the model's preferences."""

    model: str
    paths: tuple[Path, ...]
    policy: str = "latency"
    max_batch: int = 32
    pin: str | None = None  # a candidate key or a prefix of one, e.g. "openvino/CPU"
    budget_s: float = 3.0


@dataclass(frozen=True, slots=True)
class Selection:
    """A loaded backend, how it was chosen, and the candidates to fall back on, best first."""

    backend: Backend
    report: SelectionReport
    fallbacks: tuple[Candidate, ...]


Clock = Callable[[], float]


class AcceleratorSelector:
    """Measures the candidates for a model and returns the loaded winner."""

    def __init__(
        self,
        registry: RuntimeRegistry,
        options: RuntimeOptions,
        cache: SelectionCache,
        fingerprint: str,
        clock: Clock = time.perf_counter,
    ) -> None:
        self.registry = registry
        self.options = options
        self.cache = cache
        self.fingerprint = fingerprint
        self._clock = clock

    def cache_key(self, request: SelectionRequest) -> str:
        """Key a decision by file digests, hardware, runtime versions, policy and batch."""
        digest = hashlib.sha256()
        for path in sorted(request.paths):
            digest.update(path.name.encode() + b"\0" + _file_digest(path).encode() + b"\0")
        versions = sorted(self.registry.versions().items())
        digest.update(json.dumps([self.fingerprint, versions, request.policy]).encode())
        digest.update(json.dumps([request.max_batch, request.pin]).encode())
        return digest.hexdigest()

    def select(self, request: SelectionRequest) -> Selection:
        """Return a loaded backend for the model, the ranking, and how it was chosen."""
        if request.policy not in POLICIES:
            raise ModelLoadError(f"model '{request.model}': unknown policy '{request.policy}'")
        key = self.cache_key(request)
        cached = None if request.pin else self.cache.get(key)
        if cached is not None:
            # Rebuild the ranking from the cache rather than listing candidates again: listing
            # asks every runtime for its devices, which imports runtimes this model won't use.
            ranked = _ranked_from_report(cached, request.paths)
            if ranked:
                try:
                    return self._load_ranked(
                        request, key, ranked, "cache", cached.measurements, first_only=True
                    )
                except ModelLoadError as error:
                    log.warning(
                        "%s: cached choice no longer loads (%s); measuring again",
                        request.model,
                        error,
                    )
                    self.cache.discard(key)
        candidates = self.registry.candidates(request.paths)
        if not candidates:
            raise ModelLoadError(
                f"model '{request.model}': no installed runtime can run "
                f"{', '.join(p.name for p in request.paths)} (see `edgefleet agent probe`)"
            )
        if request.pin:
            pinned = [c for c in candidates if c.key.startswith(request.pin)]
            if not pinned:
                raise ModelLoadError(
                    f"model '{request.model}': the pin '{request.pin}' matches no candidate; "
                    f"candidates are {', '.join(c.key for c in candidates)}"
                )
            rest = [c for c in candidates if c not in pinned]
            return self._load_ranked(request, key, [*pinned, *rest], "pinned", ())
        return self._measure_all(request, key, candidates)

    def _load_ranked(
        self,
        request: SelectionRequest,
        key: str,
        ranked: Sequence[Candidate],
        source: str,
        measurements: Sequence[Measurement],
        first_only: bool = False,
    ) -> Selection:
        """Load the first candidate of `ranked` that works, without measuring."""
        errors: list[str] = []
        for index, candidate in enumerate(ranked[:1] if first_only else ranked):
            try:
                backend = self._load(candidate)
            except AgentError as error:
                log.warning("%s: %s failed to load: %s", request.model, candidate.key, error)
                errors.append(f"{candidate.key}: {error}")
                continue
            report = SelectionReport(
                model=request.model,
                policy=request.policy,
                chosen=candidate.key,
                ranking=tuple(c.key for c in ranked),
                measurements=tuple(measurements),
                source=source,
                cache_key=key,
            )
            return Selection(backend, report, tuple(ranked[index + 1 :]))
        raise ModelLoadError(f"model '{request.model}': no candidate loads: {'; '.join(errors)}")

    def _measure_all(
        self, request: SelectionRequest, key: str, candidates: Sequence[Candidate]
    ) -> Selection:
        share = request.budget_s / len(candidates)
        measured: list[tuple[Measurement, Backend | None]] = []
        for candidate in candidates:
            measurement, backend = self._measure(candidate, request, share)
            log.info("%s: %s", request.model, _describe(measurement))
            measured.append((measurement, backend))
        working = [(m, b) for m, b in measured if m.ok and b is not None]
        if not working:
            errors = "; ".join(f"{m.candidate}: {m.error}" for m, _ in measured)
            raise ModelLoadError(f"model '{request.model}': every candidate failed: {errors}")
        working.sort(key=lambda mb: _score(mb[0], request.policy))
        winner, backend = working[0]
        for _, other in working[1:]:
            if other is not None:
                other.unload()
        report = SelectionReport(
            model=request.model,
            policy=request.policy,
            chosen=winner.candidate,
            ranking=tuple(m.candidate for m, _ in working),
            measurements=tuple(m for m, _ in measured),
            source="measured",
            cache_key=key,
        )
        self.cache.put(report)
        assert backend is not None
        by_key = {c.key: c for c in candidates}
        return Selection(backend, report, tuple(by_key[k] for k in report.ranking[1:]))

    def _load(self, candidate: Candidate) -> Backend:
        backend = self.registry.create(candidate, self.options)
        backend.load()
        return backend

    def _measure(
        self, candidate: Candidate, request: SelectionRequest, budget_s: float
    ) -> tuple[Measurement, Backend | None]:
        """Load one candidate, warm it up, and time it at batch 1 and at the largest batch."""
        base = (
            candidate.key,
            candidate.runtime,
            candidate.device,
            candidate.path.name,
            candidate.precision,
        )
        started = self._clock()
        try:
            backend = self._load(candidate)
        except AgentError as error:
            return Measurement(*base, ok=False, error=str(error)), None
        load_ms = (self._clock() - started) * 1000
        try:
            description = backend.describe()
            max_batch = request.max_batch if description.batchable else 1
            single = synthetic_inputs(description, 1)
            large = synthetic_inputs(description, max_batch)
            for _ in range(3):
                backend.infer(single)
            backend.infer(large)
            deadline = self._clock() + budget_s / 2
            single_times = self._time_runs(backend, single, deadline, 200)
            deadline = self._clock() + budget_s / 2
            large_times = self._time_runs(backend, large, deadline, 50)
        except AgentError as error:
            backend.unload()
            return Measurement(*base, ok=False, error=str(error), load_ms=load_ms), None
        single_sorted = sorted(single_times)
        return (
            Measurement(
                *base,
                ok=True,
                load_ms=round(load_ms, 2),
                latency_ms_p50=round(statistics.median(single_sorted) * 1000, 4),
                latency_ms_p95=round(single_sorted[int(0.95 * (len(single_sorted) - 1))] * 1000, 4),
                throughput_rows_s=round(max_batch / statistics.median(large_times), 1),
                max_batch=max_batch,
                runs=len(single_times) + len(large_times),
            ),
            backend,
        )

    def _time_runs(
        self, backend: Backend, inputs: Mapping[str, np.ndarray], deadline: float, limit: int
    ) -> list[float]:
        """Time runs until `limit` runs or the deadline, always at least three."""
        times: list[float] = []
        while len(times) < limit and (len(times) < 3 or self._clock() < deadline):
            t0 = self._clock()
            backend.infer(inputs)
            times.append(self._clock() - t0)
        return times


def _score(measurement: Measurement, policy: str) -> float:
    """Lower is better."""
    if policy == "throughput":
        return -(measurement.throughput_rows_s or 0.0)
    return measurement.latency_ms_p50 if measurement.latency_ms_p50 is not None else float("inf")


def _describe(m: Measurement) -> str:
    if not m.ok:
        return f"{m.candidate} failed: {m.error}"
    return (
        f"{m.candidate}: load {m.load_ms:.1f} ms, batch 1 p50 {m.latency_ms_p50:.3f} ms, "
        f"batch {m.max_batch} {m.throughput_rows_s:.0f} rows/s"
    )


def synthetic_inputs(description: BackendDescription, batch: int) -> dict[str, np.ndarray]:
    """Deterministic inputs shaped for the model (variable dims other than batch become 1)."""
    rng = np.random.default_rng(0)
    inputs: dict[str, np.ndarray] = {}
    for spec in description.inputs:
        shape = [
            batch if i == 0 and description.batchable else max(d, 1)
            for i, d in enumerate(spec.shape)
        ]
        dtype = OIP_TO_NUMPY[spec.datatype]
        if spec.datatype == "BYTES":
            array = np.full(shape, b"x", dtype=np.object_)
        elif dtype.kind == "f":
            array = rng.standard_normal(shape).astype(dtype)
        else:
            array = np.zeros(shape, dtype=dtype)
        inputs[spec.name] = array
    return inputs


def _ranked_from_report(report: SelectionReport, paths: Sequence[Path]) -> list[Candidate]:
    """The candidates of a stored report, in its ranking order."""
    by_name = {path.name: path for path in paths}
    by_key = {m.candidate: m for m in report.measurements}
    ranked = []
    for key in report.ranking:
        m = by_key.get(key)
        if m is not None and m.file in by_name:
            ranked.append(Candidate(m.runtime, m.device, by_name[m.file], m.precision))
    return ranked


def _file_digest(path: Path) -> str:
    """SHA-256 of a model file, together with the weights file an OpenVINO IR keeps beside it."""
    digest = hashlib.sha256()
    weights = path.with_suffix(".bin")
    for part in (path, weights) if path.suffix == ".xml" and weights.exists() else (path,):
        with part.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
