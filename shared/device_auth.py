"""Request signing: how an enrolled device proves who it is on every HTTP request.

A device holds a private key (ECDSA P-256, `shared.device_key`) whose public key the control
plane recorded at enrollment. It signs each request and sends four headers:

    X-EdgeFleet-Device      the device id
    X-EdgeFleet-Time        the signing time, integer unix seconds
    X-EdgeFleet-Nonce       16-64 random URL-safe base64 characters, new for every request
    X-EdgeFleet-Signature   base64 (standard, padded) of the signature of the canonical string

The canonical string is seven lines joined by "\\n" (no trailing newline), UTF-8:

    EDGEFLEET-DEVICE-SIG-V1           the scheme tag (a new scheme gets a new tag)
    GET                               the method, upper case
    /api/v1/bundles/ab12?x=1          the path with its query string, exactly as sent
    1767225600                        X-EdgeFleet-Time
    q3T0...                           X-EdgeFleet-Nonce
    edge-1                            X-EdgeFleet-Device
    e3b0c442...                       sha256 of the body, lowercase hex (of b"" for none)

The signature is ECDSA with SHA-256 (DER, as `openssl dgst -sha256 -sign` writes it) for a P-256
key, plain Ed25519 for an Ed25519 key. The verifier refuses a time more than 300 s away from its
own clock, and a nonce it has already accepted from that device within that window: it keeps
the nonces of the last 2 x 300 s (a signature older than that fails the time check anyway) in
a bounded in-memory cache. The cache is per process: with several control plane replicas a
captured request could be replayed once against each replica within the window, which is why
it only guards requests that are safe to repeat (reads and idempotent writes).

Errors (all permanent for the request at hand; a fresh signature may succeed):

    TrustError
    └── DeviceAuthError             a device-signed request is refused
        ├── MalformedDeviceHeaders  some X-EdgeFleet-* headers are missing or unreadable
        ├── BadRequestSignature     the signature does not verify against the device's key
        ├── ClockSkew               the signing time is over 300 s from the verifier's clock
        └── ReplayedRequest         the nonce was already accepted from this device
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse
from aiohttp.payload import BytesPayload
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from yarl import URL

from shared.device_key import DeviceKey, DevicePublicKey
from shared.trust_errors import TrustError

SCHEME = "EDGEFLEET-DEVICE-SIG-V1"
DEVICE_HEADER = "X-EdgeFleet-Device"
TIME_HEADER = "X-EdgeFleet-Time"
NONCE_HEADER = "X-EdgeFleet-Nonce"
SIGNATURE_HEADER = "X-EdgeFleet-Signature"
HEADERS = (DEVICE_HEADER, TIME_HEADER, NONCE_HEADER, SIGNATURE_HEADER)
MAX_SKEW_S = 300
MAX_NONCES = 100_000
NONCE_BYTES = 16
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")
_MAX_SIGNATURE_CHARS = 200


class DeviceAuthError(TrustError):
    """A device-signed request is refused; the message says why."""


class MalformedDeviceHeaders(DeviceAuthError):
    """Some X-EdgeFleet-* headers are missing or unreadable."""


class BadRequestSignature(DeviceAuthError):
    """The signature does not verify against the device's public key."""


class ClockSkew(DeviceAuthError):
    """The signing time is too far from the verifier's clock."""


class ReplayedRequest(DeviceAuthError):
    """The nonce was already accepted from this device."""


def canonical_request(
    method: str, path_qs: str, signed_at: int, nonce: str, device_id: str, body: bytes
) -> bytes:
    """The bytes a device signs (see the module docstring)."""
    lines = (
        SCHEME,
        method.upper(),
        path_qs,
        str(signed_at),
        nonce,
        device_id,
        hashlib.sha256(body).hexdigest(),
    )
    return "\n".join(lines).encode()


def sign_request(
    key: DeviceKey,
    device_id: str,
    method: str,
    path_qs: str,
    body: bytes = b"",
    now: float | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four X-EdgeFleet-* headers for one request."""
    signed_at = int(time.time() if now is None else now)
    nonce = nonce or secrets.token_urlsafe(NONCE_BYTES)
    data = canonical_request(method, path_qs, signed_at, nonce, device_id, body)
    return {
        DEVICE_HEADER: device_id,
        TIME_HEADER: str(signed_at),
        NONCE_HEADER: nonce,
        SIGNATURE_HEADER: base64.b64encode(key.sign(data)).decode(),
    }


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """The X-EdgeFleet-* headers of one request, parsed but not yet verified."""

    device_id: str
    signed_at: int
    nonce: str
    signature: bytes

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> SignedRequest | None:
        """None when the request carries none of the headers; `MalformedDeviceHeaders` if some."""
        values = {name: headers.get(name) for name in HEADERS}
        if all(value is None for value in values.values()):
            return None
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise MalformedDeviceHeaders(
                f"a device-signed request needs all of {', '.join(HEADERS)}; "
                f"missing: {', '.join(missing)}"
            )
        device_id, raw_time, nonce, raw_signature = (str(values[name]) for name in HEADERS)
        if not raw_time.isdigit():
            raise MalformedDeviceHeaders(f"{TIME_HEADER} must be integer unix seconds")
        if not _NONCE.fullmatch(nonce):
            raise MalformedDeviceHeaders(f"{NONCE_HEADER} must be 16-64 URL-safe base64 characters")
        try:
            if len(raw_signature) > _MAX_SIGNATURE_CHARS:
                raise ValueError
            signature = base64.b64decode(raw_signature, validate=True)
        except (ValueError, binascii.Error):
            raise MalformedDeviceHeaders(f"{SIGNATURE_HEADER} is not base64") from None
        return cls(device_id, int(raw_time), nonce, signature)


class RequestVerifier:
    """Checks signed requests: signature, clock skew, and nonces seen (bounded, in memory)."""

    def __init__(
        self,
        max_skew_s: float = MAX_SKEW_S,
        max_nonces: int = MAX_NONCES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_skew_s = max_skew_s
        self.max_nonces = max_nonces
        self._clock = clock
        self._seen: OrderedDict[tuple[str, str], float] = OrderedDict()  # -> when accepted

    def verify(
        self,
        key: DevicePublicKey,
        signed: SignedRequest,
        method: str,
        path_qs: str,
        body: bytes,
    ) -> None:
        """Return when the request is authentic and fresh; raise a `DeviceAuthError` if not."""
        now = self._clock()
        skew = signed.signed_at - now
        if abs(skew) > self.max_skew_s:
            direction = "ahead of" if skew > 0 else "behind"
            raise ClockSkew(
                f"the device's clock is {abs(skew):.0f} s {direction} the server's (limit "
                f"{self.max_skew_s:.0f} s); synchronise the device's clock (NTP) and retry"
            )
        data = canonical_request(
            method, path_qs, signed.signed_at, signed.nonce, signed.device_id, body
        )
        if not _verify_signature(key, signed.signature, data):
            raise BadRequestSignature(
                f"the request signature does not verify against device {signed.device_id}'s "
                "key (wrong key, or the method, path, query or body changed after signing)"
            )
        self._remember(signed.device_id, signed.nonce, now)

    def _remember(self, device_id: str, nonce: str, now: float) -> None:
        horizon = now - 2 * self.max_skew_s
        while self._seen and next(iter(self._seen.values())) < horizon:
            self._seen.popitem(last=False)
        entry = (device_id, nonce)
        if entry in self._seen:
            raise ReplayedRequest(
                f"nonce {nonce[:12]}... was already used by device {device_id}; "
                "sign every request with a new nonce"
            )
        # At capacity the oldest nonce goes first; the cap only bites under a flood far above
        # what a fleet's polling produces, and it keeps memory bounded whatever happens.
        while len(self._seen) >= self.max_nonces:
            self._seen.popitem(last=False)
        self._seen[entry] = now


def _verify_signature(key: DevicePublicKey, signature: bytes, data: bytes) -> bool:
    try:
        if isinstance(key, Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


class DeviceRequestSigner:
    """An aiohttp client middleware that signs every request of a `ClientSession`.

    `ClientSession(middlewares=(DeviceRequestSigner(key, device_id, origins),))`. With
    `origins` (e.g. ["https://cp.example.com"]), requests to other origins (a CDN serving
    bundles) go out unsigned; without, every request is signed. Only in-memory bodies (bytes,
    JSON) can be signed, not streamed ones.
    """

    def __init__(self, key: DeviceKey, device_id: str, origins: Iterable[str] = ()) -> None:
        self.key = key
        self.device_id = device_id
        self.origins = frozenset(URL(origin).origin() for origin in origins)

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        """Add the X-EdgeFleet-* headers, then send."""
        if not self.origins or request.url.origin() in self.origins:
            body = request.body
            if isinstance(body, BytesPayload):
                data = await body.as_bytes()
            elif body == b"":
                data = b""
            else:
                raise DeviceAuthError(
                    f"cannot sign the streamed body of {request.method} {request.url}; "
                    "send bytes or JSON"
                )
            headers = sign_request(
                self.key, self.device_id, request.method, request.url.raw_path_qs, data
            )
            request.headers.update(headers)
        return await handler(request)
