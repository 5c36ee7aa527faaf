"""Enrollment tokens, enrolling devices, and requests signed by enrolled devices."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.ca import CA_DIRECTORY, CRL_FILE
from control_plane.db.engine import open_session
from control_plane.db.models import AuditEntry, EnrollmentToken, utcnow
from control_plane.enrollment import DevicePreset, issue_enrollment_token
from control_plane.settings import ControlPlaneSettings
from shared.device_auth import sign_request
from shared.device_key import DeviceKey
from tests.control_plane.fleet import (
    Client,
    api_client,
    bearer,
    cp_settings,
    device_session,
    enroll,
    new_enroll_token,
    role_secrets,
)


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> ControlPlaneSettings:
    return cp_settings(
        tmp_path, database_url, public_url="https://cp.example.com", device_mqtt_url="mqtts://b"
    )


@pytest.fixture
async def client(settings: ControlPlaneSettings, engine: AsyncEngine) -> AsyncIterator[Client]:
    async with api_client(settings) as client:
        yield client


@pytest.fixture
async def secrets(engine: AsyncEngine) -> dict[str, str]:
    return await role_secrets(engine)


async def test_operator_issues_tokens_admin_lists_them(
    client: Client, secrets: dict[str, str]
) -> None:
    body = {"groups": ["lab", "eu"], "labels": {"site": "paris"}, "region": "eu-west", "ttl_s": 60}
    response = await client.post(
        "/api/v1/enroll-tokens", json=body, headers=bearer(secrets["operator"])
    )
    assert response.status == 201
    created = await response.json()
    assert created["secret"].startswith("efe_")
    token = created["token"]
    assert (token["state"], token["groups"], token["labels"], token["region"]) == (
        "unused", ["eu", "lab"], {"site": "paris"}, "eu-west",
    )  # fmt: skip
    assert token["created_by"] == "operator"

    viewer = await client.post("/api/v1/enroll-tokens", json={}, headers=bearer(secrets["viewer"]))
    assert viewer.status == 403
    operator_list = await client.get("/api/v1/enroll-tokens", headers=bearer(secrets["operator"]))
    assert operator_list.status == 403
    listing = await client.get("/api/v1/enroll-tokens", headers=bearer(secrets["admin"]))
    tokens = (await listing.json())["tokens"]
    assert [t["id"] for t in tokens] == [token["id"]]
    assert "secret" not in tokens[0]
    assert "token_hash" not in tokens[0]

    audit = await client.get("/api/v1/audit", headers=bearer(secrets["admin"]))
    entry = (await audit.json())["entries"][0]
    assert (entry["actor"], entry["action"]) == ("operator", "enroll_token.create")
    assert created["secret"] not in str(entry)


@pytest.mark.parametrize(
    "body",
    [
        {"groups": ["a/b"]},
        {"groups": "lab"},
        {"labels": {"k": 1}},
        {"labels": {"bad key": "v"}},
        {"region": ""},
        {"ttl_s": 0},
        {"ttl_s": True},
        {"colour": "blue"},
    ],
)
async def test_bad_token_requests_are_400(
    client: Client, secrets: dict[str, str], body: dict[str, object]
) -> None:
    response = await client.post(
        "/api/v1/enroll-tokens", json=body, headers=bearer(secrets["operator"])
    )
    assert response.status == 400, await response.text()


async def test_enrollment_answers_everything_a_device_needs(
    client: Client, secrets: dict[str, str], settings: ControlPlaneSettings
) -> None:
    token = await new_enroll_token(
        client, secrets["operator"], groups=["lab"], labels={"site": "paris"}, region="eu"
    )
    status, answer, key = await enroll(client, token, "edge-1")
    assert status == 201, answer
    assert settings.keys_dir is not None
    assert answer["root_key"] == (settings.keys_dir / "root.pub").read_text()
    assert answer["keylist"] == (settings.keys_dir / "keylist.json").read_text()
    assert answer["mqtt_url"] == "mqtts://b"
    assert answer["api_url"] == "https://cp.example.com"
    assert answer["assignment_url"] == "https://cp.example.com/api/v1/devices/edge-1/assignment"
    assert (answer["groups"], answer["labels"], answer["region"]) == (
        ["lab"],
        {"site": "paris"},
        "eu",
    )
    certificate = x509.load_pem_x509_certificate(answer["certificate"].encode())
    ca = x509.load_pem_x509_certificate(answer["ca_certificate"].encode())
    certificate.verify_directly_issued_by(ca)
    assert certificate.public_key() == key.public

    detail = await client.get("/api/v1/devices/edge-1", headers=bearer(secrets["viewer"]))
    device = await detail.json()
    assert (device["groups"], device["labels"], device["region"]) == (
        ["lab"],
        {"site": "paris"},
        "eu",
    )
    assert [c["serial"] for c in device["certificates"]] == [format(certificate.serial_number, "x")]
    assert device["certificates"][0]["revoked"] is False

    tokens = await client.get("/api/v1/enroll-tokens", headers=bearer(secrets["admin"]))
    used = (await tokens.json())["tokens"][0]
    assert (used["state"], used["used_by"]) == ("used", "edge-1")
    audit = await client.get("/api/v1/audit", headers=bearer(secrets["admin"]))
    entry = (await audit.json())["entries"][0]
    assert (entry["actor"], entry["action"], entry["target"]) == (
        f"enroll-token:{used['id']}", "device.enroll", "device:edge-1",
    )  # fmt: skip


async def test_unknown_expired_and_reused_tokens_are_401(
    client: Client, secrets: dict[str, str], engine: AsyncEngine
) -> None:
    status, answer, _ = await enroll(client, "efe_not-a-token", "edge-1")
    assert (status, "unknown" in answer["error"]) == (401, True)

    async with open_session(engine) as session:
        _, expired = await issue_enrollment_token(
            session, "test", DevicePreset(), 3600, utcnow() - timedelta(hours=2)
        )
    status, answer, _ = await enroll(client, expired, "edge-1")
    assert status == 401
    assert "expired" in answer["error"]

    token = await new_enroll_token(client, secrets["operator"])
    assert (await enroll(client, token, "edge-1"))[0] == 201
    status, answer, _ = await enroll(client, token, "edge-2")
    assert status == 401
    assert "already used (by device edge-1)" in answer["error"]


async def test_concurrent_redemptions_exactly_one_wins(
    client: Client, secrets: dict[str, str], engine: AsyncEngine
) -> None:
    token = await new_enroll_token(client, secrets["operator"])
    results = await asyncio.gather(*(enroll(client, token, f"edge-{i}") for i in range(2)))
    assert sorted(status for status, _, _ in results) == [201, 401]
    async with open_session(engine) as session:
        row = await session.scalar(select(EnrollmentToken))
        assert row is not None
        winner = next(answer["device_id"] for status, answer, _ in results if status == 201)
        assert row.used_by == winner
    listing = await client.get("/api/v1/devices", headers=bearer(secrets["viewer"]))
    assert [d["id"] for d in (await listing.json())["devices"]] == [winner]


async def test_csr_for_another_device_is_400_and_keeps_the_token(
    client: Client, secrets: dict[str, str]
) -> None:
    token = await new_enroll_token(client, secrets["operator"])
    key = DeviceKey.generate()
    body = {"token": token, "device_id": "edge-1", "csr": key.csr("edge-2").decode()}
    response = await client.post("/api/v1/enroll", json=body)
    assert response.status == 400
    assert "CN=edge-1" in (await response.json())["error"]
    assert (await enroll(client, token, "edge-1"))[0] == 201


@pytest.mark.parametrize(
    "body",
    [
        {"device_id": "edge-1", "csr": "x"},
        {"token": "t", "device_id": "a/b", "csr": "x"},
        {"token": "t", "device_id": "edge-1"},
        {"token": "t", "device_id": "edge-1", "csr": "x", "hardware": []},
        # Found by the API fuzzer: JSON that orjson cannot encode was a 500, not a 400.
        {"token": "t", "device_id": "edge-1", "csr": "x", "hardware": {"cores": 2**64}},
        {"token": "t", "device_id": "edge-1", "csr": "x", "hardware": {"cpu": "\ud800"}},
    ],
)
async def test_malformed_enrollments_are_400(client: Client, body: dict[str, object]) -> None:
    response = await client.post("/api/v1/enroll", json=body)
    assert response.status == 400, await response.text()


async def test_an_enrolled_device_is_409_until_revoked(
    client: Client, secrets: dict[str, str], settings: ControlPlaneSettings
) -> None:
    first = await new_enroll_token(client, secrets["operator"])
    _, answer, _ = await enroll(client, first, "edge-1")
    second = await new_enroll_token(client, secrets["operator"], groups=["moved"])
    status, refused, _ = await enroll(client, second, "edge-1")
    assert status == 409
    assert "revoke it first" in refused["error"]

    revoked = await client.post("/api/v1/devices/edge-1/revoke", headers=bearer(secrets["admin"]))
    assert revoked.status == 200
    assert all(c["revoked"] for c in (await revoked.json())["certificates"])
    serial = x509.load_pem_x509_certificate(answer["certificate"].encode()).serial_number
    crl_file = settings.data_dir / CA_DIRECTORY / CRL_FILE
    crl = await asyncio.to_thread(lambda: x509.load_pem_x509_crl(crl_file.read_bytes()))
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None

    status, again, key = await enroll(client, second, "edge-1")
    assert status == 201, again
    assert again["groups"] == ["moved"]
    async with device_session(key, "edge-1") as session:
        response = await session.get(client.make_url("/api/v1/devices/edge-1"))
        assert response.status == 200
        device = await response.json()
    assert device["revoked_at"] is None
    assert [c["revoked"] for c in device["certificates"]] == [True, False]


async def test_without_keys_enrollment_is_503_and_spends_no_token(
    tmp_path: Path, database_url: str, engine: AsyncEngine
) -> None:
    secrets = await role_secrets(engine)
    async with api_client(cp_settings(tmp_path, database_url, keys=False)) as client:
        token = await new_enroll_token(client, secrets["operator"])
        status, answer, _ = await enroll(client, token, "edge-1")
        assert status == 503
        assert "--keys" in answer["error"]
        listing = await client.get("/api/v1/enroll-tokens", headers=bearer(secrets["admin"]))
        assert (await listing.json())["tokens"][0]["state"] == "unused"


async def test_device_signed_requests(client: Client, secrets: dict[str, str]) -> None:
    keys = {}
    for device_id in ("edge-a", "edge-b"):
        token = await new_enroll_token(client, secrets["operator"])
        status, _, keys[device_id] = await enroll(client, token, device_id)
        assert status == 201
    own = client.make_url("/api/v1/devices/edge-a")
    async with device_session(keys["edge-a"], "edge-a") as session:
        assert (await session.get(own)).status == 200
        other = await session.get(client.make_url("/api/v1/devices/edge-b"))
        assert other.status == 403
        assert "may only read its own" in (await other.json())["error"]
        # A route without device access ignores the signature and wants a bearer token.
        assert (await session.get(client.make_url("/api/v1/devices"))).status == 401
        # Bundles are device-readable: authenticated, then simply not found.
        bundle = await session.get(client.make_url("/api/v1/bundles/" + "0" * 64))
        assert bundle.status == 404
    assert (await client.get("/api/v1/devices/edge-a")).status == 401
    assert (await client.get("/api/v1/bundles/" + "0" * 64)).status == 401

    # Signed by the wrong key, replayed, or from a device never enrolled: 401.
    async with device_session(keys["edge-b"], "edge-a") as session:
        response = await session.get(own)
        assert response.status == 401
        assert "does not verify" in (await response.json())["error"]
    async with device_session(keys["edge-a"], "edge-zz") as session:
        assert (await session.get(client.make_url("/api/v1/devices/edge-zz"))).status == 401
    headers = sign_request(keys["edge-a"], "edge-a", "GET", "/api/v1/devices/edge-a")
    assert (await client.get("/api/v1/devices/edge-a", headers=headers)).status == 200
    replay = await client.get("/api/v1/devices/edge-a", headers=headers)
    assert replay.status == 401
    assert "already used" in (await replay.json())["error"]

    # A revoked device is refused at once (its cached key is dropped).
    await client.post("/api/v1/devices/edge-a/revoke", headers=bearer(secrets["admin"]))
    async with device_session(keys["edge-a"], "edge-a") as session:
        response = await session.get(own)
        assert response.status == 401
        assert "revoked" in (await response.json())["error"]


async def test_viewer_changes_nothing(client: Client, secrets: dict[str, str]) -> None:
    token = await new_enroll_token(client, secrets["operator"])
    await enroll(client, token, "edge-1")
    viewer = bearer(secrets["viewer"])
    patch = await client.patch("/api/v1/devices/edge-1", json={"region": "x"}, headers=viewer)
    assert patch.status == 403
    assert (await client.post("/api/v1/devices/edge-1/revoke", headers=viewer)).status == 403
    operator = bearer(secrets["operator"])
    assert (await client.post("/api/v1/devices/edge-1/revoke", headers=operator)).status == 403
    assert (await client.post("/api/v1/enroll-tokens", json={}, headers=viewer)).status == 403
    response = await client.get("/api/v1/audit", headers=bearer(secrets["admin"]))
    actions = [e["action"] for e in (await response.json())["entries"]]
    assert "device.update" not in actions
    assert "device.revoke" not in actions


async def test_audit_rows_name_the_token_not_its_secret(
    client: Client, secrets: dict[str, str], engine: AsyncEngine
) -> None:
    token = await new_enroll_token(client, secrets["operator"])
    await enroll(client, token, "edge-1")
    async with open_session(engine) as session:
        rows = (await session.scalars(select(AuditEntry))).all()
    assert all(token not in str(row.after) for row in rows)
