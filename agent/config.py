"""The agent's settings: built once per process from a TOML file, the environment and flags.

Precedence, lowest first: built-in defaults, the TOML file, `EDGEFLEET_AGENT_<SECTION>_<KEY>`
environment variables (e.g. `EDGEFLEET_AGENT_SERVER_PORT=8001`), command-line flags. The result
is a frozen `AgentSettings` passed explicitly to whatever needs it; nothing else reads the
environment. The file layout:

    state_dir = "/var/lib/edgefleet"
    device_id = "edge-1"          (default: the host name)
    allow_plain_transport = false (true: accept http:// and mqtt:// beyond loopback)
    [server]     host, port, max_body_mb, max_elements, compress_min_bytes, idle_timeout_s,
                 body_timeout_s
    [runtime]    intra_op_threads, inter_op_threads, inference_threads, cpu_affinity,
                 performance_hint
    [batching]   max_batch_size, max_queue_delay_us, max_queue_size, instances,
                 default_timeout_us
    [selection]  budget_s, policy
    [bundles]    assignment, ca_file, root_key, keylist, poll_interval_s, keep_versions,
                 max_attempts, probation_duration_s, probation_requests,
                 probation_max_error_rate, probation_max_latency_ratio, probation_min_requests
    [mqtt]       url, groups, username, password, ca_file, cert_file, key_file, keepalive_s,
                 protocol, telemetry_interval_s, outbox_max_messages, outbox_max_mb
    [models.NAME]  paths (list), version, policy, pin, and any [batching] key

Links that leave the machine are encrypted (`shared.tls`): a control plane URL
(`bundles.assignment`) or broker URL (`mqtt.url`) that is plain http:// or mqtt:// to a host
other than loopback is refused unless `allow_plain_transport` says the network is trusted.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from agent.batching import BatchingConfig
from agent.errors import AgentError
from agent.model import ModelSpec
from agent.runtimes.base import RuntimeOptions
from shared.tls import is_plain_remote

ENV_PREFIX = "EDGEFLEET_AGENT_"
ALLOW_PLAIN_TRANSPORT_ENV = ENV_PREFIX + "ALLOW_PLAIN_TRANSPORT"


class SettingsError(AgentError):
    """The settings file, the environment or a flag holds an invalid value."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """The HTTP endpoint."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_mb: float = 64.0  # also the cap after decompression
    max_elements: int = 16_000_000  # tensor elements per request
    compress_min_bytes: int = 1024  # smaller responses are never compressed
    # A connection must finish a request's header within this long of opening or of its last
    # answer, else it is closed: this bounds slow headers (slowloris) and idle keep-alive alike.
    idle_timeout_s: float = 60.0
    # A request's whole body must arrive within this long, else 408 and the connection closes.
    body_timeout_s: float = 60.0

    @property
    def max_body_bytes(self) -> int:
        """The body limit in bytes."""
        return int(self.max_body_mb * 1024 * 1024)


@dataclass(frozen=True, slots=True)
class RuntimeSettings:
    """Threads and CPU placement."""

    intra_op_threads: int = 0  # 0 = the runtime's default
    inter_op_threads: int = 0
    inference_threads: int = 0  # worker threads running batches; 0 = one per core
    cpu_affinity: tuple[int, ...] = ()  # pin the process to these CPUs; empty = no pinning
    performance_hint: str = "LATENCY"


@dataclass(frozen=True, slots=True)
class SelectionSettings:
    """Accelerator selection defaults."""

    budget_s: float = 3.0
    policy: str = "latency"


@dataclass(frozen=True, slots=True)
class BundleSettings:
    """Production mode (`edgefleet agent run`): where assignments come from, what to trust."""

    assignment: str = ""  # https:// URL of the control plane, or a local file path
    # The CA certificates (PEM) the control plane's HTTPS certificate must chain to, for a
    # private CA (`agent enroll --cp-ca` stores one); empty: the system's trusted CAs.
    ca_file: str = ""
    root_key: str = ""  # the pinned root public key (root.pub from `edgefleet keys init`)
    keylist: str = ""  # the signed key list (keylist.json)
    poll_interval_s: float = 30.0
    keep_versions: int = 3
    max_attempts: int = 3
    probation_duration_s: float = 60.0
    probation_requests: int = 0
    probation_max_error_rate: float = 0.05
    probation_max_latency_ratio: float = 2.0
    probation_min_requests: int = 20
    test_pause_at: str = ""  # tests only: freeze at a named point of the bundle path


@dataclass(frozen=True, slots=True)
class MqttSettingsSection:
    """Reporting over MQTT (presence, telemetry, events) and receiving signed commands."""

    url: str = ""  # mqtt://host:1883 or mqtts://host:8883; empty = no MQTT
    groups: str = ""  # comma-separated groups whose commands this device obeys
    username: str = ""
    password: str = ""  # better set through EDGEFLEET_AGENT_MQTT_PASSWORD
    ca_file: str = ""
    cert_file: str = ""  # client certificate for mutual TLS
    key_file: str = ""
    keepalive_s: int = 30
    protocol: int = 5  # 5, or 4 for MQTT 3.1.1
    telemetry_interval_s: float = 10.0
    outbox_max_messages: int = 10_000
    outbox_max_mb: float = 16.0


@dataclass(frozen=True, slots=True)
class AgentSettings:
    """Everything the agent process needs to know, resolved once."""

    state_dir: Path = field(default_factory=lambda: default_state_dir(os.environ))
    device_id: str = field(default_factory=socket.gethostname)  # assignments, MQTT topics
    # Accept http:// and mqtt:// to hosts other than loopback (a network trusted otherwise).
    allow_plain_transport: bool = False
    server: ServerSettings = field(default_factory=ServerSettings)
    runtime: RuntimeSettings = field(default_factory=RuntimeSettings)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    selection: SelectionSettings = field(default_factory=SelectionSettings)
    bundles: BundleSettings = field(default_factory=BundleSettings)
    mqtt: MqttSettingsSection = field(default_factory=MqttSettingsSection)
    models: tuple[ModelSpec, ...] = ()

    def runtime_options(self) -> RuntimeOptions:
        """The options handed to every runtime adapter."""
        return RuntimeOptions(
            intra_op_threads=self.runtime.intra_op_threads,
            inter_op_threads=self.runtime.inter_op_threads,
            performance_hint=self.runtime.performance_hint,
            max_batch_size=max(1, self.batching.max_batch_size),
        )


def default_state_dir(env: Mapping[str, str]) -> Path:
    """`$STATE_DIRECTORY` under systemd, else `$XDG_STATE_HOME/edgefleet`."""
    if env.get("STATE_DIRECTORY"):
        return Path(env["STATE_DIRECTORY"].split(":")[0])
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edgefleet"


TOP_LEVEL = ("state_dir", "device_id", "allow_plain_transport")  # settings outside sections
_SECTIONS: dict[str, type[Any]] = {
    "server": ServerSettings,
    "runtime": RuntimeSettings,
    "batching": BatchingConfig,
    "selection": SelectionSettings,
    "bundles": BundleSettings,
    "mqtt": MqttSettingsSection,
}


def load_settings(
    config_file: Path | None,
    env: Mapping[str, str],
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    models: Mapping[str, Mapping[str, Any]] | None = None,
) -> AgentSettings:
    """Merge defaults, file, environment and overrides (`{"server": {"port": 8001}}`)."""
    document: dict[str, Any] = {}
    if config_file is not None:
        try:
            document = tomllib.loads(config_file.read_text())
        except OSError as error:
            raise SettingsError(f"cannot read settings file {config_file}: {error}") from None
        except tomllib.TOMLDecodeError as error:
            raise SettingsError(f"{config_file} is not valid TOML: {error}") from None
    sections: dict[str, dict[str, Any]] = {name: dict(document.get(name, {})) for name in _SECTIONS}
    top: dict[str, Any] = {k: document[k] for k in TOP_LEVEL if k in document}
    for key, value in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        rest = key[len(ENV_PREFIX) :].lower()
        if rest in TOP_LEVEL:
            top[rest] = value
            continue
        section, _, option = rest.partition("_")
        if section not in _SECTIONS or not option:
            raise SettingsError(f"unknown setting in environment variable {key}")
        sections[section][option] = value
    for section, values in (overrides or {}).items():
        present = {k: v for k, v in values.items() if v is not None}
        if section == "":
            top.update(present)
        else:
            sections[section].update(present)
    built = {name: _build(name, cls, sections[name]) for name, cls in _SECTIONS.items()}
    state_dir = top.get("state_dir")
    settings = AgentSettings(
        state_dir=Path(state_dir).expanduser() if state_dir else default_state_dir(env),
        **built,
    )
    if top.get("device_id"):
        settings = replace(settings, device_id=str(top["device_id"]))
    if "allow_plain_transport" in top:
        allow = _coerce("allow_plain_transport", top["allow_plain_transport"], False)
        settings = replace(settings, allow_plain_transport=allow)
    check_transport(settings)
    all_models = dict(document.get("models", {}))
    all_models.update(models or {})
    specs = tuple(
        _model_spec(name, values, settings, config_file) for name, values in all_models.items()
    )
    return replace(settings, models=specs)


def check_transport(settings: AgentSettings) -> None:
    """Refuse plain URLs to hosts other than loopback unless `allow_plain_transport` is set."""
    if settings.allow_plain_transport:
        return
    links = (
        ("bundles.assignment", settings.bundles.assignment, "https://", "bundles.ca_file"),
        ("mqtt.url", settings.mqtt.url, "mqtts://", "mqtt.ca_file"),
    )
    for name, url, secure, ca in links:
        if is_plain_remote(url):
            raise SettingsError(
                f"{name} = {url} is not encrypted and its host is not loopback: use {secure} "
                f"(with {ca} for a private CA; after enrollment the control plane's public_url "
                "or device_mqtt_url is where it comes from), or, only on a network you trust, "
                f"set allow_plain_transport = true ({ALLOW_PLAIN_TRANSPORT_ENV}=true, "
                "--allow-plain-transport)"
            )


def truthy(raw: object) -> bool:
    """A boolean setting from the file (a TOML boolean) or the environment (1, true, yes)."""
    return raw if isinstance(raw, bool) else str(raw).strip().lower() in ("1", "true", "yes")


def _build(section: str, cls: type[Any], values: Mapping[str, Any]) -> Any:
    """Instantiate a settings dataclass, converting strings from the environment."""
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    defaults = cls()
    for key, raw in values.items():
        if key not in known:
            raise SettingsError(
                f"unknown setting '{section}.{key}'; known: {', '.join(sorted(known))}"
            )
        kwargs[key] = _coerce(f"{section}.{key}", raw, getattr(defaults, key))
    return cls(**kwargs)


def _coerce(where: str, raw: Any, default: Any) -> Any:
    try:
        if isinstance(default, bool):
            return truthy(raw)
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, tuple):
            items = raw.split(",") if isinstance(raw, str) else raw
            return tuple(int(i) for i in items if str(i).strip())
        return str(raw)
    except (TypeError, ValueError):
        raise SettingsError(f"setting '{where}' has an invalid value {raw!r}") from None


def _model_spec(
    name: str, values: Mapping[str, Any], settings: AgentSettings, config_file: Path | None
) -> ModelSpec:
    values = dict(values)
    raw_paths = values.pop("paths", None)
    if not raw_paths:
        raise SettingsError(f"model '{name}' needs at least one file in 'paths'")
    base = config_file.parent if config_file is not None else Path.cwd()
    paths = tuple((base / Path(p).expanduser()).resolve() for p in raw_paths)
    for path in paths:
        if not path.is_file():
            raise SettingsError(f"model '{name}': file {path} does not exist")
    version = _coerce(f"models.{name}.version", values.pop("version", 1), 1)
    policy = str(values.pop("policy", settings.selection.policy))
    if policy not in ("latency", "throughput"):
        raise SettingsError(f"model '{name}': policy must be 'latency' or 'throughput'")
    pin = values.pop("pin", None)
    batching = _build(
        f"models.{name}",
        BatchingConfig,
        {
            **{f.name: getattr(settings.batching, f.name) for f in fields(BatchingConfig)},
            **values,
        },
    )
    return ModelSpec(
        name=name,
        version=version,
        paths=paths,
        policy=policy,
        pin=str(pin) if pin else None,
        batching=batching,
        selection_budget_s=settings.selection.budget_s,
    )
