"""Device identity on the API: the CA, the CRL, and checking requests signed by devices.

`DeviceIdentity` lives on the application (`app[DEVICE_IDENTITY]`). At startup it loads the CA
(making it on the first start) and rewrites the CRL from the database. It keeps the public keys
of recently seen devices for `KEY_TTL_S`: a revocation on this replica drops the key at once;
on other replicas within that time.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.api.errors import AuthenticationRequired, PermissionDenied
from control_plane.api.state import ENGINE, SETTINGS
from control_plane.ca import CA_DIRECTORY, CertificateAuthority
from control_plane.db.engine import open_session
from control_plane.db.models import Device, utcnow
from control_plane.devices import revoked_serials
from control_plane.errors import CertificateAuthorityError
from shared.device_auth import DeviceAuthError, RequestVerifier, SignedRequest
from shared.device_key import DevicePublicKey, load_device_public_key
from shared.trust_errors import KeyFileError

KEY_TTL_S = 60.0
MAX_CACHED_KEYS = 50_000
PATH_DEVICE = "device_id"  # the path parameter a device must match to read a resource


class DeviceIdentity:
    """The CA, the CRL writer, a cache of device public keys and the request verifier."""

    def __init__(
        self, key_ttl_s: float = KEY_TTL_S, verifier: RequestVerifier | None = None
    ) -> None:
        self.verifier = verifier or RequestVerifier()
        self.key_ttl_s = key_ttl_s
        self._ca: CertificateAuthority | None = None
        self._keys: OrderedDict[str, tuple[DevicePublicKey, float]] = OrderedDict()
        self._crl_lock = asyncio.Lock()

    @property
    def ca(self) -> CertificateAuthority:
        """The loaded CA (the application's startup loads it)."""
        if self._ca is None:
            raise CertificateAuthorityError("the CA is not loaded yet; the API is starting")
        return self._ca

    async def load(self, directory: Path, engine: AsyncEngine) -> None:
        """Load (or make) the CA in `directory`, then rewrite the CRL from the database."""
        load = CertificateAuthority.load_or_create
        self._ca = await asyncio.to_thread(load, directory, utcnow())
        await self.rewrite_crl(engine)

    async def rewrite_crl(self, engine: AsyncEngine) -> None:
        """Write crl.pem with every revoked certificate in the database."""
        # One writer at a time, each reading after the last one wrote: the file on disk is never
        # replaced by a list older than the one it holds.
        async with self._crl_lock:
            async with open_session(engine) as session:
                revoked = await revoked_serials(session)
            await asyncio.to_thread(self.ca.write_crl, revoked, utcnow())

    def forget(self, device_id: str) -> None:
        """Drop a cached key (after a revocation or a new enrollment)."""
        self._keys.pop(device_id, None)

    async def public_key(self, engine: AsyncEngine, device_id: str) -> DevicePublicKey:
        """The key of an enrolled, not revoked device; `AuthenticationRequired` otherwise."""
        now = time.monotonic()
        cached = self._keys.get(device_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        async with open_session(engine) as session:
            device = await session.get(Device, device_id)
            revoked = device is None or device.revoked_at is not None
            pem = None if device is None else device.public_key
        if revoked or pem is None:
            self.forget(device_id)
            raise AuthenticationRequired(
                f"device {device_id!r} is not enrolled or was revoked; enroll it "
                "(`edgefleet agent enroll`) with a new enrollment token"
            )
        try:
            key = load_device_public_key(pem, f"device {device_id}")
        except KeyFileError as error:
            raise AuthenticationRequired(str(error)) from None
        self._keys[device_id] = (key, now + self.key_ttl_s)
        self._keys.move_to_end(device_id)
        while len(self._keys) > MAX_CACHED_KEYS:
            self._keys.popitem(last=False)
        return key


DEVICE_IDENTITY = web.AppKey("device_identity", DeviceIdentity)


def setup_device_identity(app: web.Application) -> None:
    """Give the application its device identity; the CA is loaded when the app starts."""
    app[DEVICE_IDENTITY] = DeviceIdentity()
    app.cleanup_ctx.append(_load_ca)


async def _load_ca(app: web.Application) -> AsyncIterator[None]:
    identity = app[DEVICE_IDENTITY]
    await identity.load(app[SETTINGS].data_dir / CA_DIRECTORY, app[ENGINE])
    yield


async def authenticate_device(request: web.Request, signed: SignedRequest) -> str:
    """The id of the device that signed `request`; 401 if it did not, 403 if not its own."""
    identity = request.app[DEVICE_IDENTITY]
    key = await identity.public_key(request.app[ENGINE], signed.device_id)
    body = await request.read()
    try:
        identity.verifier.verify(key, signed, request.method, request.raw_path, body)
    except DeviceAuthError as error:
        raise AuthenticationRequired(str(error)) from None
    target = request.match_info.get(PATH_DEVICE)
    if target is not None and target != signed.device_id:
        raise PermissionDenied(
            f"a device may only read its own resources: device {signed.device_id} signed a "
            f"request for device {target}"
        )
    return signed.device_id
