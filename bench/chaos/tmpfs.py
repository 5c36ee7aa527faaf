"""A size-capped tmpfs for the disk-full scenario: mount, resize, fill, measure, unmount.

Mounting needs root (`mount -t tmpfs -o size=N tmpfs DIR`); `SmallDisk` says so plainly when it
cannot, and `mounted` always unmounts. Sizes are rounded up to whole pages by the kernel, and
`used` counts pages, so every figure is in the same unit as the cap.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

from bench import BenchError

PAGE = os.sysconf("SC_PAGE_SIZE")
PIECE = 64 * 1024


def pages(size: int) -> int:
    """`size` rounded up to whole pages."""
    return -(-size // PAGE) * PAGE


class SmallDisk:
    """A tmpfs mounted at a directory, with a cap that can be moved."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0

    def mount(self, size: int) -> None:
        """Mount the tmpfs with `size` bytes."""
        if os.geteuid() != 0:
            raise BenchError("disk-full needs root to mount a size-capped tmpfs (run as root)")
        self.path.mkdir(parents=True, exist_ok=True)
        self._mount("-t", "tmpfs", "-o", f"size={pages(size)},mode=0700", "tmpfs")
        self.size = pages(size)

    def resize(self, size: int) -> None:
        """Move the cap (a tmpfs refuses a cap below what it holds)."""
        self._mount("-o", f"remount,size={pages(size)}")
        self.size = pages(size)

    def unmount(self) -> None:
        """Unmount (lazily if something still holds a file open)."""
        if os.path.ismount(self.path):
            result = subprocess.run(["umount", str(self.path)], capture_output=True, check=False)
            if result.returncode != 0:
                subprocess.run(["umount", "-l", str(self.path)], capture_output=True, check=False)

    def _mount(self, *args: str) -> None:
        result = subprocess.run(
            ["mount", *args, str(self.path)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BenchError(f"mount {' '.join(args)} {self.path}: {result.stderr.strip()}")

    def used(self) -> int:
        """Bytes in use on the file system."""
        stat = os.statvfs(self.path)
        return (stat.f_blocks - stat.f_bfree) * stat.f_frsize

    def fill(self, path: Path) -> int:
        """Write `path` until the disk is full, as another program on the device might; return
        the bytes written."""
        piece = b"\0" * PIECE
        written = 0
        with path.open("wb", buffering=0) as out:
            try:
                while True:
                    written += out.write(piece) or 0
            except OSError as error:
                if error.errno != errno.ENOSPC:
                    raise
        return written


@contextlib.contextmanager
def mounted(path: Path, size: int) -> Iterator[SmallDisk]:
    """A `SmallDisk` mounted for the block, unmounted afterwards whatever happens."""
    disk = SmallDisk(path)
    try:
        disk.mount(size)
        yield disk
    finally:
        disk.unmount()
