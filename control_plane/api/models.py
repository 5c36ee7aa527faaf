"""The models registry: upload signed bundles, list them, and serve their bytes to agents."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from aiohttp import hdrs, web
from aiohttp.helpers import ETag
from sqlalchemy import select

from control_plane import audit
from control_plane.api.auth import actor, caller
from control_plane.api.state import ENGINE, SETTINGS
from control_plane.db.engine import open_session
from control_plane.db.models import INTEGER_MAX, BundleRecord, fits_integer
from control_plane.errors import (
    BundleTooLarge,
    InvalidBundle,
    KeysNotConfigured,
    UnknownModel,
    VersionConflict,
)
from control_plane.storage import BlobStore, FileBlobStore, valid_digest
from shared.bundle import VerifiedBundle, verify_bundle
from shared.errors import EdgeFleetError
from shared.key_directory import KeyDirectory

CHUNK = 1 << 20
MAX_BUNDLE_BYTES = 16 << 30


def blob_store(request: web.Request) -> BlobStore:
    """The store the bundles live in: `<data>/blobs` for now."""
    return FileBlobStore(request.app[SETTINGS].data_dir / "blobs")


def version_json(record: BundleRecord) -> dict[str, Any]:
    """A stored version without its manifest."""
    return {
        "name": record.name,
        "version": record.version,
        "digest": record.digest,
        "size": record.size,
        "signer_keyid": record.signer_keyid,
        "uploaded_at": record.uploaded_at.isoformat(),
        "uploaded_by": record.uploaded_by,
    }


async def upload_model(request: web.Request) -> web.Response:
    """Stream a bundle to disk, verify it against the key list, store it content-addressed."""
    keys_dir = request.app[SETTINGS].keys_dir
    if keys_dir is None:
        raise KeysNotConfigured("no key directory: start the control plane with --keys")
    if request.content_length is not None and request.content_length > MAX_BUNDLE_BYTES:
        raise BundleTooLarge(f"the bundle is over {MAX_BUNDLE_BYTES} bytes")
    store = blob_store(request)
    temp = await asyncio.to_thread(store.temp_file)
    try:
        digest = await _receive(request, temp)
        verified = await asyncio.to_thread(_verify, temp, keys_dir)
        if verified.digest != digest:  # the file changed under us: never store it
            raise InvalidBundle("the bundle changed while it was verified")
        return await _register(request, store, temp, verified)
    finally:
        await asyncio.to_thread(temp.unlink, missing_ok=True)


async def _receive(request: web.Request, temp: Path) -> str:
    sha, size = hashlib.sha256(), 0
    with temp.open("wb") as out:
        async for chunk in request.content.iter_chunked(CHUNK):
            size += len(chunk)
            if size > MAX_BUNDLE_BYTES:
                raise BundleTooLarge(f"the bundle is over {MAX_BUNDLE_BYTES} bytes")
            sha.update(chunk)
            await asyncio.to_thread(out.write, chunk)
    if size == 0:
        raise InvalidBundle("the request body is empty: send the bundle archive")
    return sha.hexdigest()


def _verify(archive: Path, keys_dir: Path) -> VerifiedBundle:
    trust = KeyDirectory(keys_dir).trust_store()  # public files only
    try:
        return verify_bundle(archive, trust)
    except EdgeFleetError as error:
        raise InvalidBundle(f"the bundle failed verification: {error}") from None


async def _register(
    request: web.Request, store: BlobStore, temp: Path, verified: VerifiedBundle
) -> web.Response:
    name, version = verified.manifest.name, verified.manifest.version
    async with open_session(request.app[ENGINE]) as session:
        existing = await session.scalar(
            select(BundleRecord).where(BundleRecord.name == name, BundleRecord.version == version)
        )
        if existing is not None:
            if existing.digest != verified.digest:
                raise VersionConflict(
                    f"{name} version {version} already exists with digest {existing.digest}"
                )
            body = version_json(existing)
            status = 200
        else:
            await asyncio.to_thread(store.put, temp, verified.digest)
            record = BundleRecord(
                digest=verified.digest,
                name=name,
                version=version,
                size=verified.size,
                signer_keyid=verified.signer_keyid,
                manifest=verified.manifest.as_json(),
                uploaded_by=actor(caller(request)),
            )
            session.add(record)
            await session.flush()
            body = version_json(record)
            await audit.record(
                session, body["uploaded_by"], "model.upload", f"model:{name}:{version}", None, body
            )
            status = 201
    return web.json_response(body, status=status)


async def list_models(request: web.Request) -> web.Response:
    """Every model name with its versions, oldest version first."""
    async with open_session(request.app[ENGINE]) as session:
        rows = await session.scalars(
            select(BundleRecord).order_by(BundleRecord.name, BundleRecord.version)
        )
        models: dict[str, list[dict[str, Any]]] = {}
        for record in rows:
            models.setdefault(record.name, []).append(version_json(record))
    return web.json_response(
        {"models": [{"name": name, "versions": versions} for name, versions in models.items()]}
    )


async def get_model_version(request: web.Request) -> web.Response:
    """One version: its summary, digest and manifest."""
    name, raw = request.match_info["name"], request.match_info["version"]
    version = _version_number(raw)
    async with open_session(request.app[ENGINE]) as session:
        record = await session.scalar(
            select(BundleRecord).where(BundleRecord.name == name, BundleRecord.version == version)
        )
        if record is None:
            raise UnknownModel(f"no model {name!r} version {raw!r}")
        body = {**version_json(record), "manifest": record.manifest}
    return web.json_response(body)


def _version_number(raw: str) -> int:
    """The version a path names; -1 (no stored version) for anything but a storable number."""
    # ASCII only: str.isdigit() also takes digits such as "²" that int() refuses.
    if not (raw.isascii() and raw.isdigit()) or len(raw) > len(str(INTEGER_MAX)):
        return -1
    version = int(raw)
    return version if fits_integer(version) else -1


class _DigestFileResponse(web.FileResponse):
    """A file response whose ETag is the bundle's digest, not aiohttp's mtime-size tag."""

    def __init__(self, path: Path, digest: str) -> None:
        super().__init__(path, chunk_size=CHUNK)
        self._digest = digest

    @property
    def etag(self) -> ETag | None:
        return ETag(value=self._digest)

    @etag.setter
    def etag(self, value: ETag | int | str | None) -> None:
        self.headers[hdrs.ETAG] = f'"{self._digest}"'


async def download_bundle(request: web.Request) -> web.StreamResponse:
    """The bundle's bytes, with `ETag` (its digest), `If-None-Match` and `Range`."""
    digest = request.match_info["digest"]
    store = blob_store(request)
    if not valid_digest(digest) or not await asyncio.to_thread(store.exists, digest):
        raise UnknownModel(f"no bundle with digest {digest!r}")
    inm = request.if_none_match
    if inm is not None and any(tag.value in (digest, "*") for tag in inm):
        return web.Response(status=304, headers={hdrs.ETAG: f'"{digest}"'})
    response = _DigestFileResponse(store.path(digest), digest)
    response.content_type = "application/octet-stream"
    return response
