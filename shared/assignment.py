"""Assignment documents: what one device should run, signed by an assignment key.

    {"signed": {"type": "edgefleet-assignment/1", "device_id", "serial", "issued_at",
                "expires_at", "models": [{"name", "version", "digest", "url", "size"}]},
     "signatures": [{"keyid", "sig"}]}

`verify_assignment` checks, in order: the envelope's shape; a signature by an assignment key
of the trusted key list (`UntrustedKey` for an unknown key or one dropped by rotation,
`BadSignature`); the fields (`MalformedDocument`); the device (`WrongDevice`); the serial,
which must be above the last one accepted (`ReplayedAssignment`, also for an equal serial);
the expiry (`ExpiredAssignment` when `now >= expires_at`, so a stale document cannot freeze a
device on old versions). `check_bundle_matches` then ties a downloaded bundle to its entry
(`DigestMismatch` for a mix-and-match, `ManifestMismatch` for another name or version).
An operator rollback is an ordinary assignment: a higher serial naming an older bundle.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

from shared.bundle import VerifiedBundle
from shared.keylist import TrustStore
from shared.keys import PrivateKey
from shared.manifest import MODEL_NAME
from shared.signed_document import SignedDocument, sign_document
from shared.strict_json import HEX_SHA256, JsonFields
from shared.trust_errors import (
    DigestMismatch,
    ExpiredAssignment,
    ManifestMismatch,
    ReplayedAssignment,
    UntrustedKey,
    WrongDevice,
)

ASSIGNMENT_TYPE = "edgefleet-assignment/1"
_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


@dataclass(frozen=True, slots=True)
class ModelAssignment:
    """One model a device should run: the bundle's name, version, digest, URL and size."""

    name: str
    version: int
    digest: str  # SHA-256 hex of the bundle archive
    url: str
    size: int  # of the archive in bytes; 0 = not known, not checked


@dataclass(frozen=True, slots=True)
class Assignment:
    """Everything one device should run, as of one serial number, until it expires."""

    device_id: str
    serial: int
    issued_at: float
    expires_at: float
    models: tuple[ModelAssignment, ...]

    def model(self, name: str) -> ModelAssignment | None:
        """The entry for a model name, or None."""
        return next((m for m in self.models if m.name == name), None)

    def as_json(self) -> dict[str, object]:
        """Return the `signed` object of the assignment document."""
        return {
            "type": ASSIGNMENT_TYPE,
            "device_id": self.device_id,
            "serial": self.serial,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "models": [asdict(model) for model in self.models],
        }

    @classmethod
    def from_json(cls, fields: JsonFields) -> Assignment:
        """Read the `signed` object; raise `MalformedDocument` naming the field at fault."""
        if fields.text("type") != ASSIGNMENT_TYPE:
            fields.fail("type", f"expected {ASSIGNMENT_TYPE!r}")
        models = tuple(_model(item) for item in fields.children("models"))
        if len({m.name for m in models}) != len(models):
            fields.fail("models", "a model is named twice")
        assignment = cls(
            device_id=fields.text("device_id", _DEVICE_ID, "a device id"),
            serial=fields.integer("serial", minimum=0),
            issued_at=fields.number("issued_at", minimum=0),
            expires_at=fields.number("expires_at", minimum=0),
            models=models,
        )
        if assignment.expires_at <= assignment.issued_at:
            fields.fail("expires_at", "not after issued_at")
        fields.finish()
        return assignment


def _model(fields: JsonFields) -> ModelAssignment:
    model = ModelAssignment(
        name=fields.text("name", MODEL_NAME, "a model name"),
        version=fields.integer("version", minimum=1),
        digest=fields.text("digest", HEX_SHA256, "64 lowercase hex characters"),
        url=fields.text("url"),
        size=fields.integer("size", minimum=0),
    )
    fields.finish()
    return model


def sign_assignment(assignment: Assignment, key: PrivateKey) -> bytes:
    """Return the signed assignment document (canonical JSON)."""
    return sign_document(assignment.as_json(), [key])


def verify_assignment(
    document: bytes, trust: TrustStore, *, device_id: str, last_serial: int, now: float
) -> Assignment:
    """Check an assignment for this device; raise the `TrustError` that says what is wrong."""
    envelope = SignedDocument.parse(document, "assignment", "assignment")
    signers = envelope.signer_keyids
    if not signers:
        raise UntrustedKey("assignment carries no signature")
    listed = {key.keyid for key in trust.key_list.assignment_keys}
    trusted = [keyid for keyid in signers if keyid in listed]
    # With no listed signer, the store's error says why the first one is not trusted
    # (unknown, another role, or dropped by a rotation).
    key = trust.assignment_key(trusted[0] if trusted else signers[0])
    envelope.require_signature(key, "assignment key")
    assignment = Assignment.from_json(envelope.signed)
    if assignment.device_id != device_id:
        raise WrongDevice(
            f"assignment serial {assignment.serial} is for device {assignment.device_id!r}, "
            f"not {device_id!r}"
        )
    if assignment.serial <= last_serial:
        raise ReplayedAssignment(
            f"assignment serial {assignment.serial} is not above the last accepted serial "
            f"{last_serial}"
        )
    if now >= assignment.expires_at:
        raise ExpiredAssignment(
            f"assignment serial {assignment.serial} expired {now - assignment.expires_at:.0f} s "
            f"ago (expires_at {assignment.expires_at:.0f}, now {now:.0f})"
        )
    return assignment


def check_bundle_matches(assignment_model: ModelAssignment, bundle: VerifiedBundle) -> None:
    """Raise unless the bundle is the one the assignment names (digest, size, name, version)."""
    wanted = assignment_model
    if bundle.digest != wanted.digest:
        raise DigestMismatch(
            f"{wanted.name} version {wanted.version} is assigned as bundle sha256 "
            f"{wanted.digest[:16]}, but this bundle's sha256 is {bundle.digest[:16]}"
        )
    if wanted.size and bundle.size != wanted.size:
        raise DigestMismatch(
            f"{wanted.name} version {wanted.version} is assigned with {wanted.size} bytes, "
            f"but this bundle has {bundle.size}"
        )
    manifest = bundle.manifest
    if (manifest.name, manifest.version) != (wanted.name, wanted.version):
        raise ManifestMismatch(
            f"the assignment names {wanted.name} version {wanted.version}, but bundle "
            f"{bundle.digest[:16]} holds {manifest.name} version {manifest.version}"
        )
