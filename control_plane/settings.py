"""The control plane's settings: built once per process from flags, `EDGEFLEET_CP_*` and TOML.

Precedence, lowest first: built-in defaults, the TOML file (`--config`), environment variables
(`EDGEFLEET_CP_<FIELD>` in capitals, e.g. `EDGEFLEET_CP_PORT=8081`), command-line flags. Every
field of `ControlPlaneSettings` can be set in all three places; the file uses the field names:

    data_dir = "/var/lib/edgefleet-cp"
    database_url = "postgresql+asyncpg://edgefleet@db/edgefleet"   (password: use the env)
    host = "0.0.0.0"
    port = 8080
    tls_cert_file = "/etc/edgefleet/tls/cp.crt"   (or behind_tls_proxy = true behind a proxy)
    tls_key_file = "/etc/edgefleet/tls/cp.key"
    keys_dir = "/etc/edgefleet/keys"
    public_url = "https://cp.example.com"
    mqtt_url = "mqtts://broker.example.com:8883"
    ...

Booleans are `true`/`false` in the file and `1`, `true`, `yes` (or `0`, `false`, `no`) in the
environment. Plain HTTP is served only on a loopback address (`shared.tls`): a `host` that
other machines reach needs `tls_cert_file`, or `behind_tls_proxy` when a proxy in front
terminates TLS; `build` refuses anything else.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from control_plane.db.engine import default_database_url
from control_plane.errors import ControlPlaneError
from shared.tls import is_loopback, is_plain_remote

ENV_PREFIX = "EDGEFLEET_CP_"
DATA_DIR_ENV = ENV_PREFIX + "DATA_DIR"
DATABASE_URL_ENV = ENV_PREFIX + "DATABASE_URL"
HOST_ENV = ENV_PREFIX + "HOST"
PORT_ENV = ENV_PREFIX + "PORT"
KEYS_DIR_ENV = ENV_PREFIX + "KEYS_DIR"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080


class InvalidSettings(ControlPlaneError):
    """A flag, environment variable or file setting has an unusable value; permanent."""


@dataclass(frozen=True)
class ControlPlaneSettings:
    """Where the control plane keeps its data, where it listens, and how it runs the fleet."""

    data_dir: Path
    database_url: str
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    # HTTPS served here: the certificate chain (PEM, leaf first) and its key (None: in the
    # chain's file). Without them the API is plain HTTP, which only loopback may serve...
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    # ... or a host behind a proxy or load balancer that terminates TLS in front of it.
    behind_tls_proxy: bool = False
    # Read: `root.pub`, `keylist.json` and `assignment.key` (signs assignments and commands).
    # Never the root or release private keys.
    keys_dir: Path | None = None
    # The environment variable holding the passphrase of assignment.key, if it has one.
    keys_passphrase_env: str = ""
    # How devices reach this API (assignment and bundle URLs); default http(s)://host:port.
    public_url: str = ""
    # The control plane's own broker connection (ingest and commands); empty: no MQTT.
    mqtt_url: str = ""
    mqtt_username: str = ""
    mqtt_password: str = ""  # better set through EDGEFLEET_CP_MQTT_PASSWORD
    mqtt_ca_file: str = ""
    mqtt_cert_file: str = ""
    mqtt_key_file: str = ""
    mqtt_protocol: int = 5  # 5 gives shared subscriptions; 4 for brokers without MQTT 5
    mqtt_share_group: str = "edgefleet-cp"  # replicas in one group split the ingest
    # The broker URL handed to enrolling devices; default: mqtt_url.
    device_mqtt_url: str = ""
    enrollment_token_ttl_s: float = 24 * 3600.0  # default lifetime of an enrollment token
    certificate_days: int = 365
    assignment_lifetime_s: float = 7 * 24 * 3600.0  # re-signed when half of it has passed
    long_poll_max_s: float = 60.0
    telemetry_raw_days: float = 7.0  # then rolled up into `rollup_bucket_s` buckets
    rollup_bucket_s: int = 3600
    telemetry_rollup_days: float = 90.0
    events_days: float = 90.0
    ingest_batch_size: int = 500
    ingest_batch_delay_s: float = 0.2
    rollout_tick_s: float = 5.0  # how often running rollouts are evaluated

    @property
    def base_url(self) -> str:
        """The URL devices use for this API, without a trailing slash."""
        scheme = "https" if self.tls_cert_file is not None else "http"
        return (self.public_url or f"{scheme}://{self.host}:{self.port}").rstrip("/")

    @property
    def devices_mqtt_url(self) -> str:
        """The broker URL enrolling devices are told."""
        return self.device_mqtt_url or self.mqtt_url

    def plain_links(self) -> list[str]:
        """The links this configuration leaves unencrypted beyond loopback, in words.

        Not refused (the broker's URL is the operator's business, and devices refuse plain
        links themselves unless told otherwise), but worth a warning at start.
        """
        links = [
            (self.base_url, "the API URL devices are told (public_url)"),
            (self.devices_mqtt_url, "the broker URL devices are told (device_mqtt_url)"),
            (self.mqtt_url, "this control plane's broker connection (mqtt_url)"),
        ]
        return [f"{what}: {url}" for url, what in links if url and is_plain_remote(url)]

    @classmethod
    def build(
        cls,
        env: Mapping[str, str],
        config_file: Path | None = None,
        **flags: Any,
    ) -> ControlPlaneSettings:
        """Defaults < file < environment < flags (a flag given as None counts as absent)."""
        values: dict[str, Any] = {}
        if config_file is not None:
            values.update(_read_file(config_file))
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for key, raw in env.items():
            if key.startswith(ENV_PREFIX) and raw != "":
                name = key[len(ENV_PREFIX) :].lower()
                if name not in fields:
                    raise InvalidSettings(f"unknown setting in environment variable {key}")
                values[name] = raw
        for name, value in flags.items():
            if name not in fields:
                raise TypeError(f"unknown control plane setting {name!r}")
            if value is not None:
                values[name] = value
        if not values.get("data_dir"):
            raise InvalidSettings(f"no data directory: pass --data or set {DATA_DIR_ENV}")
        converted = {name: _convert(name, fields[name].type, v) for name, v in values.items()}
        if not converted.get("database_url"):
            converted["database_url"] = default_database_url(converted["data_dir"])
        settings = cls(**converted)
        if not 0 <= settings.port <= 65535:
            raise InvalidSettings(f"port {settings.port} is outside 0-65535")
        _check_transport(settings)
        return settings


def _check_transport(settings: ControlPlaneSettings) -> None:
    """Plain HTTP on loopback only, unless a proxy terminates TLS (files are read to serve)."""
    if settings.tls_key_file is not None and settings.tls_cert_file is None:
        raise InvalidSettings(
            "tls_key_file is set without tls_cert_file: give the certificate too (--tls-cert)"
        )
    plain = settings.tls_cert_file is None and not settings.behind_tls_proxy
    if plain and not is_loopback(settings.host):
        raise InvalidSettings(
            f"refusing to serve plain HTTP on {settings.host or 'every address'}, which other "
            "machines reach (only loopback addresses may go without TLS). Either serve HTTPS: "
            "--tls-cert FILE --tls-key FILE (tls_cert_file, tls_key_file; "
            f"{ENV_PREFIX}TLS_CERT_FILE, {ENV_PREFIX}TLS_KEY_FILE); or, when a proxy or load "
            "balancer in front terminates TLS, say so: --behind-tls-proxy "
            f"(behind_tls_proxy = true; {ENV_PREFIX}BEHIND_TLS_PROXY=true)"
        )


def _read_file(path: Path) -> dict[str, Any]:
    try:
        document = tomllib.loads(path.read_text())
    except OSError as error:
        raise InvalidSettings(f"cannot read settings file {path}: {error}") from None
    except tomllib.TOMLDecodeError as error:
        raise InvalidSettings(f"{path} is not valid TOML: {error}") from None
    unknown = sorted(set(document) - {f.name for f in dataclasses.fields(ControlPlaneSettings)})
    if unknown:
        raise InvalidSettings(f"{path}: unknown settings {', '.join(unknown)}")
    return document


def _convert(name: str, kind: object, value: Any) -> Any:
    """A value from the file, environment or a flag, as the field's type."""
    kind = str(kind)
    try:
        if kind == "bool":
            return _boolean(value)
        if kind.startswith("Path"):
            return Path(value).expanduser() if value not in (None, "") else None
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        setting = ENV_PREFIX + name.upper()
        raise InvalidSettings(
            f"{name} (or {setting}) = {value!r} is not a valid {kind.split(' ')[0]}"
        ) from None


def _boolean(value: Any) -> bool:
    """A TOML boolean, or a word from the environment or a flag."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)
