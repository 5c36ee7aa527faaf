"""What an MQTT client connects with: the broker's URL, identity, credentials, TLS and will.

`MqttSettings` is built once per process (from the agent's or control plane's configuration)
and checked as it is built, so a URL or file combination that cannot work fails at startup
with `MqttSettingsError` rather than as a reconnect loop. Passwords never appear in its repr.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from shared.mqtt.errors import MqttSettingsError

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
PROTOCOL_VERSIONS = (5, 4)  # MQTT 5 and 3.1.1


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """How to reach the broker: URL, identity, credentials, TLS files and timing."""

    url: str  # mqtt://host[:1883] or mqtts://host[:8883]
    client_id: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_file: Path | None = None  # None with mqtts: the system's trusted CAs
    cert_file: Path | None = None  # client certificate, for mutual TLS
    key_file: Path | None = None  # its key, when not in cert_file
    keepalive_s: int = 30
    protocol: int = 5  # 5, or 4 for MQTT 3.1.1 (the embedded amqtt broker speaks only 3.1.1)
    max_backoff_s: float = 30.0

    def __post_init__(self) -> None:
        self.endpoint()  # validates the URL
        if not self.client_id:
            raise MqttSettingsError("client_id must not be empty")
        if self.protocol not in PROTOCOL_VERSIONS:
            raise MqttSettingsError(f"protocol must be 5 or 4 (3.1.1), not {self.protocol}")
        if self.keepalive_s < 1:
            raise MqttSettingsError(f"keepalive_s must be at least 1, not {self.keepalive_s}")
        if self.max_backoff_s <= 0:
            raise MqttSettingsError(f"max_backoff_s must be positive, not {self.max_backoff_s}")
        if self.password is not None and self.username is None:
            raise MqttSettingsError("a password needs a username")
        if self.key_file is not None and self.cert_file is None:
            raise MqttSettingsError("key_file needs cert_file")
        tls_files = (self.ca_file, self.cert_file, self.key_file)
        if not self.tls and any(tls_files):
            raise MqttSettingsError(f"TLS files given for {self.url}; use mqtts://")

    @property
    def tls(self) -> bool:
        """Whether the URL asks for TLS (mqtts://)."""
        return self.url.startswith("mqtts://")

    def endpoint(self) -> tuple[str, int]:
        """The broker's host and port, from the URL."""
        try:
            parts = urlsplit(self.url)
            port = parts.port
        except ValueError as exc:
            raise MqttSettingsError(f"MQTT URL {self.url!r}: {exc}") from None
        if parts.scheme not in DEFAULT_PORTS:
            raise MqttSettingsError(f"MQTT URL {self.url!r}: the scheme must be mqtt or mqtts")
        if not parts.hostname or parts.path not in ("", "/") or parts.query or parts.username:
            raise MqttSettingsError(
                f"MQTT URL {self.url!r}: expected {parts.scheme}://host[:port] (credentials go "
                f"in the username and password settings)"
            )
        return parts.hostname, port or DEFAULT_PORTS[parts.scheme]

    def tls_context(self) -> ssl.SSLContext:
        """The TLS context for mqtts://: server verified against `ca_file`, client cert if any."""
        try:
            context = ssl.create_default_context(cafile=self.ca_file)
        except OSError as exc:  # ssl.SSLError is an OSError
            raise MqttSettingsError(f"CA file {self.ca_file}: {exc}") from None
        context.sslsocket_class = _ClosingSSLSocket
        if self.cert_file is not None:
            try:
                context.load_cert_chain(self.cert_file, self.key_file)
            except OSError as exc:
                raise MqttSettingsError(
                    f"client certificate {self.cert_file} (key {self.key_file}): {exc}"
                ) from None
        return context


@dataclass(frozen=True, slots=True)
class Will:
    """The last will: what the broker publishes when this client vanishes without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True


class _ClosingSSLSocket(ssl.SSLSocket):
    """Closes itself when the handshake fails: paho 2.2 drops such a socket unclosed."""

    def do_handshake(self, block: bool = False) -> None:
        """Handshake; on failure close the socket before raising."""
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise
