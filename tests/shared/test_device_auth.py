"""Device request signing: round trips, every refusal, and the aiohttp client middleware."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from shared.device_auth import (
    DEVICE_HEADER,
    NONCE_HEADER,
    SIGNATURE_HEADER,
    TIME_HEADER,
    BadRequestSignature,
    ClockSkew,
    DeviceRequestSigner,
    MalformedDeviceHeaders,
    ReplayedRequest,
    RequestVerifier,
    SignedRequest,
    canonical_request,
    sign_request,
)
from shared.device_key import DeviceKey, load_device_public_key, public_key_pem
from shared.trust_errors import KeyFileError

NOW = 1_767_225_600.0
PATH = "/api/v1/devices/edge-1/assignment?wait=30"
BODY = b'{"a": 1}'


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def key() -> DeviceKey:
    return DeviceKey.generate()


def signed(key: DeviceKey) -> SignedRequest:
    headers = sign_request(key, "edge-1", "POST", PATH, BODY, now=NOW)
    parsed = SignedRequest.from_headers(headers)
    assert parsed is not None
    return parsed


def test_round_trip(key: DeviceKey) -> None:
    verifier = RequestVerifier(clock=Clock())
    verifier.verify(key.public, signed(key), "POST", PATH, BODY)


def test_ed25519_keys_sign_too() -> None:
    key = DeviceKey(Ed25519PrivateKey.generate())
    RequestVerifier(clock=Clock()).verify(key.public, signed(key), "post", PATH, BODY)


def test_canonical_string_is_the_documented_one() -> None:
    data = canonical_request("get", "/x?y=1", 12, "n" * 16, "edge-1", b"")
    assert data.decode().split("\n") == [
        "EDGEFLEET-DEVICE-SIG-V1",
        "GET",
        "/x?y=1",
        "12",
        "n" * 16,
        "edge-1",
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    ]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", PATH, b'{"a": 2}'),  # tampered body
        ("POST", "/api/v1/devices/edge-2/assignment?wait=30", BODY),  # another path
        ("POST", "/api/v1/devices/edge-1/assignment?wait=31", BODY),  # another query
        ("PUT", PATH, BODY),  # another method
    ],
)
def test_any_change_breaks_the_signature(
    key: DeviceKey, method: str, path: str, body: bytes
) -> None:
    verifier = RequestVerifier(clock=Clock())
    with pytest.raises(BadRequestSignature, match="does not verify"):
        verifier.verify(key.public, signed(key), method, path, body)


def test_another_device_id_breaks_the_signature(key: DeviceKey) -> None:
    headers = sign_request(key, "edge-1", "GET", PATH, now=NOW)
    headers[DEVICE_HEADER] = "edge-2"
    forged = SignedRequest.from_headers(headers)
    assert forged is not None
    with pytest.raises(BadRequestSignature):
        RequestVerifier(clock=Clock()).verify(key.public, forged, "GET", PATH, b"")


def test_wrong_key_is_refused(key: DeviceKey) -> None:
    other = DeviceKey.generate()
    with pytest.raises(BadRequestSignature):
        RequestVerifier(clock=Clock()).verify(other.public, signed(key), "POST", PATH, BODY)


@pytest.mark.parametrize("offset", [-301.0, 301.0])
def test_clock_skew_over_300_s_is_refused(key: DeviceKey, offset: float) -> None:
    verifier = RequestVerifier(clock=Clock(NOW + offset))
    with pytest.raises(ClockSkew, match="NTP"):
        verifier.verify(key.public, signed(key), "POST", PATH, BODY)


def test_clock_skew_within_300_s_is_accepted(key: DeviceKey) -> None:
    RequestVerifier(clock=Clock(NOW + 299)).verify(key.public, signed(key), "POST", PATH, BODY)


def test_replayed_nonce_is_refused(key: DeviceKey) -> None:
    clock = Clock()
    verifier = RequestVerifier(clock=clock)
    request = signed(key)
    verifier.verify(key.public, request, "POST", PATH, BODY)
    clock.now += 10
    with pytest.raises(ReplayedRequest, match="already used"):
        verifier.verify(key.public, request, "POST", PATH, BODY)


def test_nonce_cache_is_bounded_and_forgets_old_nonces(key: DeviceKey) -> None:
    clock = Clock()
    verifier = RequestVerifier(clock=clock, max_nonces=3)
    for _ in range(5):
        headers = sign_request(key, "edge-1", "GET", PATH, now=clock.now)
        request = SignedRequest.from_headers(headers)
        assert request is not None
        verifier.verify(key.public, request, "GET", PATH, b"")
    assert len(verifier._seen) == 3
    clock.now += 601  # every nonce is past the window: the next check drops them
    headers = sign_request(key, "edge-1", "GET", PATH, now=clock.now)
    request = SignedRequest.from_headers(headers)
    assert request is not None
    verifier.verify(key.public, request, "GET", PATH, b"")
    assert len(verifier._seen) == 1


def test_headers_absent_partial_or_garbled(key: DeviceKey) -> None:
    assert SignedRequest.from_headers({}) is None
    headers = sign_request(key, "edge-1", "GET", PATH, now=NOW)
    with pytest.raises(MalformedDeviceHeaders, match="missing: X-EdgeFleet-Nonce"):
        SignedRequest.from_headers({k: v for k, v in headers.items() if k != NONCE_HEADER})
    with pytest.raises(MalformedDeviceHeaders, match="unix seconds"):
        SignedRequest.from_headers({**headers, TIME_HEADER: "soon"})
    with pytest.raises(MalformedDeviceHeaders, match="base64"):
        SignedRequest.from_headers({**headers, SIGNATURE_HEADER: "not base64!"})
    with pytest.raises(MalformedDeviceHeaders, match="URL-safe"):
        SignedRequest.from_headers({**headers, NONCE_HEADER: "short"})


def test_key_files(tmp_path: Path, key: DeviceKey) -> None:
    path = tmp_path / "device.key"
    key.save(path)
    assert path.stat().st_mode & 0o777 == 0o600
    loaded = DeviceKey.load(path)
    assert public_key_pem(loaded.public) == public_key_pem(key.public)
    assert public_key_pem(load_device_public_key(public_key_pem(key.public))) == public_key_pem(
        key.public
    )
    other_curve = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(KeyFileError, match="P-256 or Ed25519"):
        load_device_public_key(public_key_pem(other_curve))
    path.write_text("nonsense")
    with pytest.raises(KeyFileError, match="not an unencrypted PEM private key"):
        DeviceKey.load(path)


@pytest.fixture
async def echo_server() -> AsyncIterator[TestServer]:
    """A server that verifies each request's signature and answers with what it saw."""
    verifier = RequestVerifier()
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        request_signature = SignedRequest.from_headers(request.headers)
        if request_signature is None:
            return web.json_response({"signed": False})
        key = request.app[KEY]
        body = await request.read()
        verifier.verify(key.public, request_signature, request.method, request.raw_path, body)
        seen.append(request_signature.nonce)
        return web.json_response({"signed": True, "device": request_signature.device_id})

    app = web.Application()
    app[KEY] = DeviceKey.generate()
    app.router.add_route("*", "/{tail:.*}", handler)
    server = TestServer(app)
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


KEY = web.AppKey("key", DeviceKey)


async def test_client_middleware_signs_every_request(echo_server: TestServer) -> None:
    key = echo_server.app[KEY]
    signer = DeviceRequestSigner(key, "edge-1", [str(echo_server.make_url("/"))])
    async with aiohttp.ClientSession(middlewares=(signer,)) as session:
        for method, kwargs in (
            ("GET", {}),
            ("POST", {"json": {"x": [1, 2]}}),
            ("PUT", {"data": b"raw bytes"}),
        ):
            url = echo_server.make_url("/api/v1/things/a b?q=1&r=%2F")
            async with session.request(method, url, **kwargs) as response:
                assert response.status == 200, await response.text()
                assert await response.json() == {"signed": True, "device": "edge-1"}


async def test_client_middleware_leaves_other_origins_unsigned(echo_server: TestServer) -> None:
    signer = DeviceRequestSigner(echo_server.app[KEY], "edge-1", ["https://cp.example.com"])
    async with (
        aiohttp.ClientSession(middlewares=(signer,)) as session,
        session.get(echo_server.make_url("/x")) as response,
    ):
        assert await response.json() == {"signed": False}


def test_signature_header_is_standard_base64(key: DeviceKey) -> None:
    headers = sign_request(key, "edge-1", "GET", "/", now=NOW)
    assert base64.b64decode(headers[SIGNATURE_HEADER], validate=True)
