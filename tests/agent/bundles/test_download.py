"""`BundleDownloader` against a real HTTP server in the test's loop, and against files."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from agent.bundles.download import BundleDownloader, DownloadPolicy
from agent.bundles.store import BundleStore
from agent.errors import DownloadFailed

# Several socket reads' worth, so a cut in the middle leaves bytes on both sides.
BODY = os.urandom(300_000)
DIGEST = hashlib.sha256(BODY).hexdigest()
CUT = 120_000
# Retries in milliseconds, and a read timeout short enough to notice a stalled server quickly.
FAST = DownloadPolicy(attempts=3, first_backoff_s=0.01, max_backoff_s=0.02, read_timeout_s=0.5)


@dataclass
class BundleServer:
    """Serves BODY at /bundle, honouring `Range`, and misbehaving as a test tells it to."""

    body: bytes = BODY
    requests: list[str | None] = field(default_factory=list)  # each request's Range header
    statuses: list[int] = field(default_factory=list)  # answer these first, one per request
    cut_first: int | None = None  # the first response stops after this many bytes...
    stall: bool = False  # ...and then hangs (True) or drops the connection (False)
    ignore_range: bool = False  # always 200 with the whole body
    released: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        """The aiohttp application serving the bundle."""
        app = web.Application()
        app.router.add_get("/bundle", self.handle)
        return app

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Answer one request for the bundle (or part of it)."""
        header = request.headers.get("Range")
        self.requests.append(header)
        if self.statuses:
            return web.Response(status=self.statuses.pop(0))
        start = 0
        if header is not None and not self.ignore_range:
            start = int(header.removeprefix("bytes=").removesuffix("-"))
        body = self.body[start:]
        response = web.StreamResponse(status=206 if start else 200)
        response.content_length = len(body)
        if start:
            response.headers["Content-Range"] = (
                f"bytes {start}-{len(self.body) - 1}/{len(self.body)}"
            )
        await response.prepare(request)
        if self.cut_first is not None and len(self.requests) == 1:
            await response.write(body[: self.cut_first])
            if self.stall:
                # The client's read timeout is what ends this connection; the handler waits
                # for the test to finish so it never writes again.
                await self.released.wait()
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(body)
        await response.write_eof()
        return response


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    """Worker threads for the downloader's file writes and hashing."""
    pool = ThreadPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True)


@pytest.fixture
def store(tmp_path: Path) -> BundleStore:
    """An empty bundle store."""
    return BundleStore(tmp_path / "bundles")


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """The HTTP client the agent would use."""
    async with aiohttp.ClientSession() as client:
        yield client


@pytest.fixture
async def server() -> AsyncIterator[tuple[BundleServer, str]]:
    """A live bundle server in the test's loop, and the bundle's URL."""
    bundles = BundleServer()
    test_server = TestServer(bundles.app())
    await test_server.start_server()
    try:
        yield bundles, str(test_server.make_url("/bundle"))
    finally:
        bundles.released.set()
        await test_server.close()


def downloader(
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
    policy: DownloadPolicy = FAST,
) -> BundleDownloader:
    """A downloader into `store` (a new one is what an agent restart makes)."""
    return BundleDownloader(store, session, executor, policy)


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def test_a_whole_download_lands_in_the_store_under_its_digest(
    server: tuple[BundleServer, str],
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    bundles, url = server
    blob = await downloader(store, session, executor).fetch(url, DIGEST, len(BODY))
    assert blob == store.blob(DIGEST)
    assert sha256_of(blob) == DIGEST
    assert not store.part(DIGEST).exists()
    assert bundles.requests == [None]
    # Present now: a second fetch does not ask the server again.
    assert await downloader(store, session, executor).fetch(url, DIGEST, len(BODY)) == blob
    assert bundles.requests == [None]


async def test_a_stalled_connection_resumes_at_the_byte_it_stopped(
    server: tuple[BundleServer, str],
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    bundles, url = server
    bundles.cut_first, bundles.stall = CUT, True
    blob = await downloader(store, session, executor).fetch(url, DIGEST, len(BODY))
    assert bundles.requests == [None, f"bytes={CUT}-"]
    assert sha256_of(blob) == DIGEST
    assert not store.part(DIGEST).exists()


async def test_a_connection_dropped_mid_stream_resumes_with_a_range_request(
    server: tuple[BundleServer, str],
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    bundles, url = server
    bundles.cut_first = CUT
    blob = await downloader(store, session, executor).fetch(url, DIGEST, len(BODY))
    assert sha256_of(blob) == DIGEST
    first, second = bundles.requests
    assert first is None
    # Normally every byte sent was kept, but bytes still in the client's buffer when the
    # connection broke are lost with it (aiohttp raises before handing them over) and asked for
    # again. Either way the second request starts right after what the client kept; the
    # stalled-connection test above pins the exact byte.
    assert second is not None
    assert second.startswith("bytes=")
    assert 0 < int(second.removeprefix("bytes=").removesuffix("-")) <= CUT


async def test_a_restarted_agent_resumes_from_the_partial_file(
    server: tuple[BundleServer, str],
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    bundles, url = server
    store.part(DIGEST).write_bytes(BODY[:CUT])  # what a killed agent left behind
    blob = await downloader(store, session, executor).fetch(url, DIGEST, len(BODY))
    assert bundles.requests == [f"bytes={CUT}-"]
    assert sha256_of(blob) == DIGEST
    assert not store.part(DIGEST).exists()


async def test_a_complete_partial_file_needs_no_request(
    server: tuple[BundleServer, str],
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    bundles, url = server
    store.part(DIGEST).write_bytes(BODY)  # killed between the last byte and the rename
    blob = await downloader(store, session, executor).fetch(url, DIGEST, len(BODY))
    assert bundles.requests == []
    assert sha256_of(blob) == DIGEST


async def test_a_partial_file_longer_than_the_bundle_is_thrown_away(
    server: tuple[BundleServer, str],
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    bundles, url = server
    store.part(DIGEST).write_bytes(BODY + b"junk")
    blob = await downloader(store, session, executor).fetch(url, DIGEST, len(BODY))
    assert bundles.requests == [None]
    assert sha256_of(blob) == DIGEST


async def test_a_server_that_ignores_range_is_downloaded_again_from_the_start(
    server: tuple[BundleServer, str],
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    bundles, url = server
    bundles.ignore_range = True
    store.part(DIGEST).write_bytes(BODY[:CUT])
    blob = await downloader(store, session, executor).fetch(url, DIGEST, len(BODY))
    assert bundles.requests == [f"bytes={CUT}-"]  # asked for the rest, got everything
    assert sha256_of(blob) == DIGEST
    assert blob.stat().st_size == len(BODY)


async def test_a_server_that_ignores_range_after_a_cut_still_completes(
    server: tuple[BundleServer, str],
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    bundles, url = server
    bundles.cut_first, bundles.stall, bundles.ignore_range = CUT, True, True
    blob = await downloader(store, session, executor).fetch(url, DIGEST, len(BODY))
    assert bundles.requests == [None, f"bytes={CUT}-"]
    assert sha256_of(blob) == DIGEST


async def test_bytes_that_hash_to_another_digest_are_discarded(
    server: tuple[BundleServer, str],
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    _, url = server
    other = hashlib.sha256(b"another bundle").hexdigest()
    with pytest.raises(DownloadFailed, match="hashes to") as failure:
        await downloader(store, session, executor).fetch(url, other, len(BODY))
    assert not failure.value.retryable  # the same bytes would come again
    assert not store.has(other)
    assert not store.part(other).exists()
    assert list(store.blobs.iterdir()) == []


async def test_more_bytes_than_assigned_stop_the_download_at_once(
    server: tuple[BundleServer, str],
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    bundles, url = server
    with pytest.raises(DownloadFailed, match="more than the 1000 bytes") as failure:
        await downloader(store, session, executor).fetch(url, DIGEST, 1000)
    assert not failure.value.retryable
    assert bundles.requests == [None]  # not retried
    assert not store.has(DIGEST)
    assert store.part(DIGEST).stat().st_size == 0


async def test_not_found_fails_without_retrying(
    server: tuple[BundleServer, str],
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    bundles, url = server
    bundles.statuses = [404]
    with pytest.raises(DownloadFailed, match="HTTP 404") as failure:
        await downloader(store, session, executor).fetch(url, DIGEST, len(BODY))
    assert not failure.value.retryable
    assert bundles.requests == [None]
    assert not store.has(DIGEST)


async def test_server_errors_are_retried_then_given_up(
    server: tuple[BundleServer, str],
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    bundles, url = server
    bundles.statuses = [503] * FAST.attempts
    with pytest.raises(
        DownloadFailed, match=f"giving up after {FAST.attempts} attempts"
    ) as failure:
        await downloader(store, session, executor).fetch(url, DIGEST, len(BODY))
    assert failure.value.retryable  # the next sync tries again
    assert len(bundles.requests) == FAST.attempts
    assert not store.has(DIGEST)


async def test_a_server_error_that_passes_is_retried_to_success(
    server: tuple[BundleServer, str],
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    bundles, url = server
    bundles.statuses = [503, 503]
    blob = await downloader(store, session, executor).fetch(url, DIGEST, len(BODY))
    assert len(bundles.requests) == 3
    assert sha256_of(blob) == DIGEST


async def test_a_file_url_is_copied_and_checked(
    tmp_path: Path,
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    source = tmp_path / "mlp v1.bundle"  # a space, to check the URL is unquoted
    source.write_bytes(BODY)
    load = downloader(store, session, executor)
    blob = await load.fetch(source.as_uri(), DIGEST, len(BODY))
    assert sha256_of(blob) == DIGEST
    assert blob.read_bytes() == BODY


async def test_a_file_url_resumes_from_the_partial_file(
    tmp_path: Path,
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    source = tmp_path / "mlp.bundle"
    source.write_bytes(BODY)
    store.part(DIGEST).write_bytes(BODY[:CUT])
    blob = await downloader(store, session, executor).fetch(source.as_uri(), DIGEST, len(BODY))
    assert sha256_of(blob) == DIGEST


async def test_a_file_url_is_checked_like_a_download(
    tmp_path: Path,
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    source = tmp_path / "mlp.bundle"
    source.write_bytes(BODY)
    load = downloader(store, session, executor)
    with pytest.raises(DownloadFailed, match="larger than the 1000 bytes"):
        await load.fetch(source.as_uri(), DIGEST, 1000)
    other = hashlib.sha256(b"another bundle").hexdigest()
    with pytest.raises(DownloadFailed, match="hashes to"):
        await load.fetch(source.as_uri(), other, len(BODY))
    with pytest.raises(DownloadFailed, match="cannot read"):
        await load.fetch((tmp_path / "missing.bundle").as_uri(), DIGEST, len(BODY))
    assert list(store.blobs.iterdir()) == []


async def test_an_unsupported_scheme_fails_clearly(
    store: BundleStore, session: aiohttp.ClientSession, executor: ThreadPoolExecutor
) -> None:
    with pytest.raises(DownloadFailed, match="unsupported bundle URL scheme in 'ftp://"):
        await downloader(store, session, executor).fetch(
            "ftp://example.com/mlp.bundle", DIGEST, len(BODY)
        )
    assert not store.has(DIGEST)


async def test_an_unknown_size_is_checked_by_the_digest_alone(
    server: tuple[BundleServer, str],
    store: BundleStore,
    session: aiohttp.ClientSession,
    executor: ThreadPoolExecutor,
) -> None:
    bundles, url = server
    bundles.cut_first, bundles.stall = CUT, True
    blob = await downloader(store, session, executor).fetch(url, DIGEST, 0)
    assert bundles.requests == [None, f"bytes={CUT}-"]  # a cut is still resumed
    assert sha256_of(blob) == DIGEST
    other = hashlib.sha256(b"another bundle").hexdigest()
    with pytest.raises(DownloadFailed, match="hashes to"):
        await downloader(store, session, executor).fetch(url, other, 0)
    assert not store.has(other)
