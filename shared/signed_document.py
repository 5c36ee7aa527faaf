"""The envelope of key lists and assignments: `{"signed": {...}, "signatures": [...]}`.

Each signature is `{"keyid": hex, "sig": base64}` over `canonical_json(signed)`. The envelope
itself carries no trust: `SignedDocument.parse` checks only its shape, and callers then ask
`require_signature(key, role)` for each key whose signature the document needs. A document
that lacks a signature by that key raises `UntrustedKey`; one whose signature by that key
does not verify raises `BadSignature`.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from shared.canonical import canonical_json
from shared.keys import SIGNATURE_BYTES, PrivateKey, PublicKey, short_id
from shared.strict_json import JsonFields
from shared.trust_errors import BadSignature, MalformedDocument, UntrustedKey


def sign_document(signed: Mapping[str, Any], signers: Sequence[PrivateKey]) -> bytes:
    """Return the canonical envelope of `signed` with one signature per signer."""
    if not signers:
        raise ValueError("a signed document needs at least one signer")
    payload = canonical_json(dict(signed))
    signatures = [
        {"keyid": key.public.keyid, "sig": base64.b64encode(key.sign(payload)).decode("ascii")}
        for key in signers
    ]
    return canonical_json({"signed": dict(signed), "signatures": signatures})


def encode_signature(signature: bytes) -> str:
    """Base64 text of a signature."""
    return base64.b64encode(signature).decode("ascii")


def decode_signature(text: str, where: str) -> bytes:
    """Decode a base64 signature; raise `BadSignature` when it is not 64 bytes of base64."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise BadSignature(f"{where}: the signature is not valid base64") from None
    if len(raw) != SIGNATURE_BYTES:
        raise BadSignature(f"{where}: the signature has {len(raw)} bytes, not {SIGNATURE_BYTES}")
    return raw


@dataclass(frozen=True, slots=True)
class SignedDocument:
    """A parsed envelope: the signed object, its canonical bytes, and signatures by key id."""

    what: str  # "key list", "assignment": used in messages
    signed: JsonFields
    payload: bytes
    signatures: Mapping[str, str]  # key id -> base64 signature, not yet decoded or checked

    @classmethod
    def parse(cls, document: bytes, what: str, where: str) -> SignedDocument:
        """Check the envelope's shape; `where` prefixes field paths in errors."""
        envelope = JsonFields.parse(document, where)
        signed = envelope.child("signed")
        payload = canonical_json(signed.raw)
        signatures: dict[str, str] = {}
        for entry in envelope.children("signatures"):
            keyid = entry.text("keyid")
            if keyid in signatures:
                raise MalformedDocument(f"{where}.signatures: key {short_id(keyid)} signs twice")
            signatures[keyid] = entry.text("sig")
            entry.finish()
        envelope.finish()
        return cls(what, signed, payload, signatures)

    @property
    def signer_keyids(self) -> tuple[str, ...]:
        """The key ids that claim to have signed, in document order."""
        return tuple(self.signatures)

    def require_signature(self, key: PublicKey, role: str) -> None:
        """Raise unless `key` (described by `role`, e.g. "the root key") signed the document."""
        text = self.signatures.get(key.keyid)
        if text is None:
            signers = ", ".join(short_id(k) for k in self.signatures) or "nobody"
            raise UntrustedKey(
                f"{self.what} is not signed by {role} {short_id(key.keyid)} (signed by {signers})"
            )
        signature = decode_signature(text, f"{self.what} signature by {short_id(key.keyid)}")
        if not key.verify(signature, self.payload):
            raise BadSignature(
                f"{self.what}: the signature by {role} {short_id(key.keyid)} does not verify"
            )
