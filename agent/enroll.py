"""`edgefleet agent enroll`: make this device's key, get it certified, and pin the trust root.

The key is made here and never leaves the device; the control plane sees only a CSR. Nothing is
written until the answer checks out: the certificate is for this key and device and issued by
the CA it came with, and the key list is signed by the root key. That root key is `--root-key`
when given (a different one in the answer refuses the enrollment), else the one in the answer,
pinned on first use. Files and modes are listed in `agent.identity`.

The control plane is reached over HTTPS; `--cp-ca` names the CA certificates its certificate
chains to when that is a private CA (kept as identity/cp-ca.crt for `agent run`; re-enrolling
without it keeps using the stored one). A plain http:// URL is refused unless its host is
loopback or `--allow-plain-transport` is given (`shared.tls`).
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import NameOID

from agent.errors import AgentError
from agent.identity import Identity, IdentityFiles, load_identity
from shared.atomic import PRIVATE, write_atomic
from shared.device_key import DeviceKey
from shared.errors import EdgeFleetError
from shared.keylist import SignedKeyList, TrustStore
from shared.keys import PublicKey, load_public, short_id
from shared.tls import TlsFileError, client_context, is_plain_remote

ENROLL_PATH = "/api/v1/enroll"
TIMEOUT_S = 60.0
_ANSWER_FIELDS = ("device_id", "certificate", "ca_certificate", "root_key", "keylist")


class EnrollmentError(AgentError):
    """Enrollment failed; the message says why and what to do next."""


@dataclass(frozen=True, slots=True)
class EnrollOptions:
    """What `agent enroll` was asked to do."""

    cp_url: str
    token: str
    state_dir: Path
    device_id: str
    root_key: Path | None = None
    force: bool = False
    cp_ca: Path | None = None  # the CA certificates of the control plane's HTTPS (PEM)
    allow_plain_transport: bool = False  # accept http:// to a host that is not loopback


async def enroll(
    options: EnrollOptions,
    progress: Callable[[str], None],
    session: aiohttp.ClientSession | None = None,
) -> Identity:
    """Enroll with the control plane and store the identity; `EnrollmentError` on any refusal.

    `session` (tests) replaces the one made here, and with it the TLS settings of `cp_ca`.
    """
    if is_plain_remote(options.cp_url) and not options.allow_plain_transport:
        raise EnrollmentError(
            f"--cp {options.cp_url} is plain HTTP to a host that is not loopback: give the "
            "control plane's https:// URL (with --cp-ca FILE when its certificate comes from a "
            "private CA), or pass --allow-plain-transport, only on a network you trust; "
            "nothing was written"
        )
    files = IdentityFiles(options.state_dir)
    existing = await asyncio.to_thread(load_identity, options.state_dir)
    if existing is not None and not options.force:
        raise EnrollmentError(
            f"{files.identity_json} exists: this state directory is enrolled as "
            f"{existing.device_id}; pass --force to replace that identity"
        )
    pinned = await asyncio.to_thread(_pinned_root, options, files)
    cp_ca = await asyncio.to_thread(_cp_ca, options, files)
    tls = _tls(cp_ca)
    key = await asyncio.to_thread(DeviceKey.generate)
    progress(f"made a P-256 key; asking {options.cp_url} to enroll {options.device_id} ...")
    answer = await _post(options, key, session, tls)
    trust, certificate, root = _check_answer(answer, options, key, pinned)
    if pinned is None:
        progress(
            f"trust on first use: pinned the control plane's root key "
            f"{root.keyid} (compare it with the root id `edgefleet keys init` "
            "printed; pass --root-key to pin it in advance)"
        )
    identity = Identity(
        device_id=options.device_id,
        api_url=_text(answer, "api_url"),
        assignment_url=_text(answer, "assignment_url"),
        mqtt_url=answer.get("mqtt_url") or None,
        groups=tuple(answer.get("groups") or ()),
        labels=dict(answer.get("labels") or {}),
        region=answer.get("region") if isinstance(answer.get("region"), str) else None,
        enrolled_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    await asyncio.to_thread(_store, files, key, answer, trust, root, identity, cp_ca)
    serial = format(certificate.serial_number, "x")
    progress(f"enrolled as {identity.device_id} (certificate {serial[:16]}...)")
    progress(f"identity written to {files.identity_json} and {files.directory}/")
    return identity


def _pinned_root(options: EnrollOptions, files: IdentityFiles) -> PublicKey | None:
    """--root-key, else (re-enrolling) the root already pinned in the state dir, else None."""
    path = options.root_key
    if path is None and options.force and files.root_key.is_file():
        path = files.root_key
    if path is None:
        return None
    try:
        return load_public(path)
    except EdgeFleetError as error:
        raise EnrollmentError(f"cannot use the root key: {error}") from None


def _cp_ca(options: EnrollOptions, files: IdentityFiles) -> bytes | None:
    """--cp-ca's bytes, else (re-enrolling) the CA stored by the last enrollment, else None."""
    path = options.cp_ca
    if path is None and options.force and files.cp_ca_certificate.is_file():
        path = files.cp_ca_certificate
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise EnrollmentError(f"cannot read --cp-ca {path}: {error.strerror}") from None


def _tls(cp_ca: bytes | None) -> ssl.SSLContext | None:
    """The context checking the control plane's certificate against `cp_ca` (None: system's)."""
    if cp_ca is None:
        return None
    try:
        return client_context(ca_pem=cp_ca)
    except TlsFileError as error:
        raise EnrollmentError(f"--cp-ca: {error}; nothing was written") from None


async def _post(
    options: EnrollOptions,
    key: DeviceKey,
    session: aiohttp.ClientSession | None,
    tls: ssl.SSLContext | None,
) -> dict[str, Any]:
    url = options.cp_url.rstrip("/") + ENROLL_PATH
    body = {
        "token": options.token,
        "device_id": options.device_id,
        "csr": key.csr(options.device_id).decode(),
        "hardware": _hardware(),
    }
    timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
    try:
        if session is None:
            connector = aiohttp.TCPConnector(ssl=tls if tls is not None else True)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as own:
                return await _send(own, url, body)
        return await _send(session, url, body)
    except aiohttp.ClientConnectorCertificateError as error:
        raise EnrollmentError(
            f"the control plane at {url} presented a certificate this device does not trust "
            f"({_verify_message(error)}): if it comes from a private CA, pass that CA's "
            "certificate with --cp-ca FILE; nothing was written"
        ) from None
    except aiohttp.ClientSSLError as error:
        raise EnrollmentError(
            f"TLS with the control plane at {url} failed ({error}): does --cp name its https:// "
            "URL? nothing was written"
        ) from None
    except (aiohttp.ClientError, TimeoutError) as error:
        raise EnrollmentError(
            f"cannot reach the control plane at {url}: {error or type(error).__name__}; check "
            "--cp and the network and retry (a token is only spent by a successful enrollment)"
        ) from None


async def _send(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> dict[str, Any]:
    async with session.post(url, json=body) as response:
        try:
            answer = await response.json(content_type=None)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise EnrollmentError(
                f"{url} answered {response.status} without a JSON object; is --cp the control "
                "plane's URL?"
            )
        if response.status in (200, 201):
            return answer
        message = str(answer.get("error", answer))
        raise EnrollmentError(_refusal(response.status, message))


def _verify_message(error: aiohttp.ClientConnectorCertificateError) -> str:
    """OpenSSL's reason ("unable to get local issuer certificate"), else the whole error."""
    reason = getattr(error.certificate_error, "verify_message", "")
    return str(reason or error.certificate_error)


def _refusal(status: int, message: str) -> str:
    if status == 401:
        return f"the control plane refused the enrollment token: {message}"
    if status == 409:
        return f"the control plane refused: {message}"
    if status == 400:
        return f"the control plane refused the request: {message}"
    if status == 503:
        return f"the control plane cannot enroll devices now: {message}"
    return f"enrollment failed with HTTP {status}: {message}"


def _check_answer(
    answer: dict[str, Any], options: EnrollOptions, key: DeviceKey, pinned: PublicKey | None
) -> tuple[TrustStore, x509.Certificate, PublicKey]:
    """Verify what came back; `EnrollmentError` (and nothing written) if anything is off."""
    for name in _ANSWER_FIELDS:
        _text(answer, name)
    nothing = "nothing was written"
    revoke_first = (
        f"the control plane has enrolled {options.device_id} already, so an admin must revoke it "
        "before this device enrolls again"
    )
    root = _root_key(answer["root_key"])
    if pinned is not None and root != pinned:
        raise EnrollmentError(
            f"the control plane's root key {short_id(root.keyid)} is not the pinned root key "
            f"{short_id(pinned.keyid)}: either --root-key is wrong or this is not your control "
            f"plane; {nothing}; {revoke_first}"
        )
    try:
        trust = TrustStore.bootstrap(pinned or root, answer["keylist"].encode())
        certificate = x509.load_pem_x509_certificate(answer["certificate"].encode())
        ca = x509.load_pem_x509_certificate(answer["ca_certificate"].encode())
        certificate.verify_directly_issued_by(ca)
    except (EdgeFleetError, ValueError, TypeError) as error:
        raise EnrollmentError(
            f"the control plane's answer does not check out ({error}); {nothing}; {revoke_first}"
        ) from None
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if certificate.public_key() != key.public or [n.value for n in names] != [options.device_id]:
        raise EnrollmentError(
            f"the certificate is not for this key and device {options.device_id}; {nothing}"
        )
    return trust, certificate, pinned or root


def _root_key(pem: str) -> PublicKey:
    try:
        key = serialization.load_pem_public_key(pem.encode())
    except ValueError:
        raise EnrollmentError("the control plane's root_key is not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise EnrollmentError("the control plane's root_key is not an Ed25519 key")
    return PublicKey(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _text(answer: dict[str, Any], name: str) -> str:
    value = answer.get(name)
    if not isinstance(value, str) or not value:
        raise EnrollmentError(f"the control plane's answer has no {name}; nothing was written")
    return value


def _store(
    files: IdentityFiles,
    key: DeviceKey,
    answer: dict[str, Any],
    trust: TrustStore,
    root: PublicKey,
    identity: Identity,
    cp_ca: bytes | None,
) -> None:
    """Write the identity (blocking); identity.json last, so it exists only when all is there."""
    files.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(files.directory, 0o700)
    key.save(files.key)
    write_atomic(files.certificate, answer["certificate"].encode(), PRIVATE)
    write_atomic(files.ca_certificate, answer["ca_certificate"].encode(), PRIVATE)
    write_atomic(files.root_key, root.to_pem(), PRIVATE)
    if cp_ca is not None:
        write_atomic(files.cp_ca_certificate, cp_ca, PRIVATE)
    if not _keeps_newer_keylist(files.keylist, trust):
        write_atomic(files.keylist, trust.to_document(), PRIVATE)
    document = json_bytes(identity.as_json())
    write_atomic(files.identity_json, document, PRIVATE)


def _keeps_newer_keylist(path: Path, trust: TrustStore) -> bool:
    """Whether an already trusted key list (re-enrolling) is newer: never roll it back."""
    try:
        kept = SignedKeyList.parse(path.read_bytes())
    except (OSError, EdgeFleetError):
        return False
    return kept.key_list.version > trust.key_list.version


def json_bytes(document: dict[str, Any]) -> bytes:
    """identity.json's bytes: indented for people reading it."""
    return (json.dumps(document, indent=2, sort_keys=True) + "\n").encode()


def _hardware() -> dict[str, Any]:
    """A first inventory line the control plane shows until the agent's status reports more."""
    return {
        "hostname": platform.node(),
        "system": platform.system(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
    }
