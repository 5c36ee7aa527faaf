"""`BundleDownloader` against a real HTTP server in the test's loop, and against files."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import aiohttp
import pytest
from aiohttp import web

from agent.bundles.download import BundleDownloader, DownloadPolicy
from agent.bundles.store import BundleStore
from agent.errors import DownloadFailed
from tests.agent.bundles import http_fixtures
from tests.agent.bundles.http_fixtures import OneRouteServer

# Several socket reads' worth, so a cut in the middle leaves bytes on both sides.
BODY = os.urandom(300_000)
DIGEST = hashlib.sha256(BODY).hexdigest()
SIZE = len(BODY)
CUT = 120_000
# The digest of other bytes: what an assignment names when the server holds something else.
OTHER_DIGEST = hashlib.sha256(b"another bundle").hexdigest()
# Retries in milliseconds, and a read timeout short enough to notice a stalled server quickly.
FAST = DownloadPolicy(attempts=3, first_backoff_s=0.01, max_backoff_s=0.02, read_timeout_s=0.5)

# The thread pool and HTTP client shared with test_sync.py; pytest finds fixtures by name here.
executor = http_fixtures.executor
session = http_fixtures.session


@dataclass
class BundleServer(OneRouteServer):
    """Serves BODY at /bundle, honouring `Range`, and misbehaving as a test tells it to."""

    route: ClassVar[str] = "/bundle"
    body: bytes = BODY
    requests: list[str | None] = field(default_factory=list)  # each request's Range header
    statuses: list[int] = field(default_factory=list)  # answer these first, one per request
    cut_first: int | None = None  # the first response stops after this many bytes...
    stall: bool = False  # ...and then hangs (True) or drops the connection (False)
    ignore_range: bool = False  # always 200 with the whole body
    released: asyncio.Event = field(default_factory=asyncio.Event)

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


@dataclass
class DownloadingAgent:
    """The agent's side of a test: its bundle store, and the downloaders it makes."""

    store: BundleStore
    session: aiohttp.ClientSession
    executor: ThreadPoolExecutor

    def downloader(self) -> BundleDownloader:
        """A downloader into the store (a new one is what an agent restart makes)."""
        return BundleDownloader(self.store, self.session, self.executor, FAST)

    async def fetch(self, url: str, digest: str = DIGEST, size: int = SIZE) -> Path:
        """Fetch `url` with a new downloader."""
        return await self.downloader().fetch(url, digest, size)

    def assert_landed(self, blob: Path) -> None:
        """BODY is whole in the store under its digest, and no partial file is left."""
        assert blob == self.store.blob(DIGEST)
        assert sha256_of(blob) == DIGEST
        assert blob.stat().st_size == SIZE
        assert not self.store.part(DIGEST).exists()


def sha256_of(path: Path) -> str:
    """Hex SHA-256 of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def agent(
    tmp_path: Path, session: aiohttp.ClientSession, executor: ThreadPoolExecutor
) -> DownloadingAgent:
    """An agent with an empty bundle store."""
    return DownloadingAgent(BundleStore(tmp_path / "bundles"), session, executor)


@pytest.fixture
async def server() -> AsyncIterator[tuple[BundleServer, str]]:
    """A live bundle server in the test's loop, and the bundle's URL."""
    bundles = BundleServer()
    async with bundles.running() as url:
        try:
            yield bundles, url
        finally:
            bundles.released.set()


@pytest.fixture
def bundle_file(tmp_path: Path) -> Path:
    """BODY in a file (a space in its name, to check the file URL is unquoted)."""
    source = tmp_path / "mlp v1.bundle"
    source.write_bytes(BODY)
    return source


@dataclass(frozen=True)
class Resume:
    """What a killed agent left, how the server misbehaves, and the Range headers that follow."""

    requests: list[str | None]  # the Range header of each request the fetch makes
    partial: bytes | None = None  # the partial file already in the store
    cut_first: int | None = None
    stall: bool = False
    ignore_range: bool = False
    statuses: tuple[int, ...] = ()

    def arrange(self, bundles: BundleServer, store: BundleStore) -> None:
        """Set the server's misbehaviour and leave the partial file."""
        bundles.cut_first, bundles.stall = self.cut_first, self.stall
        bundles.ignore_range, bundles.statuses = self.ignore_range, list(self.statuses)
        if self.partial is not None:
            store.part(DIGEST).write_bytes(self.partial)


RESUMES = [
    pytest.param(
        Resume([None, f"bytes={CUT}-"], cut_first=CUT, stall=True),
        id="a_stalled_connection_resumes_at_the_byte_it_stopped",
    ),
    pytest.param(
        Resume([f"bytes={CUT}-"], partial=BODY[:CUT]),  # what a killed agent left behind
        id="a_restarted_agent_resumes_from_the_partial_file",
    ),
    pytest.param(
        Resume([], partial=BODY),  # killed between the last byte and the rename
        id="a_complete_partial_file_needs_no_request",
    ),
    pytest.param(
        Resume([None], partial=BODY + b"junk"),
        id="a_partial_file_longer_than_the_bundle_is_thrown_away",
    ),
    pytest.param(
        # Asked for the rest, got everything.
        Resume([f"bytes={CUT}-"], partial=BODY[:CUT], ignore_range=True),
        id="a_server_that_ignores_range_is_downloaded_again_from_the_start",
    ),
    pytest.param(
        Resume([None, f"bytes={CUT}-"], cut_first=CUT, stall=True, ignore_range=True),
        id="a_server_that_ignores_range_after_a_cut_still_completes",
    ),
    pytest.param(
        Resume([None, None, None], statuses=(503, 503)),
        id="a_server_error_that_passes_is_retried_to_success",
    ),
]


@pytest.mark.parametrize("resume", RESUMES)
async def test_the_whole_bundle_lands_after(
    resume: Resume, server: tuple[BundleServer, str], agent: DownloadingAgent
) -> None:
    bundles, url = server
    resume.arrange(bundles, agent.store)
    blob = await agent.fetch(url)
    assert bundles.requests == resume.requests
    agent.assert_landed(blob)


async def test_a_whole_download_lands_in_the_store_under_its_digest(
    server: tuple[BundleServer, str], agent: DownloadingAgent
) -> None:
    bundles, url = server
    blob = await agent.fetch(url)
    agent.assert_landed(blob)
    assert bundles.requests == [None]
    # Present now: a second fetch does not ask the server again.
    assert await agent.fetch(url) == blob
    assert bundles.requests == [None]


async def test_a_connection_dropped_mid_stream_resumes_with_a_range_request(
    server: tuple[BundleServer, str], agent: DownloadingAgent
) -> None:
    bundles, url = server
    bundles.cut_first = CUT
    blob = await agent.fetch(url)
    assert sha256_of(blob) == DIGEST
    first, second = bundles.requests
    assert first is None
    # Normally every byte sent was kept, but bytes still in the client's buffer when the
    # connection broke are lost with it (aiohttp raises before handing them over) and asked for
    # again. Either way the second request starts right after what the client kept; the
    # stalled-connection case pins the exact byte.
    assert second is not None
    assert second.startswith("bytes=")
    assert 0 < int(second.removeprefix("bytes=").removesuffix("-")) <= CUT


async def test_bytes_that_hash_to_another_digest_are_discarded(
    server: tuple[BundleServer, str], agent: DownloadingAgent
) -> None:
    _, url = server
    with pytest.raises(DownloadFailed, match="hashes to") as failure:
        await agent.fetch(url, OTHER_DIGEST)
    assert not failure.value.retryable  # the same bytes would come again
    assert not agent.store.has(OTHER_DIGEST)
    assert not agent.store.part(OTHER_DIGEST).exists()
    assert list(agent.store.blobs.iterdir()) == []


async def test_more_bytes_than_assigned_stop_the_download_at_once(
    server: tuple[BundleServer, str], agent: DownloadingAgent
) -> None:
    bundles, url = server
    with pytest.raises(DownloadFailed, match="more than the 1000 bytes") as failure:
        await agent.fetch(url, size=1000)
    assert not failure.value.retryable
    assert bundles.requests == [None]  # not retried
    assert not agent.store.has(DIGEST)
    assert agent.store.part(DIGEST).stat().st_size == 0


async def test_not_found_fails_without_retrying(
    server: tuple[BundleServer, str], agent: DownloadingAgent
) -> None:
    bundles, url = server
    bundles.statuses = [404]
    with pytest.raises(DownloadFailed, match="HTTP 404") as failure:
        await agent.fetch(url)
    assert not failure.value.retryable
    assert bundles.requests == [None]
    assert not agent.store.has(DIGEST)


async def test_server_errors_are_retried_then_given_up(
    server: tuple[BundleServer, str], agent: DownloadingAgent
) -> None:
    bundles, url = server
    bundles.statuses = [503] * FAST.attempts
    with pytest.raises(
        DownloadFailed, match=f"giving up after {FAST.attempts} attempts"
    ) as failure:
        await agent.fetch(url)
    assert failure.value.retryable  # the next sync tries again
    assert len(bundles.requests) == FAST.attempts
    assert not agent.store.has(DIGEST)


async def test_a_file_url_is_copied_and_checked(bundle_file: Path, agent: DownloadingAgent) -> None:
    blob = await agent.fetch(bundle_file.as_uri())
    agent.assert_landed(blob)
    assert blob.read_bytes() == BODY


async def test_a_file_url_resumes_from_the_partial_file(
    bundle_file: Path, agent: DownloadingAgent
) -> None:
    agent.store.part(DIGEST).write_bytes(BODY[:CUT])
    agent.assert_landed(await agent.fetch(bundle_file.as_uri()))


async def test_a_file_url_is_checked_like_a_download(
    bundle_file: Path, agent: DownloadingAgent
) -> None:
    load = agent.downloader()
    with pytest.raises(DownloadFailed, match="larger than the 1000 bytes"):
        await load.fetch(bundle_file.as_uri(), DIGEST, 1000)
    with pytest.raises(DownloadFailed, match="hashes to"):
        await load.fetch(bundle_file.as_uri(), OTHER_DIGEST, SIZE)
    with pytest.raises(DownloadFailed, match="cannot read"):
        await load.fetch(bundle_file.with_name("missing.bundle").as_uri(), DIGEST, SIZE)
    assert list(agent.store.blobs.iterdir()) == []


async def test_an_unsupported_scheme_fails_clearly(agent: DownloadingAgent) -> None:
    with pytest.raises(DownloadFailed, match="unsupported bundle URL scheme in 'ftp://"):
        await agent.fetch("ftp://example.com/mlp.bundle")
    assert not agent.store.has(DIGEST)


async def test_an_unknown_size_is_checked_by_the_digest_alone(
    server: tuple[BundleServer, str], agent: DownloadingAgent
) -> None:
    bundles, url = server
    bundles.cut_first, bundles.stall = CUT, True
    blob = await agent.fetch(url, size=0)
    assert bundles.requests == [None, f"bytes={CUT}-"]  # a cut is still resumed
    assert sha256_of(blob) == DIGEST
    with pytest.raises(DownloadFailed, match="hashes to"):
        await agent.fetch(url, OTHER_DIGEST, 0)
    assert not agent.store.has(OTHER_DIGEST)
