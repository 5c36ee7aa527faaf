"""Per-device signed assignments: desired state in, one signed document per device out.

`DesiredModel` rows say which bundle each device should run for each model; operators set them
through the API and rollouts through `set_desired`, in their own transaction. Then
`AssignmentService.reissue` signs a new `shared.assignment` document for each device changed
(serial = previous + 1), stores it as the device's `AssignmentRecord`, wakes the device's long
polls and publishes a signed `sync` command to its `cmd` topic, so an agent hears of the change
at once and otherwise finds it at its next poll.

Two transactions, desired state then document, so a crash between them leaves a desired row
without its document: `reconcile` (run at start and periodically) reissues every enrolled device
whose document is missing, names other bundles than its rows, or has passed half its lifetime,
so an agent never runs into the expiry that freezes it.

Every enrolled device gets a document, an empty one while nothing is assigned to it: a fresh
agent then becomes "assigned" (healthy and ready, serving nothing) instead of failing each poll
on a 404, and removing a device's last model is an ordinary assignment too. Revoked devices are
skipped: their last document runs out. Unknown devices raise `control_plane.errors.UnknownDevice`
(HTTP 404); the errors only assignments raise join the tree there as:

    ControlPlaneError
    └── AssignmentError
        ├── AssignmentsDisabled    no assignment key (HTTP 503, as a KeysNotConfigured); start
        │                          the control plane with --keys
        └── AssignmentKeyError     assignment.key unreadable or not in the key list; fix the
                                   key directory and restart
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from control_plane.db.engine import open_session
from control_plane.db.models import AssignmentRecord, BundleRecord, DesiredModel, Device, utcnow
from control_plane.errors import ControlPlaneError, KeysNotConfigured, UnknownDevice, UnknownModel
from control_plane.long_poll import ChangeBoard
from control_plane.settings import ControlPlaneSettings
from control_plane.sync_commands import SyncCommandPublisher
from shared.assignment import Assignment, ModelAssignment, sign_assignment
from shared.errors import EdgeFleetError
from shared.key_directory import KeyDirectory
from shared.keys import PrivateKey
from shared.mqtt.client import MqttClient

log = logging.getLogger(__name__)

BATCH = 500  # devices per query: well under every backend's limit on bound parameters
MAX_RECONCILE_PERIOD_S = 300.0


class AssignmentError(ControlPlaneError):
    """An assignment operation was refused."""


class AssignmentsDisabled(AssignmentError, KeysNotConfigured):
    """The control plane has no assignment key, so it signs no assignments; start with --keys."""


class AssignmentKeyError(AssignmentError):
    """assignment.key cannot be read, or the key list does not name it; fix the key directory."""


def bundle_url(settings: ControlPlaneSettings, digest: str) -> str:
    """Where devices download a bundle from."""
    return f"{settings.base_url}/api/v1/bundles/{digest}"


def document_etag(document: bytes) -> str:
    """The quoted SHA-256 of a signed document: its HTTP entity tag."""
    return f'"{hashlib.sha256(document).hexdigest()}"'


def load_signer(keys_dir: KeyDirectory, passphrase: bytes | None) -> PrivateKey | None:
    """The assignment key, checked against the key list; None when the directory has none.

    Blocking (file reads): run it in a thread.
    """
    path = keys_dir.key_file("assignment")
    if not path.exists():
        return None
    try:
        key = keys_dir.load_key("assignment", passphrase)
        key_list = keys_dir.trust_store().key_list
    except EdgeFleetError as error:
        raise AssignmentKeyError(f"cannot use the assignment key: {error}") from None
    if key.public not in key_list.assignment_keys:
        raise AssignmentKeyError(
            f"{path} is not an assignment key of key list version {key_list.version}: devices "
            "would refuse every document it signs (an unfinished rotation?)"
        )
    return key


async def set_desired(
    session: AsyncSession, device_ids: Sequence[str], model: str, digest: str | None, set_by: str
) -> list[str]:
    """Set (digest) or remove (None) the model on these devices in the session's transaction;
    return the ids whose desired state changed."""
    ids = list(dict.fromkeys(device_ids))
    if digest is not None:
        bundle = await session.get(BundleRecord, digest)
        if bundle is None or bundle.name != model:
            raise UnknownModel(f"no bundle of model {model!r} has digest {digest!r}")
    changed: list[str] = []
    now = utcnow()
    for chunk in _chunks(ids):
        known = set(await session.scalars(select(Device.id).where(Device.id.in_(chunk))))
        missing = [device_id for device_id in chunk if device_id not in known]
        if missing:
            raise UnknownDevice(f"no enrolled device {missing[0]!r} ({len(missing)} unknown)")
        rows = {
            row.device_id: row
            for row in await session.scalars(
                select(DesiredModel).where(
                    DesiredModel.device_id.in_(chunk), DesiredModel.model == model
                )
            )
        }
        for device_id in chunk:
            row = rows.get(device_id)
            if digest is None:
                if row is not None:
                    await session.delete(row)
                    changed.append(device_id)
            elif row is None:
                session.add(
                    DesiredModel(
                        device_id=device_id,
                        model=model,
                        digest=digest,
                        set_by=set_by,
                        updated_at=now,
                    )
                )
                changed.append(device_id)
            elif row.digest != digest:
                row.digest, row.set_by, row.updated_at = digest, set_by, now
                changed.append(device_id)
    await session.flush()
    return changed


async def desired_digest(session: AsyncSession, device_id: str, model: str) -> str | None:
    """The bundle digest the device should run for `model`, or None."""
    row = await session.get(DesiredModel, (device_id, model))
    return None if row is None else row.digest


class AssignmentService:
    """Signs, stores and announces the devices' assignments; serves their long polls."""

    def __init__(
        self,
        settings: ControlPlaneSettings,
        engine: AsyncEngine,
        signer: PrivateKey,
        mqtt: MqttClient | None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._engine = engine
        self._signer = signer
        self._clock = clock
        # One reissue at a time in this process, so two never compute the same next serial.
        # Across replicas, the row lock taken on the previous document does the same.
        self._lock = asyncio.Lock()
        self._changes = ChangeBoard()
        self._sync = SyncCommandPublisher(mqtt, signer, clock)
        self._reconcile_failing = False
        self.reconciled = asyncio.Event()  # set once `run_reconciler` completed a pass

    @property
    def long_polls(self) -> int:
        """How many long polls are waiting for a change now."""
        return self._changes.watchers

    async def reissue(self, device_ids: Iterable[str]) -> None:
        """Sign, store and announce a new assignment for each enrolled, unrevoked device.

        In its own transaction; then wakes the devices' long polls and publishes a signed
        `sync` command to each (QoS 1; when MQTT is down it logs and carries on: devices poll).
        """
        ids = sorted(set(device_ids))
        if not ids:
            return
        async with self._lock:
            issued = await self._issue(ids, only_missing=False)
        await self._announce(issued)

    async def ensure_issued(self, device_id: str) -> AssignmentRecord:
        """The device's document, issuing its first (empty) one if it has none yet."""
        record = await self.current(device_id)
        if record is not None:
            return record
        async with self._lock:
            issued = await self._issue([device_id], only_missing=True)
        await self._announce(issued)
        record = await self.current(device_id)
        if record is None:
            raise UnknownDevice(f"no enrolled, unrevoked device {device_id!r}")
        return record

    async def reconcile(self) -> int:
        """Reissue every device whose document is missing, stale or half-way to expiry."""
        stale: list[str] = []
        after = ""
        while True:
            async with open_session(self._engine) as session:
                ids = list(
                    await session.scalars(
                        select(Device.id)
                        .where(Device.revoked_at.is_(None), Device.id > after)
                        .order_by(Device.id)
                        .limit(BATCH)
                    )
                )
                if not ids:
                    break
                wanted = await self._desired_entries(session, ids)
                records = await session.scalars(
                    select(AssignmentRecord).where(AssignmentRecord.device_id.in_(ids))
                )
                stored = {record.device_id: record for record in records}
            now = self._clock()
            stale += [d for d in ids if self._outdated(stored.get(d), wanted.get(d, []), now)]
            after = ids[-1]
        for chunk in _chunks(stale):
            await self.reissue(chunk)
        return len(stale)

    async def run_reconciler(self) -> None:
        """Reconcile now, then every min(lifetime / 4, 5 min), until cancelled."""
        period = min(self.settings.assignment_lifetime_s / 4, MAX_RECONCILE_PERIOD_S)
        while True:
            try:
                count = await self.reconcile()
            except ControlPlaneError as error:
                if not self._reconcile_failing:
                    log.error(
                        "reconciling assignments failed: %s; retrying in %.0f s", error, period
                    )
                self._reconcile_failing = True
            except Exception:
                # A bug must not end renewals silently: documents would expire fleet-wide.
                log.exception("reconciling assignments failed; retrying in %.0f s", period)
                self._reconcile_failing = True
            else:
                if self._reconcile_failing:
                    log.info("reconciling assignments works again")
                self._reconcile_failing = False
                self.reconciled.set()
                if count:
                    log.info("reissued %d outdated or missing assignment(s)", count)
            await asyncio.sleep(period)

    async def current(self, device_id: str) -> AssignmentRecord | None:
        """The document last issued to the device, or None."""
        async with open_session(self._engine) as session:
            return await session.get(AssignmentRecord, device_id)

    # The long poll's contract names its bound `timeout`; it is a deadline, not a blocking call.
    async def wait_for_change(
        self,
        device_id: str,
        etag: str | None,
        timeout: float,  # noqa: ASYNC109
    ) -> AssignmentRecord | None:
        """The device's document as soon as its ETag differs from `etag`; None after `timeout`
        seconds without a change (or when the service shuts down)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            # Watch before reading: a change committed after the read still wakes this wait.
            with self._changes.watch(device_id) as changed:
                record = await self.current(device_id)
                if record is not None and record.etag != etag:
                    return record
                remaining = deadline - loop.time()
                if remaining <= 0 or self._changes.closed:
                    return None
                try:
                    async with asyncio.timeout(remaining):
                        await changed.wait()
                except TimeoutError:
                    return None

    def close(self) -> None:
        """End every long poll now (they answer 'unchanged'); used when the server stops."""
        self._changes.close()

    async def _issue(self, ids: list[str], *, only_missing: bool) -> dict[str, AssignmentRecord]:
        """Sign and store the documents in one transaction; return them by device id."""
        issued: dict[str, AssignmentRecord] = {}
        now = self._clock()
        lifetime = self.settings.assignment_lifetime_s
        async with open_session(self._engine) as session:
            for chunk in _chunks(ids):
                # Lock the previous documents first (PostgreSQL; SQLite has one writer anyway),
                # so the desired rows read next are at least as new as any concurrent reissue's.
                previous = {
                    record.device_id: record
                    for record in await session.scalars(
                        select(AssignmentRecord)
                        .where(AssignmentRecord.device_id.in_(chunk))
                        .with_for_update()
                    )
                }
                devices = set(
                    await session.scalars(
                        select(Device.id).where(Device.id.in_(chunk), Device.revoked_at.is_(None))
                    )
                )
                wanted = await self._desired_entries(session, chunk)
                assignments = [
                    Assignment(
                        device_id=device_id,
                        serial=previous[device_id].serial + 1 if device_id in previous else 1,
                        issued_at=now,
                        expires_at=now + lifetime,
                        models=tuple(wanted.get(device_id, [])),
                    )
                    for device_id in chunk
                    if device_id in devices and not (only_missing and device_id in previous)
                ]
                skipped = [d for d in chunk if d not in devices]
                if skipped:
                    log.debug("no assignment for unknown or revoked devices %s", skipped)
                documents = await asyncio.to_thread(_sign_all, assignments, self._signer)
                for assignment, document in zip(assignments, documents, strict=True):
                    record = previous.get(assignment.device_id)
                    if record is None:
                        record = AssignmentRecord(device_id=assignment.device_id)
                        session.add(record)
                    record.serial = assignment.serial
                    record.document = document
                    record.etag = document_etag(document)
                    record.issued_at = datetime.fromtimestamp(now, UTC)
                    record.expires_at = datetime.fromtimestamp(now + lifetime, UTC)
                    issued[assignment.device_id] = record
        return issued

    async def _desired_entries(
        self, session: AsyncSession, ids: Sequence[str]
    ) -> dict[str, list[ModelAssignment]]:
        """Each device's desired models as assignment entries, by model name."""
        rows = await session.execute(
            select(
                DesiredModel.device_id,
                DesiredModel.model,
                BundleRecord.version,
                BundleRecord.digest,
                BundleRecord.size,
            )
            .join(BundleRecord, BundleRecord.digest == DesiredModel.digest)
            .where(DesiredModel.device_id.in_(ids))
            .order_by(DesiredModel.device_id, DesiredModel.model)
        )
        entries: dict[str, list[ModelAssignment]] = {}
        for device_id, model, version, digest, size in rows:
            entry = ModelAssignment(model, version, digest, bundle_url(self.settings, digest), size)
            entries.setdefault(device_id, []).append(entry)
        return entries

    def _outdated(
        self, record: AssignmentRecord | None, wanted: list[ModelAssignment], now: float
    ) -> bool:
        """True when the stored document is missing, names other models, or is due renewal."""
        if record is None:
            return True
        issued, expires = record.issued_at.timestamp(), record.expires_at.timestamp()
        # Half of the shorter of its own lifetime and today's setting (which may have shrunk).
        lifetime = min(expires - issued, self.settings.assignment_lifetime_s)
        if now >= issued + lifetime / 2:
            return True
        try:
            models = json.loads(record.document)["signed"]["models"]
        except (ValueError, KeyError, TypeError):
            return True
        return bool(models != [asdict(entry) for entry in wanted])

    async def _announce(self, issued: dict[str, AssignmentRecord]) -> None:
        """Wake the long polls of these devices and send each a signed `sync` command."""
        if issued:
            self._changes.notify(issued)
            await self._sync.publish(sorted(issued))


def _sign_all(assignments: list[Assignment], key: PrivateKey) -> list[bytes]:
    return [sign_assignment(assignment, key) for assignment in assignments]


def _chunks(ids: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(ids), BATCH):
        yield ids[start : start + BATCH]
