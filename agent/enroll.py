"""`edgefleet agent enroll`: make this device's key, get it certified, and pin the trust root.

The key is made here and never leaves the device; the control plane sees only a CSR. Nothing is
written until the answer checks out: the certificate is for this key and device and issued by
the CA it came with, and the key list is signed by the root key. That root key is `--root-key`
when given (a different one in the answer refuses the enrollment), else the one in the answer,
pinned on first use. Files and modes are listed in `agent.identity`.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
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


async def enroll(
    options: EnrollOptions,
    progress: Callable[[str], None],
    session: aiohttp.ClientSession | None = None,
) -> Identity:
    """Enroll with the control plane and store the identity; `EnrollmentError` on any refusal."""
    files = IdentityFiles(options.state_dir)
    existing = await asyncio.to_thread(load_identity, options.state_dir)
    if existing is not None and not options.force:
        raise EnrollmentError(
            f"{files.identity_json} exists: this state directory is enrolled as "
            f"{existing.device_id}; pass --force to replace that identity"
        )
    pinned = await asyncio.to_thread(_pinned_root, options, files)
    key = await asyncio.to_thread(DeviceKey.generate)
    progress(f"made a P-256 key; asking {options.cp_url} to enroll {options.device_id} ...")
    answer = await _post(options, key, session)
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
    await asyncio.to_thread(_store, files, key, answer, trust, root, identity)
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


async def _post(
    options: EnrollOptions, key: DeviceKey, session: aiohttp.ClientSession | None
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
            async with aiohttp.ClientSession(timeout=timeout) as own:
                return await _send(own, url, body)
        return await _send(session, url, body)
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
) -> None:
    """Write the identity (blocking); identity.json last, so it exists only when all is there."""
    files.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(files.directory, 0o700)
    key.save(files.key)
    write_atomic(files.certificate, answer["certificate"].encode(), PRIVATE)
    write_atomic(files.ca_certificate, answer["ca_certificate"].encode(), PRIVATE)
    write_atomic(files.root_key, root.to_pem(), PRIVATE)
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
