"""Fetching a bundle into the store: resumable, hashed while streaming, capped in size.

A download appends to `partial/<digest>.part`. After a broken connection (or a restart) it asks
for the rest with `Range: bytes=<have>-`; a server that ignores the range and sends everything
again is handled by starting over. Every byte is hashed as it arrives (the hash of a resumed
part is rebuilt from disk first), more bytes than the assignment states stop the download at
once, and only an archive whose SHA-256 equals the assigned digest is renamed into `blobs/`.
A download that could not fit on the disk (with its extraction) is refused before it starts.
`file://` URLs serve air-gapped devices: the file is copied and hashed the same way.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import random
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote, urlsplit

import aiohttp

from agent.bundles.space import check_room
from agent.bundles.store import BundleStore
from agent.errors import DownloadFailed
from shared.atomic import fsync_directory

log = logging.getLogger(__name__)

CHUNK = 1 << 20
UNKNOWN_SIZE_CAP = 4 << 30  # the bundle extraction limit: nothing larger could be installed


@dataclass(frozen=True, slots=True)
class DownloadPolicy:
    """How hard to try."""

    attempts: int = 6
    first_backoff_s: float = 0.5
    max_backoff_s: float = 30.0
    read_timeout_s: float = 60.0


class _Part:
    """The partial file and the running hash of what it holds (used from worker threads)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hasher = hashlib.sha256()
        self.size = 0
        self.handle: BinaryIO = path.open("ab")
        self.handle.seek(0, os.SEEK_END)

    def rehash(self) -> None:
        """Rebuild the hash of bytes already on disk (a resumed download)."""
        self.hasher = hashlib.sha256()
        self.size = 0
        with self.path.open("rb") as existing:
            while block := existing.read(CHUNK):
                self.hasher.update(block)
                self.size += len(block)

    def restart(self) -> None:
        """Throw away what was downloaded."""
        self.handle.truncate(0)
        self.hasher = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> None:
        """Append and hash one chunk."""
        self.handle.write(data)
        self.hasher.update(data)
        self.size += len(data)

    def finish(self) -> None:
        """Flush the file to disk and close it."""
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()


class BundleDownloader:
    """Downloads assigned bundles into a `BundleStore`."""

    def __init__(
        self,
        store: BundleStore,
        session: aiohttp.ClientSession,
        executor: Executor,
        policy: DownloadPolicy | None = None,
    ) -> None:
        self.store = store
        self.session = session
        self.executor = executor
        self.policy = policy or DownloadPolicy()

    async def fetch(self, url: str, digest: str, size: int) -> Path:
        """Return the path of the archive with `digest`, downloading it if needed.

        `size` is the exact size the assignment states; 0 means unknown, and then only the
        digest is checked and the download is capped at `UNKNOWN_SIZE_CAP`.
        """
        exact = size > 0
        size = size if exact else UNKNOWN_SIZE_CAP
        blob = self.store.blob(digest)
        if blob.is_file():
            return blob
        part = await self._run(_Part, self.store.part(digest))
        try:
            await self._run(part.rehash)
            if part.size > size:
                await self._run(part.restart)
            if exact:
                await self._run(check_room, self.store.partial, digest, size, part.size)
            scheme = urlsplit(url).scheme
            if scheme == "file":
                await self._run(self._copy_file, Path(unquote(urlsplit(url).path)), part, size)
            elif scheme in ("http", "https"):
                await self._download(url, part, size, exact)
            else:
                raise DownloadFailed(f"unsupported bundle URL scheme in {url!r}")
            await self._run(part.finish)
        except BaseException:
            await self._run(part.handle.close)
            raise
        if exact and part.size != size:
            raise DownloadFailed(f"{url}: got {part.size} bytes, the assignment says {size}")
        got = part.hasher.hexdigest()
        if got != digest:
            await self._run(part.path.unlink)
            raise DownloadFailed(
                f"{url}: the download hashes to {got[:16]}..., the assignment says "
                f"{digest[:16]}...; discarded"
            )
        await self._run(_commit, part.path, blob)
        log.info("downloaded %s (%d bytes)", digest[:16], size)
        return blob

    async def _run(self, func: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    async def _download(self, url: str, part: _Part, size: int, exact: bool) -> None:
        policy = self.policy
        backoff = policy.first_backoff_s
        for attempt in range(1, policy.attempts + 1):
            if part.size == size:
                return
            try:
                await self._get(url, part, size)
                # A response that ends without an error is complete (a cut one raises); with
                # no size assigned that is all there is to know.
                if part.size == size or not exact:
                    return
                reason = f"the connection closed after {part.size} of {size} bytes"
            except (aiohttp.ClientError, TimeoutError) as error:
                reason = f"{type(error).__name__}: {error}"
            if attempt == policy.attempts:
                raise DownloadFailed(
                    f"{url}: giving up after {attempt} attempts ({reason})", retryable=True
                )
            delay = min(policy.max_backoff_s, backoff) * random.uniform(0.5, 1.0)
            log.warning("%s: %s; resuming at byte %d in %.1f s", url, reason, part.size, delay)
            await asyncio.sleep(delay)
            backoff *= 2

    async def _get(self, url: str, part: _Part, size: int) -> None:
        headers = {"Range": f"bytes={part.size}-"} if part.size else {}
        timeout = aiohttp.ClientTimeout(sock_read=self.policy.read_timeout_s)
        async with self.session.get(url, headers=headers, timeout=timeout) as response:
            if response.status == 200 and part.size:
                log.info("%s ignored the Range request; starting over", url)
                await self._run(part.restart)
            elif response.status == 206:
                start = _range_start(response.headers.get("Content-Range", ""))
                if start != part.size:
                    raise DownloadFailed(
                        f"{url}: asked for byte {part.size}, got {start}", retryable=True
                    )
            elif response.status == 416:
                return  # nothing left to send: the size check decides
            elif response.status >= 400:
                if response.status < 500:
                    raise DownloadFailed(f"{url}: HTTP {response.status} {response.reason}")
                raise aiohttp.ClientResponseError(
                    response.request_info,
                    (),
                    status=response.status,
                    message=response.reason or "server error",
                )
            # One chunk is written and hashed in a worker thread while the next one is read,
            # so the network and the disk work at the same time; writes stay in order because
            # each waits for the one before it.
            loop = asyncio.get_running_loop()
            received = part.size
            writing: asyncio.Future[None] | None = None
            try:
                async for chunk in response.content.iter_chunked(CHUNK):
                    received += len(chunk)
                    if received > size:
                        raise DownloadFailed(
                            f"{url}: the server sent more than the {size} bytes the assignment "
                            "states"
                        )
                    if writing is not None:
                        await writing  # a disk error surfaces here
                    writing = loop.run_in_executor(self.executor, part.write, chunk)
                if writing is not None:
                    await writing
            except BaseException as error:
                # Whatever stopped the stream, let the write in flight land, so the part file
                # and its running hash agree before a resume.
                if writing is not None and not writing.done():
                    await asyncio.gather(writing, return_exceptions=True)
                if isinstance(error, DownloadFailed):
                    await self._run(part.restart)
                raise

    @staticmethod
    def _copy_file(source: Path, part: _Part, size: int) -> None:
        try:
            handle = source.open("rb")
        except OSError as error:
            raise DownloadFailed(f"cannot read {source}: {error}", retryable=True) from None
        with handle:
            handle.seek(part.size)
            while block := handle.read(CHUNK):
                if part.size + len(block) > size:
                    part.restart()
                    raise DownloadFailed(f"{source} is larger than the {size} bytes assigned")
                part.write(block)


def _range_start(content_range: str) -> int | None:
    """The first byte of `Content-Range: bytes START-END/TOTAL`."""
    try:
        unit, _, rest = content_range.partition(" ")
        return int(rest.split("-", 1)[0]) if unit == "bytes" else None
    except ValueError:
        return None


def _commit(part: Path, blob: Path) -> None:
    os.replace(part, blob)
    fsync_directory(blob.parent)
