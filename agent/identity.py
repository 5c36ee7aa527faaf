"""The device identity `edgefleet agent enroll` leaves in the state directory, and its use.

    <state>/identity.json          device id, URLs, groups, labels, region, enrolled_at (0600)
    <state>/identity/              0700
        device.key                 the device's ECDSA P-256 private key (0600)
        device.crt                 its certificate from the control plane's CA (0600)
        ca.crt                     the CA's certificate: the broker's and API's client CA (0600)
        root.pub                   the pinned root public key (0600)
        cp-ca.crt                  with `enroll --cp-ca`: the CA certificates the control
                                   plane's HTTPS certificate chains to (0600)
    <state>/keylist.json           the trusted key list (`agent.runner.load_trust` keeps it here)

When identity.json exists, `agent run` takes its settings from it (device id, assignment URL,
root key, key list, the control plane's CA when cp-ca.crt exists, broker URL, groups and, for
mqtts://, the client certificate files); the settings file, `EDGEFLEET_AGENT_*` variables and
flags still override any of them, except the device id, which must match the certificate.
"""

from __future__ import annotations

import json
import ssl
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from agent.config import ENV_PREFIX, TOP_LEVEL, AgentSettings, SettingsError, load_settings
from shared.device_auth import DeviceRequestSigner
from shared.device_key import DeviceKey
from shared.tls import TlsFileError, client_context

IDENTITY_FILE = "identity.json"
IDENTITY_DIRECTORY = "identity"
TRUSTED_KEYLIST = "keylist.json"  # the name `agent.runner.load_trust` keeps its copy under


@dataclass(frozen=True, slots=True)
class IdentityFiles:
    """Where each identity file of a state directory lives."""

    state_dir: Path

    @property
    def identity_json(self) -> Path:
        """identity.json."""
        return self.state_dir / IDENTITY_FILE

    @property
    def directory(self) -> Path:
        """The 0700 directory holding the key and certificates."""
        return self.state_dir / IDENTITY_DIRECTORY

    @property
    def key(self) -> Path:
        """The device's private key."""
        return self.directory / "device.key"

    @property
    def certificate(self) -> Path:
        """The device's certificate."""
        return self.directory / "device.crt"

    @property
    def ca_certificate(self) -> Path:
        """The control plane CA's certificate."""
        return self.directory / "ca.crt"

    @property
    def cp_ca_certificate(self) -> Path:
        """The CA certificates of the control plane's HTTPS (only with `enroll --cp-ca`)."""
        return self.directory / "cp-ca.crt"

    @property
    def root_key(self) -> Path:
        """The pinned root public key."""
        return self.directory / "root.pub"

    @property
    def keylist(self) -> Path:
        """The trusted key list."""
        return self.state_dir / TRUSTED_KEYLIST


@dataclass(frozen=True, slots=True)
class Identity:
    """What identity.json holds."""

    device_id: str
    api_url: str
    assignment_url: str
    mqtt_url: str | None
    groups: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)
    region: str | None = None
    enrolled_at: str = ""

    def as_json(self) -> dict[str, Any]:
        """The identity.json document."""
        return {
            "device_id": self.device_id,
            "api_url": self.api_url,
            "assignment_url": self.assignment_url,
            "mqtt_url": self.mqtt_url,
            "groups": list(self.groups),
            "labels": dict(self.labels),
            "region": self.region,
            "enrolled_at": self.enrolled_at,
        }

    @classmethod
    def from_json(cls, document: object, where: Path) -> Identity:
        """Read identity.json; `SettingsError` naming the file when it is not usable."""
        try:
            if not isinstance(document, dict):
                raise TypeError
            identity = cls(
                device_id=_text(document["device_id"]),
                api_url=_text(document["api_url"]),
                assignment_url=_text(document["assignment_url"]),
                mqtt_url=None if document.get("mqtt_url") is None else _text(document["mqtt_url"]),
                groups=tuple(_text(g) for g in document.get("groups", [])),
                labels={_text(k): _text(v) for k, v in document.get("labels", {}).items()},
                region=None if document.get("region") is None else _text(document["region"]),
                enrolled_at=str(document.get("enrolled_at", "")),
            )
        except (KeyError, TypeError, AttributeError):
            raise SettingsError(
                f"{where} is not a valid identity; enroll again with `edgefleet agent enroll "
                "--force`"
            ) from None
        return identity


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError
    return value


def load_identity(state_dir: Path) -> Identity | None:
    """The identity in `state_dir`, or None when it was never enrolled (blocking)."""
    path = IdentityFiles(state_dir).identity_json
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise SettingsError(f"cannot read {path}: {error.strerror}") from None
    try:
        document = json.loads(raw)
    except ValueError:
        document = None
    return Identity.from_json(document, path)


def load_run_settings(
    config_file: Path | None,
    env: Mapping[str, str],
    overrides: Mapping[str, Mapping[str, Any]],
) -> AgentSettings:
    """`agent run`'s settings: the identity (if the state directory has one) under the rest."""
    settings = load_settings(config_file, env, overrides)
    identity = load_identity(settings.state_dir)
    if identity is None:
        return settings
    explicit = _explicit(config_file, env, overrides)
    if ("", "device_id") in explicit and settings.device_id != identity.device_id:
        raise SettingsError(
            f"the device id {settings.device_id!r} differs from {identity.device_id!r}, the "
            f"id enrolled in {IdentityFiles(settings.state_dir).identity_json}; drop the "
            "device_id setting, or enroll again under the new id"
        )
    layered: dict[str, dict[str, Any]] = {}
    for section, values in identity_settings(identity, settings).items():
        for key, value in values.items():
            if (section, key) not in explicit:
                layered.setdefault(section, {})[key] = value
    for section, given in overrides.items():
        layered.setdefault(section, {}).update({k: v for k, v in given.items() if v is not None})
    return load_settings(config_file, env, layered)


def identity_settings(identity: Identity, settings: AgentSettings) -> dict[str, dict[str, Any]]:
    """The settings an identity provides, as `load_settings` overrides."""
    files = IdentityFiles(settings.state_dir)
    mqtt: dict[str, Any] = {"groups": ",".join(identity.groups)}
    if identity.mqtt_url:
        mqtt["url"] = identity.mqtt_url
    if (settings.mqtt.url or identity.mqtt_url or "").startswith("mqtts://"):
        mqtt["ca_file"] = str(files.ca_certificate)
        mqtt["cert_file"] = str(files.certificate)
        mqtt["key_file"] = str(files.key)
    bundles = {
        "assignment": identity.assignment_url,
        "root_key": str(files.root_key),
        "keylist": str(files.keylist),
    }
    if files.cp_ca_certificate.is_file():
        bundles["ca_file"] = str(files.cp_ca_certificate)
    return {"": {"device_id": identity.device_id}, "bundles": bundles, "mqtt": mqtt}


def _explicit(
    config_file: Path | None, env: Mapping[str, str], overrides: Mapping[str, Mapping[str, Any]]
) -> set[tuple[str, str]]:
    """The (section, key) pairs the file, the environment or a flag sets ("" = top level)."""
    found: set[tuple[str, str]] = set()
    if config_file is not None:  # load_settings read it already: it exists and parses
        document = tomllib.loads(config_file.read_text())
        for key, value in document.items():
            if isinstance(value, dict):
                found.update((key, option) for option in value)
            else:
                found.add(("", key))
    for name in env:
        if name.startswith(ENV_PREFIX):
            rest = name[len(ENV_PREFIX) :].lower()
            if rest in TOP_LEVEL:
                found.add(("", rest))
            else:
                section, _, option = rest.partition("_")
                found.add((section, option))
    for section, values in overrides.items():
        found.update((section, key) for key, value in values.items() if value is not None)
    return found


def control_plane_tls(settings: AgentSettings) -> ssl.SSLContext | None:
    """The TLS context checking the control plane's certificate against `bundles.ca_file`.

    None without one: aiohttp then checks against the system's trusted CAs. Blocking (it reads
    the file): build it once, at start.
    """
    if not settings.bundles.ca_file:
        return None
    try:
        return client_context(Path(settings.bundles.ca_file).expanduser())
    except TlsFileError as error:
        raise SettingsError(f"bundles.ca_file: {error}") from None


def control_plane_session(
    signer: DeviceRequestSigner | None, tls: ssl.SSLContext | None
) -> aiohttp.ClientSession:
    """The session of every request to the control plane: signed, and verified with `tls`.

    `signer` is `request_signer`'s (None: not enrolled), `tls` is `control_plane_tls`'s. Make it
    on the running loop, and close it after use.
    """
    return aiohttp.ClientSession(
        middlewares=(signer,) if signer else (),
        connector=aiohttp.TCPConnector(ssl=tls if tls is not None else True),
    )


def request_signer(settings: AgentSettings) -> DeviceRequestSigner | None:
    """A client middleware signing requests to the control plane; None if not enrolled.

    Blocking (reads the key). Requests go signed to the API's origin and the assignment's.
    """
    identity = load_identity(settings.state_dir)
    if identity is None:
        return None
    key = DeviceKey.load(IdentityFiles(settings.state_dir).key)
    origins = {str(URL(identity.api_url).origin())}
    if settings.bundles.assignment.startswith(("http://", "https://")):
        origins.add(str(URL(settings.bundles.assignment).origin()))
    return DeviceRequestSigner(key, identity.device_id, origins)
