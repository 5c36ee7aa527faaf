"""The control plane's CA: made once, device certificates as OpenSSL sees them, and the CRL."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from control_plane.ca import CA_CERT, CA_KEY, CRL_FILE, CertificateAuthority
from control_plane.errors import CertificateAuthorityError, InvalidCsr
from shared.device_key import DeviceKey

NOW = datetime(2026, 12, 1, tzinfo=UTC)
DER = serialization.Encoding.DER


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.load_or_create(tmp_path / "ca", NOW)


def test_made_once_with_private_modes_then_loaded(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    made = CertificateAuthority.load_or_create(directory, NOW)
    assert directory.stat().st_mode & 0o777 == 0o700
    assert (directory / CA_KEY).stat().st_mode & 0o777 == 0o600
    assert (directory / CRL_FILE).is_file()
    loaded = CertificateAuthority.load_or_create(directory, NOW + timedelta(days=1))
    assert loaded.certificate == made.certificate
    constraints = made.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert (constraints.value.ca, constraints.value.path_length) == (True, 0)
    lifetime = made.certificate.not_valid_after_utc - made.certificate.not_valid_before_utc
    assert lifetime > timedelta(days=3649)


def test_a_key_that_is_not_the_certificates_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "ca"
    CertificateAuthority.load_or_create(directory, NOW)
    other = CertificateAuthority.load_or_create(tmp_path / "other", NOW)
    shutil.copy(tmp_path / "other" / CA_KEY, directory / CA_KEY)
    with pytest.raises(CertificateAuthorityError, match="not the key of"):
        CertificateAuthority.load_or_create(directory, NOW)
    (directory / CA_CERT).write_text("garbage")
    with pytest.raises(CertificateAuthorityError, match="restore"):
        CertificateAuthority.load_or_create(directory, NOW)
    assert other.certificate_pem.startswith("-----BEGIN CERTIFICATE-----")


def test_issued_certificate_names_the_device_for_client_auth(ca: CertificateAuthority) -> None:
    key = DeviceKey.generate()
    issued = ca.issue(key.csr("edge-1").decode(), "edge-1", 365, NOW)
    certificate = x509.load_pem_x509_certificate(issued.pem.encode())
    certificate.verify_directly_issued_by(ca.certificate)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "edge-1"
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        "urn:edgefleet:device:edge-1"
    ]
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certificate.not_valid_after_utc == NOW + timedelta(days=365)
    assert int(issued.serial, 16) == certificate.serial_number
    assert certificate.public_key() == key.public


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_verifies_for_tls_clients_and_honours_the_crl(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    ca = CertificateAuthority.load_or_create(tmp_path / "ca", now)
    issued = ca.issue(DeviceKey.generate().csr("edge-1").decode(), "edge-1", 30, now)
    device = tmp_path / "device.crt"
    device.write_text(issued.pem)
    ca_file = ca.directory / CA_CERT
    command = ["openssl", "verify", "-CAfile", str(ca_file), "-purpose", "sslclient"]
    assert subprocess.run([*command, str(device)], capture_output=True).returncode == 0
    with_crl = [*command, "-crl_check", "-CRLfile", str(ca.crl_path), str(device)]
    assert subprocess.run(with_crl, capture_output=True).returncode == 0
    ca.write_crl([(issued.serial, now)], now)
    refused = subprocess.run(with_crl, capture_output=True, text=True)
    assert refused.returncode != 0
    assert "revoked" in refused.stdout + refused.stderr


def test_crl_lists_the_revoked_serials(ca: CertificateAuthority) -> None:
    serials = [
        ca.issue(DeviceKey.generate().csr(f"d{i}").decode(), f"d{i}", 30, NOW).serial
        for i in range(3)
    ]
    ca.write_crl([(serials[0], NOW), (serials[2], NOW)], NOW)
    crl = x509.load_pem_x509_crl(ca.crl_path.read_bytes())
    assert crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]
    assert {format(r.serial_number, "x") for r in crl} == {serials[0], serials[2]}


def test_csr_naming_another_device_is_refused(ca: CertificateAuthority) -> None:
    csr = DeviceKey.generate().csr("edge-2").decode()
    with pytest.raises(InvalidCsr, match="'edge-2', not the enrolling device id 'edge-1'"):
        ca.issue(csr, "edge-1", 30, NOW)


def _csr(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, name: str) -> str:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


@pytest.mark.parametrize(
    ("key", "kind"),
    [
        (rsa.generate_private_key(public_exponent=65537, key_size=2048), "RSAPublicKey"),
        (ec.generate_private_key(ec.SECP384R1()), "secp384r1"),
    ],
)
def test_csr_with_another_key_type_is_refused(
    ca: CertificateAuthority, key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey, kind: str
) -> None:
    with pytest.raises(InvalidCsr, match=f"{kind} key; device keys must be ECDSA P-256"):
        ca.issue(_csr(key, "edge-1"), "edge-1", 30, NOW)


def test_garbage_or_tampered_csr_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(InvalidCsr, match="not a PEM certificate signing request"):
        ca.issue("hello", "edge-1", 30, NOW)
    # An Ed25519 signature is the DER's last 64 bytes: flip one and it no longer verifies.
    key = DeviceKey(Ed25519PrivateKey.generate())
    der = bytearray(x509.load_pem_x509_csr(key.csr("edge-1")).public_bytes(DER))
    der[-1] ^= 1
    tampered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidCsr, match="signature does not verify"):
        ca.issue(tampered.decode(), "edge-1", 30, NOW)


def test_ed25519_csr_is_accepted(ca: CertificateAuthority) -> None:
    key = DeviceKey(Ed25519PrivateKey.generate())
    issued = ca.issue(key.csr("edge-1").decode(), "edge-1", 30, NOW)
    x509.load_pem_x509_certificate(issued.pem.encode()).verify_directly_issued_by(ca.certificate)
