"""Building a signed bundle from model files, with golden vectors recorded by running them.

Each model file is a variant. It is loaded with the agent's own runtimes (the first candidate
of `RuntimeRegistry` that loads), which also gives the input/output signature. The golden
inputs (given as an .npz, or generated deterministically from the signature at batch 4) run
through the first variant to record the expected outputs; every other variant must agree
within the tolerance, so a bundle never ships a variant that computes something else.

Bundle paths: each model file under its own name (an OpenVINO `.xml` brings its `.bin`), and
`golden/inputs.npz`, `golden/expected.npz`.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.errors import AgentError
from agent.runtimes.base import Backend, BackendDescription, RuntimeOptions
from agent.runtimes.registry import RuntimeRegistry
from agent.selection import synthetic_inputs
from shared.bundle import BundleDigest, write_bundle
from shared.keys import PrivateKey
from shared.manifest import (
    BatchingHints,
    Compatibility,
    FileEntry,
    Golden,
    Manifest,
    TensorSignature,
    Variant,
)

GOLDEN_INPUTS = "golden/inputs.npz"
GOLDEN_EXPECTED = "golden/expected.npz"
GOLDEN_BATCH = 4

Arrays = dict[str, np.ndarray]


class BundleBuildError(AgentError):
    """A bundle cannot be built from these files; the message says which file and why."""


@dataclass(frozen=True, slots=True)
class BuildRequest:
    """What to build: the model's name and version, its files, and the manifest's hints."""

    name: str
    version: int
    models: tuple[Path, ...]
    golden_inputs: Path | None = None
    tolerance: float = 1e-4
    policy: str = "latency"
    max_batch_size: int = 32
    # Output name -> class labels; the key None stands for the model's only output.
    labels: Mapping[str | None, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LoadedVariant:
    """One model file loaded on the first runtime that could load it."""

    path: Path
    backend: Backend
    description: BackendDescription

    @property
    def files(self) -> tuple[Path, ...]:
        """The file and its companions (an OpenVINO IR's weights)."""
        weights = self.path.with_suffix(".bin")
        return (self.path, weights) if self.path.suffix.lower() == ".xml" else (self.path,)

    @property
    def label(self) -> str:
        """`mlp.tflite (tflite/CPU)`, as messages name a variant."""
        d = self.description
        return f"{self.path.name} ({d.runtime}/{d.device})"


def build_bundle(
    request: BuildRequest, out: Path, release_key: PrivateKey, registry: RuntimeRegistry
) -> tuple[Manifest, BundleDigest]:
    """Load every variant, record the golden vectors, write and sign the bundle at `out`."""
    options = RuntimeOptions(max_batch_size=request.max_batch_size)
    with ExitStack() as stack:
        variants = [
            stack.enter_context(_loaded(registry, path, options)) for path in request.models
        ]
        reference = variants[0]
        for variant in variants[1:]:
            _check_signature(reference, variant)
        labels = _resolve_labels(request.labels, reference.description)
        inputs = _golden_inputs(request, reference.description)
        expected = _run(reference, inputs)
        for variant in variants[1:]:
            _check_agreement(variant, _run(variant, inputs), expected, request.tolerance)
        sources = _sources(variants)
        with tempfile.TemporaryDirectory() as scratch:
            sources[GOLDEN_INPUTS] = _save_npz(Path(scratch) / "inputs.npz", inputs)
            sources[GOLDEN_EXPECTED] = _save_npz(Path(scratch) / "expected.npz", expected)
            manifest = _manifest(request, variants, sources, labels)
            digest = write_bundle(out, manifest, sources, release_key)
    return manifest, digest


@contextmanager
def _loaded(
    registry: RuntimeRegistry, path: Path, options: RuntimeOptions
) -> Iterator[LoadedVariant]:
    if not path.is_file():
        raise BundleBuildError(f"{path}: no such file")
    candidates = registry.candidates([path])
    if not candidates:
        raise BundleBuildError(f"{path.name}: no installed runtime reads this kind of file")
    errors = []
    for candidate in candidates:
        try:
            backend = registry.create(candidate, options)
            backend.load()
        except AgentError as error:
            errors.append(f"{candidate.key}: {error}")
            continue
        variant = LoadedVariant(path, backend, backend.describe())
        missing = [f.name for f in variant.files if not f.is_file()]
        if missing:
            backend.unload()
            raise BundleBuildError(f"{path.name}: its companion {missing[0]} is missing")
        try:
            yield variant
        finally:
            backend.unload()
        return
    raise BundleBuildError(f"{path.name}: no runtime loads it: {'; '.join(errors)}")


def _check_signature(reference: LoadedVariant, variant: LoadedVariant) -> None:
    def names(d: BackendDescription) -> list[tuple[str, str]]:
        return [(t.name, t.datatype) for t in (*d.inputs, *d.outputs)]

    if names(variant.description) != names(reference.description):
        raise BundleBuildError(
            f"variant {variant.label} has inputs/outputs {names(variant.description)}, but "
            f"{reference.label} has {names(reference.description)}"
        )


def _resolve_labels(
    labels: Mapping[str | None, tuple[str, ...]], description: BackendDescription
) -> dict[str, tuple[str, ...]]:
    shapes = {t.name: t.shape for t in description.outputs}
    resolved: dict[str, tuple[str, ...]] = {}
    for named, names in labels.items():
        if named is None and len(shapes) != 1:
            raise BundleBuildError(f"the model has outputs {sorted(shapes)}: name one, OUTPUT=FILE")
        output = next(iter(shapes)) if named is None else named
        if output not in shapes:
            raise BundleBuildError(
                f"labels name output {output!r}; the outputs are {sorted(shapes)}"
            )
        classes = shapes[output][-1] if shapes[output] else -1
        if classes > 0 and classes != len(names):
            raise BundleBuildError(
                f"{len(names)} labels for output {output!r}, which has {classes} classes"
            )
        resolved[output] = names
    return resolved


def _golden_inputs(request: BuildRequest, description: BackendDescription) -> Arrays:
    if request.golden_inputs is None:
        return synthetic_inputs(description, GOLDEN_BATCH if description.batchable else 1)
    with np.load(request.golden_inputs, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    wanted = sorted(spec.name for spec in description.inputs)
    if sorted(arrays) != wanted:
        raise BundleBuildError(
            f"{request.golden_inputs}: holds arrays {sorted(arrays)}, the model's inputs are "
            f"{wanted}"
        )
    return arrays


def _run(variant: LoadedVariant, inputs: Arrays) -> Arrays:
    try:
        return variant.backend.infer(inputs)
    except AgentError as error:
        raise BundleBuildError(
            f"variant {variant.label} failed on the golden inputs: {error}"
        ) from error


def _check_agreement(
    variant: LoadedVariant, actual: Arrays, expected: Arrays, tolerance: float
) -> None:
    for name, want in expected.items():
        got = actual.get(name)
        if got is None or got.shape != want.shape:
            shape = None if got is None else got.shape
            raise BundleBuildError(
                f"variant {variant.label}: output {name!r} has shape {shape}, expected {want.shape}"
            )
        if want.dtype == np.object_:
            same = bool(np.array_equal(got, want))
            diff = 0.0 if same else float("inf")
        else:
            diff = float(
                np.max(np.abs(got.astype(np.float64) - want.astype(np.float64)), initial=0)
            )
        if not diff <= tolerance:  # `not <=` also catches NaN
            raise BundleBuildError(
                f"variant {variant.label} differs from the first variant on output {name!r} by "
                f"{diff:.3g} (tolerance {tolerance:g})"
            )


def _sources(variants: Sequence[LoadedVariant]) -> dict[str, Path]:
    sources: dict[str, Path] = {}
    for variant in variants:
        for path in variant.files:
            if path.name in sources and sources[path.name].resolve() != path.resolve():
                raise BundleBuildError(
                    f"two files are named {path.name}: {sources[path.name]}, {path}"
                )
            sources[path.name] = path
    return sources


def _save_npz(path: Path, arrays: Arrays) -> Path:
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _manifest(
    request: BuildRequest,
    variants: Sequence[LoadedVariant],
    sources: Mapping[str, Path],
    labels: dict[str, tuple[str, ...]],
) -> Manifest:
    reference = variants[0].description
    outputs = tuple(TensorSignature(t.name, t.datatype, t.shape) for t in reference.outputs)
    return Manifest(
        name=request.name,
        version=request.version,
        created_at=time.time(),
        files=tuple(FileEntry.of(path, source) for path, source in sources.items()),
        variants=tuple(
            Variant(v.description.runtime, v.description.precision, v.path.name) for v in variants
        ),
        inputs=tuple(TensorSignature(t.name, t.datatype, t.shape) for t in reference.inputs),
        outputs=outputs,
        compatibility=Compatibility(
            min_runtime_versions={
                v.description.runtime: v.description.runtime_version for v in variants
            }
        ),
        golden=Golden(GOLDEN_INPUTS, GOLDEN_EXPECTED, request.tolerance),
        batching=BatchingHints(request.max_batch_size if reference.batchable else 1),
        policy=request.policy,
        labels=labels,
    )
