"""Writing files so that readers see either the old content or the complete new one.

The data goes to a temporary file in the target's directory, created with its final mode
(`os.open(..., mode)`, so a private key is never readable by others, not even for an instant),
is flushed and fsynced, renamed over the target, and the directory is fsynced so the rename
itself survives a power cut. On any error the temporary file is removed; one that a kill or a
power cut left behind is found by `interrupted_writes`.
"""

from __future__ import annotations

import glob
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

PRIVATE = 0o600
PUBLIC = 0o644


@contextmanager
def atomic_writer(path: Path, mode: int = PUBLIC) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` atomically when the block ends without error."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except OSError as exc:  # name the target, not the temporary file nobody asked for
        raise OSError(exc.errno, exc.strerror, str(path)) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def interrupted_writes(path: Path) -> list[Path]:
    """The temporary files of atomic writes of `path` that a crash stopped before the rename.

    Only the writer of `path` may delete them, and only while it is not writing: a temporary
    file of a write in progress looks the same.
    """
    return sorted(path.parent.glob(f".{glob.escape(path.name)}.*.tmp"))


def write_atomic(path: Path, data: bytes, mode: int = PUBLIC) -> None:
    """Replace `path` with `data` atomically, the new file having `mode`."""
    with atomic_writer(path, mode) as handle:
        handle.write(data)


def fsync_directory(path: Path) -> None:
    """Make the entries of a directory (new names, renames) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def append_durably(path: Path, line: bytes) -> None:
    """Append one line to `path` and fsync it (readers skip a last line torn by a crash)."""
    with path.open("ab") as handle:
        handle.write(line if line.endswith(b"\n") else line + b"\n")
        handle.flush()
        os.fsync(handle.fileno())
