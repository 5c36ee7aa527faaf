"""Per-device signed assignments: desired state, serials, reconciliation, long polls, `sync`.

The service is tested directly (its clock driven where time matters) and through the API with
operator tokens; the `sync` command goes through a real Mosquitto.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from agent.bundles.sync import HttpAssignmentSource
from control_plane.api.app import build_app
from control_plane.api.state import ASSIGNMENTS
from control_plane.assignments import (
    AssignmentKeyError,
    AssignmentService,
    desired_digest,
    load_signer,
    set_desired,
)
from control_plane.db.engine import open_session
from control_plane.db.models import AssignmentRecord, AuditEntry, BundleRecord, Device, utcnow
from control_plane.errors import UnknownDevice, UnknownModel
from control_plane.roles import Role
from control_plane.settings import ControlPlaneSettings
from control_plane.tokens import create_token
from shared.assignment import Assignment, ModelAssignment, verify_assignment
from shared.device_auth import DeviceRequestSigner
from shared.device_key import DeviceKey, public_key_pem
from shared.http_server import serve_until_stopped
from shared.key_directory import KeyDirectory
from shared.keys import PrivateKey
from shared.mqtt.broker import MosquittoBroker
from shared.mqtt.client import MqttClient, MqttSettings
from shared.mqtt.commands import CommandVerifier
from shared.mqtt.envelope import decode
from shared.mqtt.topics import device_topic
from tests.agent.polling import until
from tests.shared.mqtt.conftest import mosquitto, next_message  # noqa: F401

Client = TestClient[Any, Any]
PUBLIC_URL = "https://cp.example"
LIFETIME_S = 3600.0
DEVICES = ("edge-1", "edge-2")
BUNDLES = (("tiny", 1), ("tiny", 2), ("other", 1))


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def keys(tmp_path: Path) -> KeyDirectory:
    directory = KeyDirectory(tmp_path / "keys")
    directory.create(issued_at=1000.0)
    return directory


@pytest.fixture
def settings(tmp_path: Path, database_url: str, keys: KeyDirectory) -> ControlPlaneSettings:
    return ControlPlaneSettings.build(
        {},
        data_dir=tmp_path,
        database_url=database_url,
        keys_dir=keys.path,
        public_url=PUBLIC_URL,
        assignment_lifetime_s=LIFETIME_S,
        long_poll_max_s=30.0,
    )


@pytest.fixture
async def bundles(engine: AsyncEngine) -> dict[tuple[str, int], BundleRecord]:
    """Devices `DEVICES` and the bundle records `BUNDLES` (no blobs: nothing downloads them)."""
    async with open_session(engine) as session:
        session.add_all(Device(id=device_id, public_key="unused") for device_id in DEVICES)
        records = {
            (name, version): BundleRecord(
                digest=hashlib.sha256(f"{name}-{version}".encode()).hexdigest(),
                name=name,
                version=version,
                size=1000 + version,
                signer_keyid="test",
                manifest={},
                uploaded_by="test",
            )
            for name, version in BUNDLES
        }
        session.add_all(records.values())
    return records


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service(
    settings: ControlPlaneSettings, engine: AsyncEngine, keys: KeyDirectory, clock: Clock
) -> AssignmentService:
    return AssignmentService(settings, engine, keys.load_key("assignment"), None, clock=clock)


def verified(document: bytes, keys: KeyDirectory, device_id: str, now: float) -> Assignment:
    return verify_assignment(
        document, keys.trust_store(), device_id=device_id, last_serial=0, now=now
    )


def entry(record: BundleRecord) -> ModelAssignment:
    url = f"{PUBLIC_URL}/api/v1/bundles/{record.digest}"
    return ModelAssignment(record.name, record.version, record.digest, url, record.size)


async def assign(
    engine: AsyncEngine, devices: list[str], model: str, digest: str | None
) -> list[str]:
    """Commit a desired-state change without reissuing (what a crash in between leaves)."""
    async with open_session(engine) as session:
        return await set_desired(session, devices, model, digest, "tester")


async def current(service: AssignmentService, device_id: str) -> AssignmentRecord:
    record = await service.current(device_id)
    assert record is not None
    return record


# --- the service ------------------------------------------------------------------------------


async def test_each_change_raises_the_serial_by_one_and_the_document_verifies(
    service: AssignmentService,
    engine: AsyncEngine,
    keys: KeyDirectory,
    bundles: dict[tuple[str, int], BundleRecord],
    clock: Clock,
) -> None:
    first = await service.ensure_issued("edge-1")
    assert first.serial == 1
    assert verified(first.document, keys, "edge-1", clock.now).models == ()  # empty, but valid

    v1, v2 = bundles["tiny", 1], bundles["tiny", 2]
    steps: list[tuple[str | None, tuple[ModelAssignment, ...]]] = [
        (v1.digest, (entry(v1),)),
        (v2.digest, (entry(v2),)),
        (None, ()),
    ]
    for serial, (digest, expected) in enumerate(steps, start=2):
        assert await assign(engine, ["edge-1"], "tiny", digest) == ["edge-1"]
        await service.reissue(["edge-1"])
        record = await current(service, "edge-1")
        assert record.serial == serial
        assert record.etag == f'"{hashlib.sha256(record.document).hexdigest()}"'
        document = verified(record.document, keys, "edge-1", clock.now)
        assert (document.serial, document.models) == (serial, expected)
        assert document.issued_at == clock.now
        assert document.expires_at == clock.now + LIFETIME_S
        assert record.expires_at.timestamp() == clock.now + LIFETIME_S

    other = await service.ensure_issued("edge-2")  # the other device has its own serials
    assert other.serial == 1


async def test_set_desired_reports_only_real_changes(
    engine: AsyncEngine, bundles: dict[tuple[str, int], BundleRecord]
) -> None:
    v1, v2 = bundles["tiny", 1].digest, bundles["tiny", 2].digest
    both = list(DEVICES)
    assert await assign(engine, both, "tiny", v1) == both
    assert await assign(engine, both, "tiny", v1) == []
    assert await assign(engine, ["edge-2"], "tiny", v2) == ["edge-2"]
    assert await assign(engine, both, "tiny", v2) == ["edge-1"]
    async with open_session(engine) as session:
        assert await desired_digest(session, "edge-1", "tiny") == v2
        assert await desired_digest(session, "edge-1", "other") is None
    assert await assign(engine, [*both, "edge-1"], "tiny", None) == both
    assert await assign(engine, both, "tiny", None) == []

    with pytest.raises(UnknownDevice, match="nope"):
        await assign(engine, ["edge-1", "nope"], "tiny", v1)
    with pytest.raises(UnknownModel, match="other"):  # a digest of another model
        await assign(engine, both, "other", v1)
    async with open_session(engine) as session:
        assert await desired_digest(session, "edge-1", "tiny") is None  # all rolled back


async def test_reconcile_heals_a_desired_row_committed_without_reissue(
    service: AssignmentService,
    engine: AsyncEngine,
    keys: KeyDirectory,
    bundles: dict[tuple[str, int], BundleRecord],
    clock: Clock,
) -> None:
    async with open_session(engine) as session:
        session.add(Device(id="edge-gone", public_key="unused", revoked_at=utcnow()))
    assert await service.reconcile() == 2  # every enrolled device gets a first document
    assert await service.current("edge-gone") is None  # a revoked one does not
    assert await service.reconcile() == 0

    await assign(engine, ["edge-1"], "tiny", bundles["tiny", 1].digest)  # ... then a crash
    assert await service.reconcile() == 1
    record = await current(service, "edge-1")
    assert record.serial == 2
    document = verified(record.document, keys, "edge-1", clock.now)
    assert document.models == (entry(bundles["tiny", 1]),)
    assert (await current(service, "edge-2")).serial == 1
    assert await service.reconcile() == 0


async def test_reconcile_renews_a_document_past_half_its_lifetime(
    service: AssignmentService,
    engine: AsyncEngine,
    keys: KeyDirectory,
    bundles: dict[tuple[str, int], BundleRecord],
    clock: Clock,
) -> None:
    await assign(engine, ["edge-1"], "tiny", bundles["tiny", 1].digest)
    await service.reissue(DEVICES)
    issued = clock.now
    clock.now = issued + LIFETIME_S / 2 - 1
    assert await service.reconcile() == 0
    clock.now = issued + LIFETIME_S / 2
    assert await service.reconcile() == 2
    record = await current(service, "edge-1")
    assert record.serial == 2
    assert record.expires_at.timestamp() == clock.now + LIFETIME_S
    document = verified(record.document, keys, "edge-1", clock.now)
    assert document.models == (entry(bundles["tiny", 1]),)  # same models, fresh expiry


async def test_a_long_poll_returns_on_change_and_none_when_the_wait_ends(
    service: AssignmentService,
    engine: AsyncEngine,
    bundles: dict[tuple[str, int], BundleRecord],
) -> None:
    first = await service.ensure_issued("edge-1")
    assert await service.wait_for_change("edge-1", first.etag, 0.05) is None
    stale = await service.wait_for_change("edge-1", '"older"', 60)  # differs already: at once
    assert stale is not None
    assert stale.serial == 1

    waiting = asyncio.create_task(service.wait_for_change("edge-1", first.etag, 60))
    await until(lambda: service.long_polls == 1, 10)
    await assign(engine, ["edge-1"], "tiny", bundles["tiny", 1].digest)
    await service.reissue(["edge-1"])
    async with asyncio.timeout(10):  # far below the poll's 60 s: it was woken, not timed out
        changed = await waiting
    assert changed is not None
    assert changed.serial == 2
    assert service.long_polls == 0

    ending = asyncio.create_task(service.wait_for_change("edge-1", changed.etag, 60))
    await until(lambda: service.long_polls == 1, 10)
    service.close()  # the server stops: polls end as "unchanged"
    async with asyncio.timeout(10):
        assert await ending is None


async def test_reissue_publishes_a_signed_sync_command(
    settings: ControlPlaneSettings,
    engine: AsyncEngine,
    keys: KeyDirectory,
    bundles: dict[tuple[str, int], BundleRecord],
    mosquitto: MosquittoBroker,  # noqa: F811
) -> None:
    device_id = f"edge-{uuid.uuid4().hex[:8]}"  # the session's broker is shared
    async with open_session(engine) as session:
        session.add(Device(id=device_id, public_key="unused"))
    url = mosquitto.url
    async with (
        MqttClient(MqttSettings(url, f"cp-{device_id}", max_backoff_s=1.0)) as publisher,
        MqttClient(MqttSettings(url, device_id, max_backoff_s=1.0)) as device,
    ):
        await publisher.wait_connected(10)
        await device.wait_connected(10)
        await device.subscribe(device_topic(device_id, "cmd"))
        service = AssignmentService(settings, engine, keys.load_key("assignment"), publisher)
        async with device.messages() as stream:
            await service.reissue([device_id])
            message = await next_message(stream)
    assert message.topic == device_topic(device_id, "cmd")
    verifier = CommandVerifier(keys.trust_store, device_id, [])
    command = verifier.verify_envelope(decode(message.payload), time.time())
    assert (command.name, command.device_id) == ("sync", device_id)


async def test_reissue_carries_on_when_the_broker_is_down(
    settings: ControlPlaneSettings,
    engine: AsyncEngine,
    keys: KeyDirectory,
    bundles: dict[tuple[str, int], BundleRecord],
) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings_down = MqttSettings(f"mqtt://127.0.0.1:{port}", "cp-down", max_backoff_s=1.0)
    async with MqttClient(settings_down) as down:
        service = AssignmentService(settings, engine, keys.load_key("assignment"), down)
        await service.reissue(["edge-1"])
    assert (await current(service, "edge-1")).serial == 1


def test_an_assignment_key_the_key_list_does_not_name_is_refused(keys: KeyDirectory) -> None:
    assert load_signer(keys, None) is not None
    PrivateKey.generate().save(keys.key_file("assignment"))
    with pytest.raises(AssignmentKeyError, match="not an assignment key"):
        load_signer(keys, None)
    keys.key_file("assignment").unlink()
    assert load_signer(keys, None) is None  # no key: assignments are disabled, not an error


# --- the API ----------------------------------------------------------------------------------


@pytest.fixture
async def secrets(engine: AsyncEngine) -> dict[str, str]:
    async with open_session(engine) as session:
        return {role.value: await create_token(session, role.value, role) for role in Role}


@pytest.fixture
async def client(
    settings: ControlPlaneSettings, bundles: dict[tuple[str, int], BundleRecord]
) -> AsyncIterator[Client]:
    async with TestClient(TestServer(build_app(settings))) as client:
        # The reconciler issues every device its first document at start; let it finish, so
        # the serials the tests see do not depend on a race with it.
        async with asyncio.timeout(10):
            await assignments_of(client).reconciled.wait()
        yield client


def bearer(secret: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}", **headers}


def assignments_of(client: Client) -> AssignmentService:
    app: web.Application = client.app
    return app[ASSIGNMENTS]


async def audit_log(engine: AsyncEngine) -> list[AuditEntry]:
    async with open_session(engine) as session:
        return list(await session.scalars(select(AuditEntry).order_by(AuditEntry.id)))


ASSIGNMENT = "/api/v1/devices/edge-1/assignment"
TINY = "/api/v1/devices/edge-1/models/tiny"


async def test_the_assignment_is_served_with_an_etag_and_304_when_it_matches(
    client: Client, secrets: dict[str, str], keys: KeyDirectory
) -> None:
    viewer = secrets["viewer"]
    response = await client.get(ASSIGNMENT, headers=bearer(viewer))
    assert response.status == 200
    assert response.content_type == "application/json"
    body = await response.read()
    etag = response.headers["ETag"]
    assert etag == f'"{hashlib.sha256(body).hexdigest()}"'
    assert verified(body, keys, "edge-1", time.time()).serial == 1

    again = await client.get(ASSIGNMENT, headers=bearer(viewer, **{"If-None-Match": etag}))
    assert again.status == 304
    assert again.headers["ETag"] == etag
    other = await client.get(ASSIGNMENT, headers=bearer(viewer, **{"If-None-Match": '"x"'}))
    assert other.status == 200
    assert await other.read() == body  # no new serial for a read

    unknown = await client.get("/api/v1/devices/nope/assignment", headers=bearer(viewer))
    assert unknown.status == 404
    bad_wait = await client.get(f"{ASSIGNMENT}?wait=soon", headers=bearer(viewer))
    assert bad_wait.status == 400
    assert (await client.get(ASSIGNMENT)).status == 401


async def test_an_http_long_poll_answers_on_change_and_304_after_the_wait(
    client: Client, secrets: dict[str, str], keys: KeyDirectory
) -> None:
    viewer = secrets["viewer"]
    etag = (await client.get(ASSIGNMENT, headers=bearer(viewer))).headers["ETag"]
    held = await client.get(
        f"{ASSIGNMENT}?wait=0.1", headers=bearer(viewer, **{"If-None-Match": etag})
    )
    assert held.status == 304

    async def long_poll() -> aiohttp.ClientResponse:
        return await client.get(
            f"{ASSIGNMENT}?wait=30", headers=bearer(viewer, **{"If-None-Match": etag})
        )

    waiting = asyncio.create_task(long_poll())
    service = assignments_of(client)
    await until(lambda: service.long_polls == 1, 10)
    put = await client.put(TINY, json={"version": 1}, headers=bearer(secrets["operator"]))
    assert put.status == 200
    async with asyncio.timeout(10):
        answer = await waiting
    assert answer.status == 200
    document = verified(await answer.read(), keys, "edge-1", time.time())
    assert document.serial == 2
    assert [m.name for m in document.models] == ["tiny"]


async def test_the_agent_source_long_polls_the_control_plane(
    client: Client, secrets: dict[str, str]
) -> None:
    url = str(client.make_url(ASSIGNMENT))
    async with aiohttp.ClientSession(headers=bearer(secrets["viewer"])) as session:
        source = HttpAssignmentSource(url, session)
        first = await source.fetch(wait_s=30)  # no ETag yet: answered at once
        assert first is not None
        assert await source.fetch(wait_s=0.1) is None  # held, then 304
        waiting = asyncio.create_task(source.fetch(wait_s=30))
        service = assignments_of(client)
        await until(lambda: service.long_polls == 1, 10)
        put = await client.put(TINY, json={"version": 2}, headers=bearer(secrets["operator"]))
        assert put.status == 200
        async with asyncio.timeout(10):
            second = await waiting
    assert second is not None
    assert second != first


async def test_operators_set_and_remove_models_and_each_change_is_audited(
    client: Client,
    secrets: dict[str, str],
    engine: AsyncEngine,
    bundles: dict[tuple[str, int], BundleRecord],
) -> None:
    operator = bearer(secrets["operator"])
    v1, v2 = bundles["tiny", 1], bundles["tiny", 2]
    response = await client.put(TINY, json={"version": 1}, headers=operator)
    assert response.status == 200
    body = await response.json()
    assert body["device_id"] == "edge-1"
    assert [(m["name"], m["version"], m["digest"], m["size"]) for m in body["models"]] == [
        ("tiny", 1, v1.digest, v1.size)
    ]
    assert body["models"][0]["set_by"] == "operator"
    assert body["assignment"]["serial"] == 2  # the first was the empty one from the start
    assert (await client.put(TINY, json={"version": 1}, headers=operator)).status == 200
    assert (await client.put(TINY, json={"version": 2}, headers=operator)).status == 200
    removed = await client.delete(TINY, headers=operator)
    assert removed.status == 200
    assert (await removed.json())["models"] == []
    assert (await client.delete(TINY, headers=operator)).status == 200  # already gone: no-op

    listed = await client.get("/api/v1/devices/edge-1/models", headers=bearer(secrets["viewer"]))
    assert listed.status == 200
    assignment = (await listed.json())["assignment"]
    assert assignment["serial"] == 4
    assert set(assignment) == {"serial", "etag", "issued_at", "expires_at"}

    one = {"model": "tiny", "version": 1, "digest": v1.digest}
    two = {"model": "tiny", "version": 2, "digest": v2.digest}
    entries = [(e.actor, e.action, e.target, e.before, e.after) for e in await audit_log(engine)]
    assert entries == [
        ("operator", "device.model.set", "device:edge-1", None, one),
        ("operator", "device.model.set", "device:edge-1", one, two),
        ("operator", "device.model.remove", "device:edge-1", two, None),
    ]


async def test_viewers_cannot_change_models_and_unknowns_are_404(
    client: Client, secrets: dict[str, str], engine: AsyncEngine
) -> None:
    viewer, operator = bearer(secrets["viewer"]), bearer(secrets["operator"])
    assert (await client.put(TINY, json={"version": 1}, headers=viewer)).status == 403
    assert (await client.delete(TINY, headers=viewer)).status == 403

    unknown_version = await client.put(TINY, json={"version": 9}, headers=operator)
    assert unknown_version.status == 404
    assert "version 9" in (await unknown_version.json())["error"]
    unknown_model = await client.put(
        "/api/v1/devices/edge-1/models/nope", json={"version": 1}, headers=operator
    )
    assert unknown_model.status == 404
    unknown_device = await client.put(
        "/api/v1/devices/nope/models/tiny", json={"version": 1}, headers=operator
    )
    assert unknown_device.status == 404
    assert (await client.get("/api/v1/devices/nope/models", headers=viewer)).status == 404
    for body in ({"version": "1"}, {"version": 0}, {"version": 1, "extra": True}, [1]):
        assert (await client.put(TINY, json=body, headers=operator)).status == 400
    assert await audit_log(engine) == []


async def test_without_keys_the_assignment_routes_say_how_to_enable_them(
    tmp_path: Path, database_url: str, engine: AsyncEngine, secrets: dict[str, str]
) -> None:
    settings = ControlPlaneSettings.build({}, data_dir=tmp_path, database_url=database_url)
    async with TestClient(TestServer(build_app(settings))) as client:
        response = await client.get(ASSIGNMENT, headers=bearer(secrets["viewer"]))
        assert response.status == 503
        assert "--keys" in (await response.json())["error"]
        put = await client.put(TINY, json={"version": 1}, headers=bearer(secrets["operator"]))
        assert put.status == 503


async def test_stopping_the_server_answers_held_long_polls_at_once(
    settings: ControlPlaneSettings,
    bundles: dict[tuple[str, int], BundleRecord],
    secrets: dict[str, str],
) -> None:
    # The production runner (not the test server, which cancels handlers of closed
    # connections): without the shutdown hook it would wait up to 60 s for the held request.
    app = build_app(dataclasses.replace(settings, port=0))
    stop, ports = asyncio.Event(), list[int]()
    server = asyncio.create_task(
        serve_until_stopped(
            web.AppRunner(app, access_log=None), "127.0.0.1", 0, str, stop, ports.append
        )
    )
    await until(lambda: bool(ports), 10)
    url = f"http://127.0.0.1:{ports[0]}{ASSIGNMENT}"
    async with aiohttp.ClientSession(headers=bearer(secrets["viewer"])) as session:
        async with session.get(url) as first:
            etag = first.headers["ETag"]

        async def long_poll() -> int:
            async with session.get(f"{url}?wait=30", headers={"If-None-Match": etag}) as held:
                return held.status

        waiting = asyncio.create_task(long_poll())
        await until(lambda: app[ASSIGNMENTS].long_polls == 1, 10)
        stop.set()
        async with asyncio.timeout(10):
            assert await waiting == 304
            await server


async def test_a_device_reads_its_own_assignment_with_a_signed_request(
    client: Client, engine: AsyncEngine, keys: KeyDirectory
) -> None:
    key = DeviceKey.generate()
    async with open_session(engine) as session:
        device = await session.get(Device, "edge-1")
        assert device is not None
        device.public_key = public_key_pem(key.public)
    signer = DeviceRequestSigner(key, "edge-1")
    async with aiohttp.ClientSession(middlewares=(signer,)) as session:
        source = HttpAssignmentSource(str(client.make_url(ASSIGNMENT)), session)
        document = await source.fetch()
        assert document is not None
        assert verified(document, keys, "edge-1", time.time()).device_id == "edge-1"
        assert await source.fetch(wait_s=0.1) is None  # a signed long poll, held, then 304
        other = await session.get(client.make_url("/api/v1/devices/edge-2/assignment"))
        assert other.status == 403  # only its own
        other.release()
