"""Content-addressed blob storage for bundles, behind an interface an S3 store can implement."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Protocol

from shared.atomic import fsync_directory

_DIGEST = re.compile(r"[0-9a-f]{64}")


def valid_digest(digest: str) -> bool:
    """Whether `digest` is a lowercase SHA-256 hex string (and so safe in a path)."""
    return _DIGEST.fullmatch(digest) is not None


class BlobStore(Protocol):
    """Where verified bundles live, named by the SHA-256 of their bytes."""

    def temp_file(self) -> Path:
        """A new empty file to stream an upload into, on the same file system as the blobs."""
        ...

    def put(self, temp: Path, digest: str) -> None:
        """Move `temp` in as `digest` (the caller has hashed it); a no-op if already there."""
        ...

    def path(self, digest: str) -> Path:
        """A local file holding the blob (an S3 store would cache or presign instead)."""
        ...

    def exists(self, digest: str) -> bool:
        """Whether the blob is stored."""
        ...

    def delete(self, digest: str) -> None:
        """Remove the blob; a no-op if it is absent."""
        ...


class FileBlobStore:
    """Blobs as `<root>/<sha256[:2]>/<sha256>.bundle`, moved in by an atomic rename."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def temp_file(self) -> Path:
        incoming = self.root / ".incoming"
        incoming.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=incoming, suffix=".partial")
        os.close(fd)
        return Path(name)

    def put(self, temp: Path, digest: str) -> None:
        target = self.path(digest)
        if target.exists():
            temp.unlink(missing_ok=True)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        with temp.open("rb") as file:
            os.fsync(file.fileno())
        os.replace(temp, target)
        fsync_directory(target.parent)

    def path(self, digest: str) -> Path:
        if not valid_digest(digest):
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.root / digest[:2] / f"{digest}.bundle"

    def exists(self, digest: str) -> bool:
        return self.path(digest).is_file()

    def delete(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
