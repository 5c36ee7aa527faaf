"""A device's own key pair: made on the device, never leaves it, named in its certificate.

Devices use ECDSA P-256 (what every TLS stack, Mosquitto included, accepts for client
certificates). Ed25519 device keys are accepted too, for fleets that make their own keys.
The private key is stored as unencrypted PKCS#8 PEM with mode 0600 (the MQTT client and the
request signer read it unattended at every start); the certificate signing request (CSR)
carries the device id as its subject common name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from shared.atomic import PRIVATE, write_atomic
from shared.trust_errors import KeyFileError

DevicePrivateKey = ec.EllipticCurvePrivateKey | Ed25519PrivateKey
DevicePublicKey = ec.EllipticCurvePublicKey | Ed25519PublicKey
CURVE = ec.SECP256R1


def check_device_public_key(key: object, where: str) -> DevicePublicKey:
    """`key` when it is a P-256 or Ed25519 public key; `KeyFileError` naming `where` otherwise."""
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, CURVE):
        return key
    if isinstance(key, Ed25519PublicKey):
        return key
    kind = getattr(getattr(key, "curve", None), "name", None) or type(key).__name__
    raise KeyFileError(f"{where}: a {kind} key; device keys must be ECDSA P-256 or Ed25519")


def load_device_public_key(pem: bytes | str, where: str = "public key") -> DevicePublicKey:
    """Read a SubjectPublicKeyInfo PEM public key of a device; `KeyFileError` if unusable."""
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        raise KeyFileError(f"{where}: not a PEM public key") from None
    return check_device_public_key(key, where)


def public_key_pem(key: DevicePublicKey) -> str:
    """The public key as SubjectPublicKeyInfo PEM text."""
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


@dataclass(frozen=True, slots=True)
class DeviceKey:
    """A device's private key; its repr never shows the key."""

    key: DevicePrivateKey = field(repr=False)

    @classmethod
    def generate(cls) -> DeviceKey:
        """A new random ECDSA P-256 key."""
        return cls(ec.generate_private_key(CURVE()))

    @property
    def public(self) -> DevicePublicKey:
        """The matching public key."""
        return self.key.public_key()

    def sign(self, data: bytes) -> bytes:
        """ECDSA-SHA256 (DER) for a P-256 key, plain Ed25519 for an Ed25519 key."""
        if isinstance(self.key, Ed25519PrivateKey):
            return self.key.sign(data)
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def to_pem(self) -> bytes:
        """The key as unencrypted PKCS#8 PEM."""
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def save(self, path: Path) -> None:
        """Write the key atomically with mode 0600 (blocking)."""
        write_atomic(path, self.to_pem(), PRIVATE)

    @classmethod
    def load(cls, path: Path) -> DeviceKey:
        """Read a key written by `save` (blocking); `KeyFileError` saying what is wrong."""
        try:
            pem = path.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{path}: cannot read: {exc.strerror or exc}") from None
        try:
            key = serialization.load_pem_private_key(pem, None)
        except (TypeError, ValueError):
            raise KeyFileError(f"{path}: not an unencrypted PEM private key") from None
        if isinstance(key, Ed25519PrivateKey):
            return cls(key)
        if isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, CURVE):
            return cls(key)
        raise KeyFileError(f"{path}: device keys must be ECDSA P-256 or Ed25519")

    def csr(self, device_id: str) -> bytes:
        """A PEM certificate signing request whose subject common name is `device_id`."""
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
        builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
        algorithm = None if isinstance(self.key, Ed25519PrivateKey) else hashes.SHA256()
        return builder.sign(self.key, algorithm).public_bytes(serialization.Encoding.PEM)
