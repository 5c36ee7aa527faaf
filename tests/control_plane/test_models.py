"""The models registry: upload, verification, listing and ranged downloads."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.api.app import build_app
from control_plane.db.engine import open_session
from control_plane.roles import Role
from control_plane.settings import ControlPlaneSettings
from control_plane.storage import FileBlobStore
from control_plane.tokens import create_token
from shared.key_directory import KEYLIST, ROOT_PUB
from shared.keys import save_public
from tests.shared.builders import TINY_FILES, KeySet, make_keys, write_tiny_bundle

Client = TestClient[Any, Any]


@pytest.fixture
def keys() -> KeySet:
    return make_keys()


@pytest.fixture
async def secrets(engine: AsyncEngine) -> dict[str, str]:
    async with open_session(engine) as session:
        return {role.value: await create_token(session, role.value, role) for role in Role}


@pytest.fixture
async def client(
    tmp_path: Path, database_url: str, engine: AsyncEngine, keys: KeySet
) -> AsyncIterator[Client]:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    save_public(keys_dir / ROOT_PUB, keys.root.public)
    (keys_dir / KEYLIST).write_bytes(keys.document)
    settings = ControlPlaneSettings.build(
        {}, data_dir=tmp_path, database_url=database_url, keys_dir=keys_dir
    )
    async with TestClient(TestServer(build_app(settings))) as client:
        yield client


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def payload(bundle: Path) -> bytes:
    return bundle.read_bytes()


async def upload(client: Client, secret: str, bundle: Path) -> Any:
    return await client.post("/api/v1/models", data=payload(bundle), headers=bearer(secret))


def blobs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "blobs").glob("*/*.bundle"))


async def test_upload_list_detail_and_reupload(
    client: Client, secrets: dict[str, str], keys: KeySet, tmp_path: Path
) -> None:
    bundle = write_tiny_bundle(tmp_path / "b", keys.release)
    digest = hashlib.sha256(bundle.read_bytes()).hexdigest()
    response = await upload(client, secrets["operator"], bundle)
    assert response.status == 201, await response.text()
    body = await response.json()
    assert (body["name"], body["version"], body["digest"]) == ("tiny", 1, digest)
    stored = blobs(tmp_path)
    assert [p.name for p in stored] == [f"{digest}.bundle"]
    assert hashlib.sha256(stored[0].read_bytes()).hexdigest() == digest

    listed = await (await client.get("/api/v1/models", headers=bearer(secrets["viewer"]))).json()
    assert [(m["name"], [v["version"] for v in m["versions"]]) for m in listed["models"]] == [
        ("tiny", [1])
    ]
    detail = await client.get("/api/v1/models/tiny/versions/1", headers=bearer(secrets["viewer"]))
    assert detail.status == 200
    assert (await detail.json())["manifest"]["name"] == "tiny"
    missing = await client.get("/api/v1/models/tiny/versions/2", headers=bearer(secrets["viewer"]))
    assert missing.status == 404

    again = await upload(client, secrets["operator"], bundle)
    assert again.status == 200
    assert (await again.json())["digest"] == digest
    audit = await (await client.get("/api/v1/audit", headers=bearer(secrets["viewer"]))).json()
    assert [e["action"] for e in audit["entries"]] == ["model.upload"]


async def test_conflicting_version_is_409(
    client: Client, secrets: dict[str, str], keys: KeySet, tmp_path: Path
) -> None:
    first = write_tiny_bundle(tmp_path / "a", keys.release)
    assert (await upload(client, secrets["operator"], first)).status == 201
    second = write_tiny_bundle(tmp_path / "c", keys.release, files=_other_files())
    response = await upload(client, secrets["operator"], second)
    assert response.status == 409
    assert "already exists" in (await response.json())["error"]
    assert len(blobs(tmp_path)) == 1


def _other_files() -> dict[str, bytes]:
    return {**TINY_FILES, "model.bin": b"different weights"}


async def test_unknown_key_and_tampered_are_400(
    client: Client, secrets: dict[str, str], tmp_path: Path
) -> None:
    stranger = make_keys()
    bundle = write_tiny_bundle(tmp_path / "s", stranger.release)
    response = await upload(client, secrets["operator"], bundle)
    assert response.status == 400
    assert "verification" in (await response.json())["error"]

    own = make_keys()  # a tampered archive: flip one byte of a bundle
    data = bytearray(write_tiny_bundle(tmp_path / "t", own.release).read_bytes())
    data[len(data) // 2] ^= 0xFF
    response = await client.post(
        "/api/v1/models", data=bytes(data), headers=bearer(secrets["operator"])
    )
    assert response.status == 400
    assert blobs(tmp_path) == []
    assert list((tmp_path / "blobs" / ".incoming").iterdir()) == []


async def test_viewer_cannot_upload(
    client: Client, secrets: dict[str, str], keys: KeySet, tmp_path: Path
) -> None:
    bundle = write_tiny_bundle(tmp_path / "b", keys.release)
    assert (await upload(client, secrets["viewer"], bundle)).status == 403


async def test_download_range_and_etag(
    client: Client, secrets: dict[str, str], keys: KeySet, tmp_path: Path
) -> None:
    bundle = write_tiny_bundle(tmp_path / "b", keys.release)
    data = bundle.read_bytes()
    digest = (await (await upload(client, secrets["operator"], bundle)).json())["digest"]
    url = f"/api/v1/bundles/{digest}"
    auth = bearer(secrets["viewer"])

    full = await client.get(url, headers=auth)
    assert full.status == 200
    assert await full.read() == data
    assert full.headers["ETag"] == f'"{digest}"'

    part = await client.get(url, headers={**auth, "Range": "bytes=10-99"})
    assert part.status == 206
    assert await part.read() == data[10:100]
    assert part.headers["Content-Range"] == f"bytes 10-99/{len(data)}"

    cached = await client.get(url, headers={**auth, "If-None-Match": f'"{digest}"'})
    assert cached.status == 304
    assert (await client.get(url)).status == 401
    assert (await client.get("/api/v1/bundles/" + "0" * 64, headers=auth)).status == 404


def test_file_blob_store_layout(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    temp = store.temp_file()
    temp.write_bytes(b"abc")
    digest = hashlib.sha256(b"abc").hexdigest()
    store.put(temp, digest)
    assert store.path(digest) == tmp_path / digest[:2] / f"{digest}.bundle"
    assert store.exists(digest)
    assert not temp.exists()
    store.delete(digest)
    assert not store.exists(digest)
    with pytest.raises(ValueError, match="not a sha256 digest"):
        store.path("../etc")
