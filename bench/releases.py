"""The operator's side of `bench.bundles`: keys, signed releases of the sample MLP, assignments.

Every release is a new version with its own model bytes: the FP32 ONNX file gets a new
`doc_string` (the network and its outputs are unchanged), so the bundle's digest differs and
the agent's selection cache misses, as it would for a release with new weights. A large
release is the same bundle plus an incompressible `weights.bin` listed in the manifest.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx

from agent.bundle_builder import BuildRequest, build_bundle
from agent.runtimes.registry import RuntimeRegistry
from agent.sample_models import SampleModel
from shared.assignment import Assignment, ModelAssignment, sign_assignment
from shared.atomic import write_atomic
from shared.bundle import FileEntry, extract_bundle, write_bundle
from shared.key_directory import KeyDirectory
from shared.keylist import TrustStore

MODEL = "mlp"
DEVICE_ID = "bench-device"
WEIGHTS = "weights.bin"
CHUNK_BYTES = 16 * 1024 * 1024  # the random weights are written in pieces this large
ASSIGNMENT_LIFETIME_S = 3600.0


@dataclass(frozen=True)
class Release:
    """A signed bundle on disk and what an assignment needs to name it."""

    path: Path
    version: int
    digest: str
    size: int

    def entry(self, url: str) -> ModelAssignment:
        """This release as an assignment entry downloaded from `url`."""
        return ModelAssignment(MODEL, self.version, self.digest, url, self.size)


def write_weights(path: Path, size: int, seed: int = 0) -> FileEntry:
    """Write `size` random (incompressible) bytes, like a model's weights; return its entry."""
    generator = np.random.default_rng(seed)
    with path.open("wb") as out:
        left = size
        while left:
            piece = min(left, CHUNK_BYTES)
            out.write(generator.bytes(piece))
            left -= piece
    return FileEntry.of(WEIGHTS, path)


class ReleaseDesk:
    """Keys in a scratch directory, and the releases and assignments signed with them."""

    def __init__(self, work: Path, models_dir: Path, sample: SampleModel) -> None:
        self.dir = work / "releases"
        self.dir.mkdir(parents=True)
        keys = KeyDirectory(work / "keys")
        keys.create(time.time())
        self.keys = keys
        self.trust: TrustStore = keys.trust_store()
        self._release_key = keys.load_key("release")
        self._assignment_key = keys.load_key("assignment")
        self._registry = RuntimeRegistry.default()
        # The FP32 variants written for this machine: ONNX, and OpenVINO IR / TFLite if present.
        self._variants = [models_dir / f.model.file for f in sample.files if f.precision == "fp32"]
        self.assignment_path = work / "assignment.json"
        self.serial = 0

    def build(self, version: int, weights: tuple[Path, FileEntry] | None = None) -> Release:
        """Build and sign version `version`; with `weights`, add that file to the bundle."""
        source = self.dir / f"v{version}"
        source.mkdir()
        models = [self._distinct_onnx(path, source) for path in self._variants]
        out = self.dir / f"{MODEL}-v{version}.bundle"
        request = BuildRequest(MODEL, version, tuple(models))
        manifest, digest = build_bundle(request, out, self._release_key, self._registry)
        if weights is not None:
            # Re-sign the built bundle's files with the weights added (build_bundle takes models
            # only), from an extraction of it.
            files = source / "files"
            extract_bundle(out, files, self.trust)
            sources = {entry.path: files / entry.path for entry in manifest.files}
            sources[WEIGHTS] = weights[0]
            manifest = replace(manifest, files=(*manifest.files, weights[1]))
            digest = write_bundle(out, manifest, sources, self._release_key)
            shutil.rmtree(files)
        return Release(out, version, digest.sha256, digest.size)

    @staticmethod
    def _distinct_onnx(path: Path, folder: Path) -> Path:
        """A copy of an ONNX file with this release's doc string; other formats are shared."""
        if path.suffix != ".onnx":
            return path
        model = onnx.load(str(path))
        model.doc_string = f"EdgeFleet bundle benchmark, {folder.name}"
        copy = folder / path.name
        onnx.save(model, str(copy))
        return copy

    def assign(self, release: Release, url: str) -> float:
        """Sign an assignment naming `release` at `url` and write it; return when it was written."""
        self.serial += 1
        now = time.time()
        assignment = Assignment(
            DEVICE_ID, self.serial, now, now + ASSIGNMENT_LIFETIME_S, (release.entry(url),)
        )
        write_atomic(self.assignment_path, sign_assignment(assignment, self._assignment_key))
        return time.time()
