"""Where assignments come from (a file, a URL with ETags) and how the sync loop accepts them."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, cast

import aiohttp
import pytest
from aiohttp import web

from agent.bundles.activation import BundleActivator, StateKeeper
from agent.bundles.state import AgentState, ModelRecord, StateFile
from agent.bundles.sync import (
    MAX_DOCUMENT_BYTES,
    AssignmentSource,
    AssignmentSync,
    FileAssignmentSource,
    HttpAssignmentSource,
)
from agent.errors import DownloadFailed
from shared.assignment import ModelAssignment
from shared.keylist import TrustStore
from tests.agent.bundles import http_fixtures
from tests.agent.bundles.factory import Fleet
from tests.agent.bundles.http_fixtures import OneRouteServer

# The thread pool and HTTP client shared with test_download.py; pytest finds fixtures by name here.
executor = http_fixtures.executor
session = http_fixtures.session


@dataclass
class AssignmentServer(OneRouteServer):
    """Serves one document at /assignment with an ETag, answering 304 when it matches."""

    route: ClassVar[str] = "/assignment"
    document: bytes = b'{"serial": 1}'
    etags: bool = True
    status: int = 200
    seen: list[str | None] = field(default_factory=list)  # each request's If-None-Match

    async def handle(self, request: web.Request) -> web.Response:
        """Answer one request for the document."""
        self.seen.append(request.headers.get("If-None-Match"))
        if self.status != 200:
            return web.Response(status=self.status)
        etag = f'"{hashlib.sha256(self.document).hexdigest()[:16]}"'
        if self.etags and request.headers.get("If-None-Match") == etag:
            return web.Response(status=304, headers={"ETag": etag})
        headers = {"ETag": etag} if self.etags else {}
        return web.Response(body=self.document, headers=headers)


@pytest.fixture
async def server() -> AsyncIterator[tuple[AssignmentServer, str]]:
    """A live assignment server in the test's loop, and the document's URL."""
    documents = AssignmentServer()
    async with documents.running() as url:
        yield documents, url


async def test_a_file_source_returns_the_document_only_when_it_changed(
    tmp_path: Path, executor: ThreadPoolExecutor
) -> None:
    path = tmp_path / "assignment.json"
    source = FileAssignmentSource(path, executor)
    assert await source.fetch() is None  # not there yet: nothing to do, not an error
    path.write_bytes(b"first")
    assert await source.fetch() == b"first"
    assert await source.fetch() is None
    path.write_bytes(b"second")
    assert await source.fetch() == b"second"
    path.write_bytes(b"first")  # going back is a change too
    assert await source.fetch() == b"first"


async def test_a_url_source_asks_with_the_etag_and_takes_a_304_as_unchanged(
    server: tuple[AssignmentServer, str], session: aiohttp.ClientSession
) -> None:
    documents, url = server
    source = HttpAssignmentSource(url, session)
    assert await source.fetch() == documents.document
    assert await source.fetch() is None
    first_etag = documents.seen[1]
    assert documents.seen == [None, first_etag]
    assert first_etag is not None
    documents.document = b'{"serial": 2}'
    assert await source.fetch() == b'{"serial": 2}'
    assert await source.fetch() is None
    assert documents.seen[2] == first_etag  # it asked with the old tag and got the new body
    assert documents.seen[3] not in (None, first_etag)


async def test_a_url_source_without_etags_fetches_the_whole_document_each_time(
    server: tuple[AssignmentServer, str], session: aiohttp.ClientSession
) -> None:
    documents, url = server
    documents.etags = False
    source = HttpAssignmentSource(url, session)
    assert await source.fetch() == documents.document
    assert await source.fetch() == documents.document
    assert documents.seen == [None, None]


async def test_a_url_source_raises_on_a_server_error(
    server: tuple[AssignmentServer, str], session: aiohttp.ClientSession
) -> None:
    documents, url = server
    documents.status = 503
    with pytest.raises(aiohttp.ClientResponseError) as failure:
        await HttpAssignmentSource(url, session).fetch()
    assert failure.value.status == 503


async def test_a_url_source_refuses_a_document_over_the_cap(
    server: tuple[AssignmentServer, str], session: aiohttp.ClientSession
) -> None:
    documents, url = server
    documents.document = b" " * (MAX_DOCUMENT_BYTES + 1)
    with pytest.raises(DownloadFailed, match="larger than 1 MiB"):
        await HttpAssignmentSource(url, session).fetch()
    documents.document = b" " * MAX_DOCUMENT_BYTES
    assert await HttpAssignmentSource(url, session).fetch() == documents.document


async def test_the_location_picks_the_source(
    tmp_path: Path, session: aiohttp.ClientSession, executor: ThreadPoolExecutor
) -> None:
    for url in ("http://cp.example/a", "https://cp.example/a"):
        assert isinstance(
            AssignmentSource.for_location(url, session, executor), HttpAssignmentSource
        )
    source = AssignmentSource.for_location(str(tmp_path / "a.json"), session, executor)
    assert isinstance(source, FileAssignmentSource)
    assert source.path == tmp_path / "a.json"


class RecordingActivator:
    """Stands in for `BundleActivator`: records what the sync asks it to activate."""

    def __init__(self) -> None:
        self.activated: list[ModelAssignment] = []

    async def activate(self, model: ModelAssignment) -> None:
        self.activated.append(model)


class Harness:
    """An `AssignmentSync` on a fleet's assignment file, with a real state file."""

    def __init__(self, fleet: Fleet, state_dir: Path, executor: ThreadPoolExecutor) -> None:
        self.fleet = fleet
        self.file = StateFile(state_dir)
        self.executor = executor
        self.activator = RecordingActivator()
        self.sync = self.restart()

    def restart(self) -> AssignmentSync:
        """A new sync over what the state file holds, as after an agent restart."""
        keeper = StateKeeper(self.file, self.file.load(), self.executor)
        store = TrustStore.bootstrap(
            self.fleet.root_key.public, self.fleet.keylist_path.read_bytes()
        )
        self.sync = AssignmentSync(
            source=FileAssignmentSource(self.fleet.assignment_path, self.executor),
            activator=cast(BundleActivator, self.activator),
            keeper=keeper,
            trust=lambda: store,
            device_id=self.fleet.device_id,
            interval_s=0.1,
        )
        return self.sync


def model(version: int) -> ModelAssignment:
    """An assignment entry for version `version` of model `m` (never downloaded here)."""
    digest = hashlib.sha256(f"bundle {version}".encode()).hexdigest()
    return ModelAssignment("m", version, digest, f"file:///bundles/m-{version}", 100)


def healthy(sync: AssignmentSync) -> bool:
    """Read each time (a function, so the type checker does not carry a narrowed value over)."""
    return sync.healthy


@pytest.fixture
def harness(fleet: Fleet, tmp_path: Path, executor: ThreadPoolExecutor) -> Harness:
    """A sync following the fleet's assignment file, over a fresh state directory."""
    return Harness(fleet, tmp_path / "state", executor)


async def test_an_accepted_assignment_is_kept_and_every_model_activated(
    fleet: Fleet, harness: Harness
) -> None:
    fleet.assign(model(1), serial=5)
    await harness.sync.sync_once()
    assert harness.sync.healthy
    assert harness.activator.activated == [model(1)]
    state = harness.file.load()
    assert state.assignment_serial == 5
    assert state.assignment_document.encode() == fleet.assignment_path.read_bytes()
    # Unchanged file: the models are reconciled again (a failed download is retried).
    await harness.sync.sync_once()
    assert harness.activator.activated == [model(1)] * 2


async def test_a_restart_is_not_a_replay(fleet: Fleet, harness: Harness) -> None:
    fleet.assign(model(1), serial=3)
    await harness.sync.sync_once()
    sync = harness.restart()
    await sync.load_accepted()
    assert sync.assignment is not None
    assert sync.assignment.serial == 3
    await sync.sync_once()  # the same document, read again from the file
    assert sync.healthy
    assert harness.activator.activated[-1] == model(1)


async def test_an_older_serial_or_another_device_is_refused_and_the_last_one_kept(
    fleet: Fleet, harness: Harness
) -> None:
    fleet.assign(model(2), serial=7)
    await harness.sync.sync_once()
    fleet.assign(model(1), serial=6)  # a replayed, older document
    await harness.sync.sync_once()
    assert not healthy(harness.sync)
    assert harness.activator.activated == [model(2)]  # refused before activating
    fleet.assign(model(1), serial=8, device_id="someone-else")
    await harness.sync.sync_once()
    assert not healthy(harness.sync)
    assert harness.file.load().assignment_serial == 7
    assert harness.sync.assignment is not None
    assert harness.sync.assignment.models == (model(2),)
    fleet.assign(model(3), serial=9)
    await harness.sync.sync_once()
    assert healthy(harness.sync)
    assert harness.activator.activated[-1] == model(3)


async def test_a_new_assignment_gives_a_failed_bundle_another_try(
    fleet: Fleet, harness: Harness
) -> None:
    failed = model(2)
    other = hashlib.sha256(b"another").hexdigest()
    state = AgentState(models={"m": ModelRecord(failed=(other, failed.digest))})
    harness.file.save(replace(state, assignment_serial=1))
    sync = harness.restart()
    fleet.assign(failed, serial=2)
    await sync.sync_once()
    assert harness.file.load().model("m").failed == (other,)
