"""TLS to Mosquitto with a test CA made here: server verification, mutual TLS, and the
production configuration of deploy/mosquitto started with its paths pointed at test files."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from shared.mqtt.broker import BrokerTls, MosquittoBroker, free_port
from shared.mqtt.client import MqttClient, MqttSettings
from shared.mqtt.topics import device_topic, fleet_filter
from tests.shared.mqtt.conftest import (
    DEPLOY_DIR,
    Connect,
    assert_delivered,
    require_mosquitto,
    start_mosquitto,
    write_password_file,
)

LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


@dataclass(frozen=True)
class Pki:
    """A CA, a server certificate for 127.0.0.1, a client certificate, and an unrelated CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path  # CN=dev-a
    client_key: Path
    other_ca: Path


def _issue(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None = None,
    server: bool = False,
) -> x509.Certificate:
    """A certificate for `key`: self-signed CA when there is no issuer."""
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        builder = builder.add_extension(usage, critical=True).add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
        )
    else:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    if server:
        names = [x509.IPAddress(LOOPBACK), x509.DNSName("localhost")]
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates made with `cryptography`, written as PEM files."""
    directory = tmp_path_factory.mktemp("pki")
    keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in ("ca", "srv", "cli", "oth")}
    ca = ("EdgeFleet test CA", keys["ca"])
    files = {
        "ca": _issue(ca[0], keys["ca"]),
        "srv": _issue("broker", keys["srv"], ca, server=True),
        "cli": _issue("dev-a", keys["cli"], ca),
        "oth": _issue("Another CA", keys["oth"]),
    }
    paths = {name: _write(directory / f"{name}.crt", files[name], keys[name]) for name in files}
    return Pki(
        ca=paths["ca"],
        server_cert=paths["srv"],
        server_key=paths["srv"].with_suffix(".key"),
        client_cert=paths["cli"],
        client_key=paths["cli"].with_suffix(".key"),
        other_ca=paths["oth"],
    )


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[MosquittoBroker]:
    """Mosquitto with a TLS listener; clients need no certificate."""
    tls = BrokerTls(pki.server_cert, pki.server_key, pki.ca)
    broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto-tls"), tls=tls)
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def mtls_broker(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[MosquittoBroker]:
    """Mosquitto that requires a client certificate signed by the CA."""
    tls = BrokerTls(pki.server_cert, pki.server_key, pki.ca, require_certificate=True)
    broker = start_mosquitto(tmp_path_factory.mktemp("mosquitto-mtls"), tls=tls)
    yield broker
    broker.stop()


async def test_mqtts_round_trip(tls_broker: MosquittoBroker, pki: Pki, connect: Connect) -> None:
    assert tls_broker.url.startswith("mqtts://127.0.0.1:")
    topic = device_topic("dev-a", "events")
    receiver = await connect(MqttSettings(tls_broker.url, "rx", ca_file=pki.ca), subscribe=[topic])
    sender = await connect(MqttSettings(tls_broker.url, "tx", ca_file=pki.ca, protocol=4))
    await assert_delivered(sender, receiver, topic, b"over TLS")


async def test_a_broker_certificate_from_another_ca_is_refused(
    tls_broker: MosquittoBroker, pki: Pki
) -> None:
    settings = MqttSettings(tls_broker.url, "wary", ca_file=pki.other_ca, max_backoff_s=0.2)
    async with MqttClient(settings) as client:
        with pytest.raises(TimeoutError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.wait_connected(1.0)
        assert not client.connected


async def test_mutual_tls_with_a_client_certificate(
    mtls_broker: MosquittoBroker, pki: Pki, connect: Connect
) -> None:
    settings = MqttSettings(
        mtls_broker.url, "dev-a", ca_file=pki.ca, cert_file=pki.client_cert, key_file=pki.client_key
    )
    client = await connect(settings, subscribe=[device_topic("dev-a", "cmd")])
    await assert_delivered(client, client, device_topic("dev-a", "cmd"), b"hello")


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    mtls_broker: MosquittoBroker, pki: Pki
) -> None:
    settings = MqttSettings(mtls_broker.url, "anonymous", ca_file=pki.ca, max_backoff_s=0.2)
    async with MqttClient(settings) as client:
        with pytest.raises(TimeoutError):
            await client.wait_connected(1.0)


class DeployedBroker(MosquittoBroker):
    """Mosquitto running deploy/mosquitto/mosquitto.conf, its paths pointed at test files."""

    def __init__(self, directory: Path, port: int, replacements: dict[str, str]) -> None:
        super().__init__(directory, port=port)
        self.replacements = replacements

    @property
    def url(self) -> str:
        """TLS on the deployed listener."""
        return f"mqtts://127.0.0.1:{self.port}"

    def config(self) -> str:
        """The deployed file, rewritten; every rewritten line must be in it."""
        text = (DEPLOY_DIR / "mosquitto.conf").read_text()
        for old, new in self.replacements.items():
            assert old in text, f"deploy/mosquitto/mosquitto.conf no longer has {old!r}"
            text = text.replace(old, new)
        return ("user root\n" if os.geteuid() == 0 else "") + text


async def test_the_deployed_configuration_runs(tmp_path: Path, pki: Pki, connect: Connect) -> None:
    require_mosquitto()
    passwords = write_password_file(tmp_path / "passwd", {"dev-a": "a", "control-plane": "cp"})
    port = free_port()
    broker = DeployedBroker(
        tmp_path,
        port,
        {
            "listener 8883\n": f"listener {port} 127.0.0.1\n",
            "/etc/mosquitto/certs/server.crt": str(pki.server_cert),
            "/etc/mosquitto/certs/server.key": str(pki.server_key),
            "/etc/mosquitto/certs/ca.crt": str(pki.ca),
            "/etc/mosquitto/passwd": str(passwords),
            "/etc/mosquitto/acl": str(DEPLOY_DIR / "acl"),
            "/var/lib/mosquitto/": f"{tmp_path}/",
            "log_dest syslog": "log_dest stderr",
        },
    )
    await asyncio.to_thread(broker.start)
    try:
        control_plane = await connect(
            MqttSettings(broker.url, "cp", username="control-plane", password="cp", ca_file=pki.ca),
            subscribe=[fleet_filter("status")],
        )
        device = await connect(
            MqttSettings(broker.url, "dev-a", username="dev-a", password="a", ca_file=pki.ca)
        )
        await assert_delivered(device, control_plane, device_topic("dev-a", "status"), b"online")
    finally:
        await asyncio.to_thread(broker.stop)
