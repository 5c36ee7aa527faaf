"""Ed25519 keys: signing, verifying, and the files they live in.

A key is named by its key id: the lowercase hex SHA-256 of the raw 32-byte public key (all 64
characters; messages print the first 16). Private keys are stored as PKCS#8 PEM, encrypted
with a passphrase when one is given (`BestAvailableEncryption`), written atomically and created
with mode 0600. Public keys are stored as SubjectPublicKeyInfo PEM (`*.pub`), readable by
`openssl pkey -pubin`. Errors from `cryptography` are translated into `KeyFileError` here.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from shared.atomic import PRIVATE, PUBLIC, write_atomic
from shared.strict_json import JsonFields
from shared.trust_errors import KeyFileError, MalformedDocument

KEY_TYPE = "ed25519"
RAW_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def short_id(keyid: str) -> str:
    """The first 16 hex characters of a key id, as messages print it."""
    return keyid[:16]


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An Ed25519 public key and its key id (hex SHA-256 of the raw key)."""

    raw: bytes
    keyid: str = field(init=False)

    def __post_init__(self) -> None:
        if len(self.raw) != RAW_KEY_BYTES:
            raise ValueError(f"an Ed25519 public key has 32 bytes, not {len(self.raw)}")
        object.__setattr__(self, "keyid", hashlib.sha256(self.raw).hexdigest())

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Return True when `signature` is this key's signature of `data`."""
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def as_json(self) -> dict[str, str]:
        """Return `{"keyid", "keytype": "ed25519", "public": hex}`."""
        return {"keyid": self.keyid, "keytype": KEY_TYPE, "public": self.raw.hex()}

    @classmethod
    def from_json(cls, data: object, where: str = "key") -> PublicKey:
        """Read `as_json` output; the key id must match the key."""
        fields = JsonFields(data, where)
        keyid = fields.text("keyid")
        if fields.text("keytype") != KEY_TYPE:
            fields.fail("keytype", f"expected {KEY_TYPE!r}")
        public = fields.text("public")
        fields.finish()
        try:
            key = cls(bytes.fromhex(public))
        except ValueError:
            raise MalformedDocument(f"{where}.public: not 32 bytes of hex") from None
        if key.keyid != keyid:
            raise MalformedDocument(
                f"{where}.keyid: {short_id(keyid)} is not the id of the key it names "
                f"({short_id(key.keyid)})"
            )
        return key

    def to_pem(self) -> bytes:
        """Return the key as SubjectPublicKeyInfo PEM."""
        return Ed25519PublicKey.from_public_bytes(self.raw).public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@dataclass(frozen=True, slots=True)
class PrivateKey:
    """An Ed25519 private key; its repr shows only the key id."""

    _key: Ed25519PrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> PrivateKey:
        """Return a new random key."""
        return cls(Ed25519PrivateKey.generate())

    @property
    def public(self) -> PublicKey:
        """The matching public key."""
        raw = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return PublicKey(raw)

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte Ed25519 signature of `data`."""
        return self._key.sign(data)

    def save(self, path: Path, passphrase: bytes | None = None) -> None:
        """Write the key as PKCS#8 PEM (encrypted when a passphrase is given), mode 0600."""
        encryption: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase)
            if passphrase
            else serialization.NoEncryption()
        )
        pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
        )
        write_atomic(path, pem, PRIVATE)

    @classmethod
    def load(cls, path: Path, passphrase: bytes | None = None) -> PrivateKey:
        """Read a key written by `save`; raise `KeyFileError` saying what is wrong."""
        pem = _read(path)
        if b"-----BEGIN PUBLIC KEY-----" in pem:
            raise KeyFileError(f"{path}: holds a public key, not a private key")
        encrypted = b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in pem
        if not encrypted and b"-----BEGIN PRIVATE KEY-----" not in pem:
            raise KeyFileError(f"{path}: not a PKCS#8 PEM private key")
        if encrypted and not passphrase:
            raise KeyFileError(f"{path}: the key is encrypted; a passphrase is needed")
        if not encrypted and passphrase:
            raise KeyFileError(f"{path}: the key is not encrypted, but a passphrase was given")
        try:
            key = serialization.load_pem_private_key(pem, passphrase or None)
        except ValueError:
            reason = "wrong passphrase, or the file is corrupt" if encrypted else "corrupt key"
            raise KeyFileError(f"{path}: {reason}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFileError(f"{path}: holds a {type(key).__name__}, not an Ed25519 key")
        return cls(key)


def save_public(path: Path, key: PublicKey) -> None:
    """Write a public key as PEM, atomically."""
    write_atomic(path, key.to_pem(), PUBLIC)


def load_public(path: Path) -> PublicKey:
    """Read a public key written by `save_public`; raise `KeyFileError` if it is not one."""
    return public_from_pem(_read(path), str(path))


def public_from_pem(pem: bytes, where: str = "public key") -> PublicKey:
    """An Ed25519 public key from PEM bytes (`root.pub`); `KeyFileError` naming `where`."""
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        raise KeyFileError(f"{where}: not a PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{where}: holds a {type(key).__name__}, not an Ed25519 key")
    return PublicKey(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
