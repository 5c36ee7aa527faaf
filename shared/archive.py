"""The bundle's container: a plain ustar archive in one canonical form, read in one pass.

Canonical form (what `ArchiveWriter` writes and the verifier demands): regular-file members
only, each header exactly `member_header(name, size)` (mode 0644, uid/gid 0, no owner names,
mtime 0), content padded with zeros to 512 bytes, two zero blocks, then zeros up to a multiple
of 10240 bytes and nothing after. So the archive is fully determined by its members' names and
bytes, and any changed byte anywhere is caught: in a header by its checksum and the canonical
comparison, in content by the member hashes, in padding by the zero checks.

`ArchiveReader` reads the file front to back in large blocks into a small ring of buffers; a
worker thread hashes each block into the archive digest while the caller parses headers and
hashes member contents from the same buffers, so each byte is read once and the two hashes
run on two cores. Each header is checked before any of its content is read: type (regular
files only), name (no absolute path, `..`, backslash, control character, duplicate).
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import BinaryIO

from shared.trust_errors import TamperedBundle, UnsafeArchive

BLOCK = 512
RECORD = 20 * BLOCK
READ_SIZE = 1 << 20
_RING = 3  # buffers: one being parsed, up to two still being hashed by the worker

_TYPE_NAMES = {
    tarfile.SYMTYPE: "a symbolic link",
    tarfile.LNKTYPE: "a hard link",
    tarfile.CHRTYPE: "a character device",
    tarfile.BLKTYPE: "a block device",
    tarfile.FIFOTYPE: "a FIFO",
    tarfile.DIRTYPE: "a directory",
    tarfile.CONTTYPE: "a contiguous file",
    tarfile.XHDTYPE: "a pax extended header",
    tarfile.XGLTYPE: "a pax global header",
    tarfile.GNUTYPE_LONGNAME: "a GNU long-name header",
    tarfile.GNUTYPE_LONGLINK: "a GNU long-link header",
    tarfile.GNUTYPE_SPARSE: "a sparse file",
}


@dataclass(frozen=True, slots=True)
class ExtractionLimits:
    """Caps checked on the headers before any content is read."""

    max_total_bytes: int = 4 << 30  # sum of the model files' sizes
    max_files: int = 256  # model files, not counting manifest.json and manifest.sig
    max_manifest_bytes: int = 1 << 20


DEFAULT_LIMITS = ExtractionLimits()


@dataclass(frozen=True, slots=True)
class Member:
    """One member's header as read, checked for type, name and duplicates."""

    name: str
    size: int
    header: bytes
    offset: int  # of the header in the archive


def member_header(name: str, size: int) -> bytes:
    """The canonical 512-byte ustar header of a regular file."""
    info = tarfile.TarInfo(name)
    info.size = size
    info.mode = 0o644
    return info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict")


def padding(size: int) -> bytes:
    """The zeros that follow `size` bytes of content up to the next 512-byte block."""
    return bytes(-size % BLOCK)


def end_of_archive(offset: int) -> bytes:
    """Two zero blocks, then zeros to the next multiple of the record size."""
    end = offset + 2 * BLOCK
    return bytes(end - offset + -end % RECORD)


def name_problem(name: str) -> str | None:
    """Say why a member name must never be extracted, or return None."""
    if name.startswith("/"):
        return "is an absolute path"
    if "\\" in name:
        return "contains a backslash"
    if any(ord(c) < 32 or c == "\x7f" for c in name):
        return "contains a control character"
    parts = name.split("/")
    if ".." in parts:
        return "contains a '..' component"
    if "" in parts or "." in parts:
        return "contains an empty or '.' component"
    return None


class ArchiveReader:
    """Reads an archive once, front to back, hashing every byte in a worker thread."""

    def __init__(
        self,
        handle: io.RawIOBase | io.BufferedIOBase,
        executor: Executor,
        read_size: int = READ_SIZE,
    ) -> None:
        self._handle = handle
        self._executor = executor
        # No bigger than the file: zeroing megabytes would dominate verifying a small bundle.
        read_size = min(read_size, max(BLOCK, os.fstat(handle.fileno()).st_size))
        self._buffers = [bytearray(read_size) for _ in range(_RING)]
        self._hashing: list[Future[None] | None] = [None] * _RING
        self._turn = 0
        self._view = memoryview(b"")
        self._digest = hashlib.sha256()
        self._names: set[str] = set()
        self.offset = 0  # bytes consumed by the caller

    def _fill(self) -> bool:
        """Read the next block; False at the end of the file."""
        index = self._turn
        self._turn = (index + 1) % _RING
        pending = self._hashing[index]
        if pending is not None:
            pending.result()  # the worker is done with this buffer
        buffer = self._buffers[index]
        count = self._handle.readinto(buffer)
        if not count:
            return False
        self._view = memoryview(buffer)[:count]
        self._hashing[index] = self._executor.submit(self._digest.update, self._view)
        return True

    def chunks(self, size: int, what: str) -> Iterator[memoryview]:
        """Yield the next `size` bytes as views into the buffers (use each before the next)."""
        remaining = size
        while remaining:
            if not self._view and not self._fill():
                raise TamperedBundle(
                    f"the archive is truncated: it ends {size - remaining} bytes into {what} "
                    f"({size} expected, at offset {self.offset})"
                )
            chunk = self._view[:remaining]
            self._view = self._view[len(chunk) :]
            remaining -= len(chunk)
            self.offset += len(chunk)
            yield chunk

    def read(self, size: int, what: str) -> bytes:
        """Return the next `size` bytes (for headers and small members)."""
        return b"".join(bytes(chunk) for chunk in self.chunks(size, what))

    def expect_zeros(self, size: int, what: str) -> None:
        """Consume `size` bytes that must all be zero."""
        start = self.offset
        if any(self.read(size, what)):
            raise TamperedBundle(f"{what} at offset {start} holds non-zero bytes")

    def next_member(self) -> Member | None:
        """Read and check the next header; None at the end-of-archive marker."""
        offset = self.offset
        if not self._view and not self._fill():
            raise TamperedBundle(
                f"the archive is truncated: it ends at offset {offset} without an end marker"
            )
        header = self.read(BLOCK, f"the header at offset {offset}")
        if not any(header):
            return None
        try:
            info = tarfile.TarInfo.frombuf(header, "utf-8", "strict")
        except (tarfile.HeaderError, UnicodeDecodeError) as exc:
            raise TamperedBundle(
                f"the member header at offset {offset} is corrupt: {exc}"
            ) from None
        name = info.name
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            kind = _TYPE_NAMES.get(info.type, f"of type {info.type!r}")
            target = f" to {info.linkname!r}" if info.linkname else ""
            raise UnsafeArchive(f"member {name!r} is {kind}{target}; only regular files allowed")
        problem = name_problem(name)
        if problem:
            raise UnsafeArchive(f"member name {name!r} {problem}")
        if name in self._names:
            raise UnsafeArchive(f"member {name!r} appears twice in the archive")
        self._names.add(name)
        return Member(name, info.size, header, offset)

    def expect_end(self) -> None:
        """After the first zero block: the second one, the record padding, then end of file."""
        rest = -(self.offset + BLOCK) % RECORD + BLOCK
        self.expect_zeros(rest, "the end-of-archive padding")
        if self._view or self._fill():
            raise TamperedBundle(
                f"unexpected data after the end of the archive (offset {self.offset})"
            )

    def digest(self) -> tuple[str, int]:
        """The archive's sha256 (hex) and size, once every byte has been consumed."""
        for pending in self._hashing:
            if pending is not None:
                pending.result()
        return self._digest.hexdigest(), self.offset


class ArchiveWriter:
    """Writes members in canonical form, hashing the archive as it goes."""

    def __init__(self, handle: BinaryIO) -> None:
        self._handle = handle
        self._digest = hashlib.sha256()
        self.offset = 0

    def write(self, data: bytes | memoryview) -> None:
        """Write raw archive bytes."""
        self._handle.write(data)
        self._digest.update(data)
        self.offset += len(data)

    def close(self) -> tuple[str, int]:
        """Write the end-of-archive marker; return the archive's sha256 (hex) and size."""
        self.write(end_of_archive(self.offset))
        return self._digest.hexdigest(), self.offset
