"""Disk space for bundles: refuse a download that cannot fit, and name a full disk plainly.

A bundle needs room twice: for its archive (downloaded into `partial/`, renamed into `blobs/`)
and for its extracted files (about as large). `check_room` refuses a download before it starts
when the file system has less free space than that, so a device whose disk is too small does
not download the same bundle again at every sync only to run out of space each time.
`disk_full` recognises ENOSPC (or an exceeded quota) behind any error, so the activation can
free what the failed attempt wrote before it records the failure: the state file and the event
log need room too.
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

from agent.errors import DownloadFailed

_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def disk_full(error: BaseException | None) -> bool:
    """True when `error`, or an error it was raised from or during, is a full disk or quota."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, OSError) and error.errno in _FULL:
            return True
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged process can still write on the file system of `directory`."""
    return shutil.disk_usage(directory).free


def check_room(directory: Path, digest: str, size: int, have: int) -> None:
    """Raise a retryable DownloadFailed unless the rest of the archive and its extraction fit.

    `size` is the archive's size, `have` the bytes of it already downloaded (blocking: statvfs).
    """
    needed = (size - have) + size
    free = free_bytes(directory)
    if needed > free:
        raise DownloadFailed(
            f"not enough disk space for bundle {digest[:12]}: it needs about {needed} more "
            f"bytes (the rest of the {size}-byte archive and its extracted files), "
            f"{free} are free in {directory.parent}",
            retryable=True,
        )


def no_space_reason(directory: Path, digest: str, size: int) -> str:
    """What the event log says when the disk filled up during an attempt (blocking: statvfs)."""
    try:
        free = f"{free_bytes(directory)} bytes free after cleaning up"
    except OSError:
        free = "free space unknown"
    return (
        f"the disk is full: no space left in {directory} for bundle {digest[:12]} "
        f"({size} bytes); discarded what this attempt wrote ({free})"
    )
