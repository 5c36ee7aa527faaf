"""The control plane's certificate authority: device certificates and their revocation list.

    <data_dir>/ca/ca.key    the CA's ECDSA P-256 private key, 0600 (directory 0700)
    <data_dir>/ca/ca.crt    its self-signed certificate: CA:TRUE, pathlen 0, about 10 years
    <data_dir>/ca/crl.pem   the revoked device certificates, rewritten on every revocation;
                            point Mosquitto's `crlfile` (with `require_certificate true` and
                            `cafile` = ca.crt) at it

The CA is made on the first start and loaded on later ones. Several replicas must share the
directory (or be given copies of one ca.key/ca.crt), or each would run its own CA. Everything
here is blocking (file I/O, signing): callers run it in a thread.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control_plane.errors import CertificateAuthorityError, InvalidCsr
from shared.atomic import PRIVATE, PUBLIC, write_atomic

CA_DIRECTORY = "ca"
CA_KEY = "ca.key"
CA_CERT = "ca.crt"
CRL_FILE = "crl.pem"
CA_DAYS = 3650
CRL_DAYS = 3650  # an expired CRL makes OpenSSL refuse every client; it is rewritten anyway
CLOCK_SLACK = timedelta(minutes=5)  # not-before in the past, for devices slightly behind
DEVICE_URN = "urn:edgefleet:device:"


@dataclass(frozen=True, slots=True)
class IssuedCertificate:
    """A certificate the CA signed: serial (hex), expiry and the PEM text."""

    serial: str
    not_after: datetime
    pem: str


@dataclass(frozen=True)
class CertificateAuthority:
    """The CA key and certificate, and the directory that holds them and the CRL."""

    directory: Path
    key: ec.EllipticCurvePrivateKey = field(repr=False)
    certificate: x509.Certificate

    @property
    def certificate_pem(self) -> str:
        """The CA certificate as PEM text (what devices and the broker trust)."""
        return self.certificate.public_bytes(serialization.Encoding.PEM).decode()

    @property
    def crl_path(self) -> Path:
        """Where the certificate revocation list is written."""
        return self.directory / CRL_FILE

    @classmethod
    def load_or_create(cls, directory: Path, now: datetime) -> CertificateAuthority:
        """Load the CA in `directory`, making it (and an empty CRL) first if it has none."""
        key_file, cert_file = directory / CA_KEY, directory / CA_CERT
        if not key_file.exists() and not cert_file.exists():
            return cls._create(directory, now)
        try:
            key = serialization.load_pem_private_key(key_file.read_bytes(), None)
            certificate = x509.load_pem_x509_certificate(cert_file.read_bytes())
        except (OSError, ValueError, TypeError) as error:
            raise CertificateAuthorityError(
                f"cannot load the CA from {directory}: {error}; restore ca.key and ca.crt "
                "from a backup (or remove both to make a new CA, then re-enroll every device)"
            ) from None
        cert_public = certificate.public_key()
        if (
            not isinstance(key, ec.EllipticCurvePrivateKey)
            or not isinstance(cert_public, ec.EllipticCurvePublicKey)
            or key.public_key().public_numbers() != cert_public.public_numbers()
        ):
            raise CertificateAuthorityError(
                f"{key_file} is not the key of {cert_file}; restore the matching pair"
            )
        return cls(directory, key, certificate)

    @classmethod
    def _create(cls, directory: Path, now: datetime) -> CertificateAuthority:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "EdgeFleet"),
                x509.NameAttribute(NameOID.COMMON_NAME, "EdgeFleet device CA"),
            ]
        )
        public = key.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SLACK)
            .not_valid_after(now + timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(cert_sign=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .sign(key, hashes.SHA256())
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(directory / CA_KEY, pem, PRIVATE)
        ca = cls(directory, key, certificate)
        write_atomic(directory / CA_CERT, ca.certificate_pem.encode(), PUBLIC)
        ca.write_crl((), now)
        return ca

    def issue(self, csr_pem: str, device_id: str, days: int, now: datetime) -> IssuedCertificate:
        """Sign a device's CSR: CN and SAN name the device, client authentication only."""
        csr = check_csr(csr_pem, device_id)
        public = csr.public_key()
        serial = secrets.randbits(159) | 1 << 158  # positive, 20 bytes at most, never zero
        not_after = now + timedelta(days=days)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)]))
            .issuer_name(self.certificate.subject)
            .public_key(public)
            .serial_number(serial)
            .not_valid_before(now - CLOCK_SLACK)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(DEVICE_URN + device_id)]
                ),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(self._authority_key_id(), critical=False)
            .sign(self.key, hashes.SHA256())
        )
        pem = certificate.public_bytes(serialization.Encoding.PEM).decode()
        return IssuedCertificate(format(serial, "x"), not_after.replace(microsecond=0), pem)

    def write_crl(self, revoked: Iterable[tuple[str, datetime]], now: datetime) -> None:
        """Rewrite crl.pem atomically with every (serial hex, revoked at) given."""
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.certificate.subject)
            .last_update(now - CLOCK_SLACK)
            .next_update(now + timedelta(days=CRL_DAYS))
            .add_extension(x509.CRLNumber(int(now.timestamp() * 1000)), critical=False)
            .add_extension(self._authority_key_id(), critical=False)
        )
        for serial, when in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(int(serial, 16))
                .revocation_date(when)
                .build()
            )
        crl = builder.sign(self.key, hashes.SHA256())
        write_atomic(self.crl_path, crl.public_bytes(serialization.Encoding.PEM), PUBLIC)

    def _authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())


def check_csr(csr_pem: str, device_id: str) -> x509.CertificateSigningRequest:
    """The parsed CSR if it is well signed, P-256 or Ed25519, and names `device_id`."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError:
        raise InvalidCsr("csr is not a PEM certificate signing request") from None
    if not csr.is_signature_valid:
        raise InvalidCsr("the CSR's signature does not verify; make it again with the device key")
    public = csr.public_key()
    if not (
        isinstance(public, Ed25519PublicKey)
        or (
            isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)
        )
    ):
        kind = getattr(getattr(public, "curve", None), "name", None) or type(public).__name__
        raise InvalidCsr(f"the CSR holds a {kind} key; device keys must be ECDSA P-256 or Ed25519")
    names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = names[0].value if len(names) == 1 else None
    if common_name != device_id:
        raise InvalidCsr(
            f"the CSR's common name is {common_name!r}, not the enrolling device id "
            f"{device_id!r}; make the CSR with CN={device_id}"
        )
    return csr


def _key_usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
