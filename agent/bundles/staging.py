"""From an archive in the store to verified files on disk, ready to load.

`stage_bundle` checks the release signature and every file's hash (through `shared.bundle`),
checks the bundle is the one the assignment names (digest, model name, version), extracts it
safely (or, when an earlier extraction exists, re-checks the files on disk against the signed
manifest), and reads the golden vectors. Blocking: call it from a worker thread.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agent.bundles.store import BundleStore, sha256_file
from agent.errors import ActivationFailed
from shared.assignment import ModelAssignment, check_bundle_matches
from shared.bundle import Manifest, VerifiedBundle, extract_bundle, verify_bundle
from shared.keylist import TrustStore


@dataclass(frozen=True, slots=True)
class StagedBundle:
    """A verified, extracted bundle and what the activation needs from its manifest."""

    manifest: Manifest
    digest: str
    signer: str
    directory: Path
    golden_inputs: dict[str, np.ndarray]
    golden_expected: dict[str, np.ndarray]
    tolerance: float

    @property
    def policy(self) -> str:
        """The selection policy the bundle asks for."""
        return self.manifest.policy

    @property
    def max_batch_size(self) -> int:
        """The largest batch the bundle supports (0 = no batching hint)."""
        return self.manifest.batching.max_batch_size

    @property
    def warm_batch_sizes(self) -> tuple[int, ...]:
        """Every batch size to run once before serving: 1, the preferred ones, the largest."""
        sizes = {1, *self.manifest.batching.preferred_batch_sizes}
        if self.max_batch_size:
            sizes.add(self.max_batch_size)
        return tuple(sorted(sizes))


def stage_bundle(
    archive: Path, store: BundleStore, trust: TrustStore, model: ModelAssignment
) -> StagedBundle:
    """Verify and extract `archive` for `model`; raise a TrustError or ActivationFailed."""
    directory = store.model_dir(model.digest)
    verified: VerifiedBundle | None = None
    if directory.is_dir():
        verified = verify_bundle(archive, trust)
        if not _files_intact(directory, verified.manifest):
            shutil.rmtree(directory)
            verified = None
    if verified is None:
        verified = extract_bundle(archive, directory, trust)
    check_bundle_matches(model, verified)
    manifest = verified.manifest
    golden = manifest.golden
    return StagedBundle(
        manifest=manifest,
        digest=verified.digest,
        signer=verified.signer_keyid,
        directory=directory,
        golden_inputs=_load_arrays(directory / golden.inputs_file),
        golden_expected=_load_arrays(directory / golden.expected_file),
        tolerance=golden.tolerance,
    )


def _files_intact(directory: Path, manifest: Manifest) -> bool:
    """True when every extracted file still has the size and hash the signed manifest gives."""
    for entry in manifest.files:
        path = directory / entry.path
        if not path.is_file() or path.stat().st_size != entry.size:
            return False
        if sha256_file(path) != entry.sha256:
            return False
    return True


def _load_arrays(path: Path) -> dict[str, np.ndarray]:
    """Read a golden `.npz` (never with pickle: the bundle came from the network)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError) as error:
        raise ActivationFailed(f"golden vectors {path.name} are unreadable: {error}") from None
