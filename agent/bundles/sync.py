"""Following the device's assignment: fetch it, verify it, and bring every model to it.

The assignment comes from a URL (the control plane; polled with jitter and `If-None-Match`, as
a long poll: the control plane holds the request until the document changes or `?wait=` seconds
pass) or a file (air-gapped devices, tests). Each new document must pass `shared.assignment`'s
checks (signature by the assignment key, this device, a serial above the last accepted one, not
expired); the accepted document is kept in the agent's state, so the same document fetched
again after a restart is recognised rather than refused as a replay. Every poll reconciles the
models with the last accepted assignment, so a download that failed is retried.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import replace
from pathlib import Path

import aiohttp

from agent.bundles.activation import BundleActivator, StateKeeper
from agent.bundles.state import AgentState
from agent.errors import DownloadFailed
from shared.assignment import Assignment, verify_assignment
from shared.errors import EdgeFleetError
from shared.keylist import TrustStore

log = logging.getLogger(__name__)

MAX_DOCUMENT_BYTES = 1 << 20
REQUEST_TIMEOUT_S = 30.0  # on top of the time a long poll may be held


class AssignmentSource(abc.ABC):
    """Where the signed assignment document comes from."""

    @abc.abstractmethod
    async def fetch(self, wait_s: float = 0.0) -> bytes | None:
        """The document if it may have changed since the last fetch, else None.

        `wait_s`: how long the source may hold the call waiting for a change (a long poll);
        sources that cannot wait answer at once.
        """

    @abc.abstractmethod
    def forget(self) -> None:
        """Treat the last document fetched as unseen, so the next fetch returns it again."""

    @staticmethod
    def for_location(
        location: str, session: aiohttp.ClientSession, executor: Executor
    ) -> AssignmentSource:
        """A URL source for http(s) locations, a file source for anything else."""
        if location.startswith(("http://", "https://")):
            return HttpAssignmentSource(location, session)
        return FileAssignmentSource(Path(location), executor)


class FileAssignmentSource(AssignmentSource):
    """A document in a local file, re-read at each poll."""

    def __init__(self, path: Path, executor: Executor) -> None:
        self.path = path
        self._executor = executor
        self._last: bytes | None = None

    async def fetch(self, wait_s: float = 0.0) -> bytes | None:
        """The file's content when it changed; None when unchanged or absent (never waits)."""
        loop = asyncio.get_running_loop()
        try:
            data = await loop.run_in_executor(self._executor, self.path.read_bytes)
        except FileNotFoundError:
            return None
        digest = hashlib.sha256(data).digest()
        if digest == self._last:
            return None
        self._last = digest
        return data

    def forget(self) -> None:
        """Read the file as new at the next fetch."""
        self._last = None


class HttpAssignmentSource(AssignmentSource):
    """A document at a URL, fetched with `If-None-Match` so an unchanged one costs a 304."""

    def __init__(self, url: str, session: aiohttp.ClientSession) -> None:
        self.url = url
        self._session = session
        self._etag: str | None = None

    async def fetch(self, wait_s: float = 0.0) -> bytes | None:
        """The document on 200; None on 304 (unchanged, possibly after `wait_s` held)."""
        headers: dict[str, str] = {}
        params: dict[str, str] = {}
        if self._etag:
            headers["If-None-Match"] = self._etag
            if wait_s > 0:  # only a request with an ETag has a change to wait for
                params["wait"] = f"{wait_s:g}"
        # The server caps the wait (long_poll_max_s); this client allows the full wait asked.
        held = wait_s if params else 0.0
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S + held)
        async with self._session.get(
            self.url, headers=headers, params=params, timeout=timeout
        ) as response:
            if response.status == 304:
                return None
            response.raise_for_status()
            # `content.read(n)` returns one buffered chunk, not n bytes: read to the end.
            data = bytearray()
            async for chunk in response.content.iter_any():
                data += chunk
                if len(data) > MAX_DOCUMENT_BYTES:
                    raise DownloadFailed(f"{self.url}: the assignment is larger than 1 MiB")
            self._etag = response.headers.get("ETag")
            return bytes(data)

    def forget(self) -> None:
        """Ask without `If-None-Match` at the next fetch, so the document comes back."""
        self._etag = None


class AssignmentSync:
    """Polls the assignment source and drives the activator."""

    def __init__(
        self,
        *,
        source: AssignmentSource,
        activator: BundleActivator,
        keeper: StateKeeper,
        trust: Callable[[], TrustStore],
        device_id: str,
        interval_s: float,
    ) -> None:
        self.source = source
        self.activator = activator
        self.keeper = keeper
        self.trust = trust
        self.device_id = device_id
        self.interval_s = interval_s
        self.assignment: Assignment | None = None
        self.polls = 0  # completed syncs (tests and status reports read it)
        self._expired_serial: int | None = None
        self._wake = asyncio.Event()
        self._healthy = True
        self._fetch_s = 0.0  # how long the last fetch took (a long poll is held that long)

    @property
    def healthy(self) -> bool:
        """False while the last sync failed (unreachable source, or a document refused)."""
        return self._healthy

    def trigger(self) -> None:
        """Poll now instead of at the next interval (an MQTT `sync` command)."""
        self._wake.set()

    async def load_accepted(self) -> None:
        """Re-read the document accepted before a restart (it was verified then)."""
        data = self.keeper.state.assignment_document.encode()
        if not data:
            return
        try:
            # Verified again, but against the serial before it: a restart is not a replay.
            serial = self.keeper.state.assignment_serial
            self.assignment = verify_assignment(
                data,
                self.trust(),
                device_id=self.device_id,
                last_serial=serial - 1,
                now=time.time(),
            )
        except EdgeFleetError as error:
            log.error("the stored assignment no longer verifies (%s); waiting for a new one", error)

    async def run(self) -> None:
        """Poll forever, with jitter, logging only when the outcome changes."""
        while True:
            # Cleared before syncing: a trigger that arrives during the sync runs another one.
            self._wake.clear()
            await self.sync_once()
            # Time a long poll was held counts as waiting: a source that waits for changes is
            # asked again at once, one that answers at once still every interval.
            delay = max(0.0, self.interval_s * random.uniform(0.8, 1.2) - self._fetch_s)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)

    async def sync_once(self) -> None:
        """Fetch, verify and apply the assignment once; errors are logged, never raised."""
        self.polls += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            try:
                document = await self.source.fetch(self.interval_s)
            finally:
                self._fetch_s = loop.time() - started
            if document is not None:
                try:
                    await self._accept(document)
                except OSError:
                    # Not refused, only not saved (a full disk): take it again next time.
                    self.source.forget()
                    raise
            if self.assignment is not None and self._current(self.assignment):
                for model in self.assignment.models:
                    await self.activator.activate(model)
            if not self._healthy:
                log.info("assignment sync works again")
            self._healthy = True
        except (EdgeFleetError, aiohttp.ClientError, TimeoutError, OSError) as error:
            level = logging.ERROR if self._healthy else logging.DEBUG
            hint = ""
            if isinstance(error, aiohttp.ClientConnectorCertificateError):
                hint = (
                    " (the control plane's certificate is not trusted: bundles.ca_file, or "
                    "`agent enroll --cp-ca`, names the private CA that issued it)"
                )
            log.log(
                level,
                "assignment sync failed: %s%s; serving what is installed and retrying "
                "in about %.0f s",
                error,
                hint,
                self.interval_s,
            )
            self._healthy = False

    def _current(self, assignment: Assignment) -> bool:
        """False once the accepted assignment expired: install nothing more from it.

        What is installed keeps serving; only a fresh document (which a control plane sends
        long before expiry) moves the device again. This is the defence against a frozen feed.
        """
        if time.time() < assignment.expires_at:
            return True
        if self._expired_serial != assignment.serial:
            self._expired_serial = assignment.serial
            log.error(
                "assignment serial %d has expired; serving what is installed until a new "
                "one arrives",
                assignment.serial,
            )
        return False

    async def _accept(self, document: bytes) -> None:
        if document == self.keeper.state.assignment_document.encode():
            return
        assignment = verify_assignment(
            document,
            self.trust(),
            device_id=self.device_id,
            last_serial=self.keeper.state.assignment_serial,
            now=time.time(),
        )
        text = document.decode()
        named = {model.digest for model in assignment.models}

        def accept(state: AgentState) -> AgentState:
            # A new assignment naming a bundle that failed before is the operator asking for
            # another try; give it one (and a fresh attempt count).
            for name, record in state.models.items():
                if named & set(record.failed):
                    state = state.with_model(
                        name,
                        replace(record, failed=tuple(d for d in record.failed if d not in named)),
                    )
            return replace(state, assignment_serial=assignment.serial, assignment_document=text)

        await self.keeper.update(accept)
        log.info(
            "accepted assignment serial %d (%d model(s))", assignment.serial, len(assignment.models)
        )
        self.assignment = assignment
