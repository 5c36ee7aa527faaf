"""The agent's content-addressed bundle store, under `<state_dir>/bundles/`.

    blobs/<sha256>.bundle       verified-by-hash archives, named by their digest
    partial/<sha256>.part       a download in progress (resumed with a Range request)
    models/<sha256>/            the archive's files, extracted after signature verification

An archive lands in `blobs/` only after its bytes hashed to its name, and an extracted
directory appears only complete (it is renamed into place), so whatever a crash leaves in
`blobs/` and `models/` is whole; `partial/` is the only place with half-written files.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

_HEX = frozenset("0123456789abcdef")


def check_digest(digest: str) -> str:
    """Return `digest` if it is a lowercase hex SHA-256, else raise ValueError."""
    if len(digest) != 64 or not set(digest) <= _HEX:
        raise ValueError(f"not a sha256 digest: {digest!r}")
    return digest


class BundleStore:
    """Where bundles live on the device, by digest."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.partial = root / "partial"
        self.models = root / "models"
        for directory in (self.blobs, self.partial, self.models):
            directory.mkdir(parents=True, exist_ok=True)

    def blob(self, digest: str) -> Path:
        """Where the archive with this digest is (or will be) kept."""
        return self.blobs / f"{check_digest(digest)}.bundle"

    def part(self, digest: str) -> Path:
        """Where a download of this digest in progress is kept."""
        return self.partial / f"{check_digest(digest)}.part"

    def model_dir(self, digest: str) -> Path:
        """Where the archive's files are extracted."""
        return self.models / check_digest(digest)

    def has(self, digest: str) -> bool:
        """True when the archive is in the store."""
        return self.blob(digest).is_file()

    def collect(self, keep: Iterable[str]) -> list[str]:
        """Delete every bundle, extraction and partial download not in `keep`; return digests.

        Blocking (directory walks and deletes): call from a worker thread.
        """
        wanted = set(keep)
        removed: list[str] = []
        for path in self.blobs.glob("*.bundle"):
            if path.stem not in wanted:
                path.unlink(missing_ok=True)
                removed.append(path.stem)
        for path in self.models.iterdir():
            if path.name not in wanted:
                shutil.rmtree(path, ignore_errors=True)
        for path in self.partial.glob("*.part"):
            if path.stem not in wanted:
                path.unlink(missing_ok=True)
        # Extractions interrupted by a crash leave temporary directories behind.
        for path in self.models.glob(".*"):
            shutil.rmtree(path, ignore_errors=True)
        if removed:
            log.info("collected %d old bundle(s)", len(removed))
        return removed


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (blocking)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()
