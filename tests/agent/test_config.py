"""Settings: defaults, then the TOML file, then the environment, then flags."""

from __future__ import annotations

import io
from contextlib import redirect_stderr
from pathlib import Path

import pytest

from agent import cli as agent_cli
from agent.config import (
    ALLOW_PLAIN_TRANSPORT_ENV,
    SettingsError,
    default_state_dir,
    load_settings,
)
from shared.cli import main

TOML = """
state_dir = "state"
[server]
port = 9000
max_body_mb = 8
[runtime]
intra_op_threads = 1
cpu_affinity = [0]
[batching]
max_batch_size = 16
max_queue_delay_us = 250
[selection]
policy = "throughput"
[models.mlp]
paths = ["mlp.onnx"]
pin = "onnxruntime/CPU"
max_queue_size = 4
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    (tmp_path / "mlp.onnx").write_bytes(b"model")
    path = tmp_path / "agent.toml"
    path.write_text(TOML)
    return path


def test_file_values_apply(config: Path) -> None:
    settings = load_settings(config, {})
    assert settings.server.port == 9000
    assert settings.server.max_body_bytes == 8 * 1024 * 1024
    assert settings.runtime.cpu_affinity == (0,)
    assert settings.batching.max_batch_size == 16
    (model,) = settings.models
    assert model.paths == ((config.parent / "mlp.onnx").resolve(),)
    assert model.policy == "throughput"
    assert model.pin == "onnxruntime/CPU"
    # Model sections inherit the global batching settings and override single keys.
    assert model.batching.max_batch_size == 16
    assert model.batching.max_queue_delay_us == 250
    assert model.batching.max_queue_size == 4
    assert settings.runtime_options().intra_op_threads == 1


def test_environment_beats_file_and_flags_beat_environment(config: Path) -> None:
    env = {
        "EDGEFLEET_AGENT_SERVER_PORT": "9100",
        "EDGEFLEET_AGENT_SERVER_HOST": "::1",
        "EDGEFLEET_AGENT_STATE_DIR": "/tmp/x",
        "EDGEFLEET_AGENT_RUNTIME_CPU_AFFINITY": "0,1",
    }
    settings = load_settings(config, env)
    assert settings.server.port == 9100
    assert settings.server.host == "::1"
    assert settings.state_dir == Path("/tmp/x")
    assert settings.runtime.cpu_affinity == (0, 1)
    flagged = load_settings(config, env, {"server": {"port": 9200, "host": None}})
    assert flagged.server.port == 9200
    assert flagged.server.host == "::1", "a flag left unset must not override"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"EDGEFLEET_AGENT_SERVER_PORT": "eighty"}, "invalid value 'eighty'"),
        ({"EDGEFLEET_AGENT_SERVER_COLOUR": "blue"}, "unknown setting 'server.colour'"),
        ({"EDGEFLEET_AGENT_NOPE": "1"}, "EDGEFLEET_AGENT_NOPE"),
    ],
)
def test_bad_values_are_named(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(None, env)


def test_bad_files(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\nport = 1")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(broken, {})
    with pytest.raises(SettingsError, match="cannot read settings file"):
        load_settings(tmp_path / "missing.toml", {})
    missing_model = tmp_path / "m.toml"
    missing_model.write_text('[models.m]\npaths = ["nowhere.onnx"]\n')
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(missing_model, {})


def test_state_dir_defaults() -> None:
    assert default_state_dir({"STATE_DIRECTORY": "/var/lib/edgefleet"}) == Path(
        "/var/lib/edgefleet"
    )
    assert default_state_dir({"XDG_STATE_HOME": "/s"}) == Path("/s/edgefleet")


# --- Transport: TLS beyond loopback ------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "named", "fix"),
    [
        ({"bundles": {"assignment": "http://10.0.0.1:8080/a"}}, "bundles.assignment", "https://"),
        ({"bundles": {"assignment": "http://cp.example.com/a"}}, "bundles.assignment", "https://"),
        ({"mqtt": {"url": "mqtt://10.0.0.1:1883"}}, "mqtt.url", "mqtts://"),
        ({"mqtt": {"url": "mqtt://broker.example.com"}}, "mqtt.url", "mqtts://"),
    ],
)
def test_plain_links_beyond_loopback_are_refused_unless_allowed(
    overrides: dict[str, dict[str, object]], named: str, fix: str, tmp_path: Path
) -> None:
    with pytest.raises(SettingsError) as refused:
        load_settings(None, {}, overrides)
    message = str(refused.value)
    assert message.startswith(f"{named} = ")
    assert f"use {fix}" in message
    assert "allow_plain_transport = true" in message
    assert "EDGEFLEET_AGENT_ALLOW_PLAIN_TRANSPORT=true" in message
    assert "--allow-plain-transport" in message

    allowed = load_settings(None, {}, {**overrides, "": {"allow_plain_transport": True}})
    assert allowed.allow_plain_transport
    env = {"EDGEFLEET_AGENT_ALLOW_PLAIN_TRANSPORT": "true"}
    assert load_settings(None, env, overrides).allow_plain_transport
    config = tmp_path / "agent.toml"
    config.write_text("allow_plain_transport = true\n")
    assert load_settings(config, {}, overrides).allow_plain_transport


@pytest.mark.parametrize(
    "overrides",
    [
        {"bundles": {"assignment": "http://127.0.0.1:8080/a"}, "mqtt": {"url": "mqtt://[::1]"}},
        {"bundles": {"assignment": "http://localhost/a"}, "mqtt": {"url": "mqtt://127.0.0.2"}},
        {"bundles": {"assignment": "https://10.0.0.1/a"}, "mqtt": {"url": "mqtts://10.0.0.1"}},
        {"bundles": {"assignment": "/srv/edgefleet/assignment.json"}},
    ],
)
def test_loopback_and_tls_links_need_no_permission(overrides: dict[str, dict[str, str]]) -> None:
    settings = load_settings(None, {}, overrides)
    assert not settings.allow_plain_transport


def test_the_cli_and_the_settings_name_one_variable() -> None:
    assert agent_cli.ALLOW_PLAIN_TRANSPORT_ENV == ALLOW_PLAIN_TRANSPORT_ENV


def test_agent_run_refuses_a_plain_remote_assignment_before_any_network(tmp_path: Path) -> None:
    err = io.StringIO()
    argv = ["agent", "run", "--state", str(tmp_path), "--assignment", "http://10.0.0.1/a"]
    with redirect_stderr(err):
        assert main(argv) == 1
    assert "bundles.assignment = http://10.0.0.1/a is not encrypted" in err.getvalue()
