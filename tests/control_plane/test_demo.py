"""`edgefleet demo`'s preparations: its directory, its ports, its broker, its children's env."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from control_plane.demo import (
    MARKER,
    check_ports,
    child_environment,
    choose_broker,
    prepare_directory,
)
from control_plane.demo_processes import DemoError
from control_plane.demo_settings import DemoSettings
from shared.mqtt.broker import free_port


def settings_in(directory: Path) -> DemoSettings:
    return DemoSettings(directory, cp_port=free_port(), agent_port=free_port(), mqtt_port=0)


def test_a_taken_port_is_named_with_the_option_that_changes_it(tmp_path: Path) -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        taken = server.getsockname()[1]
        settings = DemoSettings(tmp_path, cp_port=free_port(), agent_port=taken, mqtt_port=1)
        with pytest.raises(DemoError, match=f"port {taken} on 127.0.0.1.*--agent-port.*AGENT_PORT"):
            check_ports(settings)


def test_the_three_ports_must_differ(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match="three different ports"):
        check_ports(DemoSettings(tmp_path, cp_port=9000, agent_port=9000, mqtt_port=9001))


def test_fresh_wipes_only_a_demo_directory(tmp_path: Path) -> None:
    settings = settings_in(tmp_path / "demo")
    settings.directory.mkdir()
    (settings.directory / "notes.txt").write_text("mine")
    with pytest.raises(DemoError, match=f"did not write .*{MARKER}"):
        prepare_directory(settings, fresh=True)
    assert (settings.directory / "notes.txt").exists()

    (settings.directory / "notes.txt").unlink()
    (settings.directory / "models").mkdir()  # the older `make demo` left this: adopted
    assert prepare_directory(settings, fresh=False) == []
    assert (settings.directory / MARKER).exists()
    (settings.directory / "keys").mkdir()
    prepare_directory(settings, fresh=True)
    assert sorted(p.name for p in settings.directory.iterdir()) == [MARKER]


def test_the_broker_is_mosquitto_when_installed() -> None:
    assert choose_broker("auto", "/usr/sbin/mosquitto") == "/usr/sbin/mosquitto"
    assert choose_broker("embedded", "/usr/sbin/mosquitto") is None
    assert choose_broker("auto", None) is None  # amqtt is a dev dependency
    with pytest.raises(DemoError, match="Mosquitto is not installed"):
        choose_broker("mosquitto", None)


def test_children_speak_mqtt_3_with_the_embedded_broker_and_keep_the_callers_settings() -> None:
    caller = {
        "PATH": "/usr/bin",
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "EDGEFLEET_AGENT_BUNDLES_PROBATION_DURATION_S": "30",
    }
    env = child_environment(caller, embedded_broker=True)
    assert env["EDGEFLEET_CP_MQTT_PROTOCOL"] == env["EDGEFLEET_AGENT_MQTT_PROTOCOL"] == "4"
    assert env["EDGEFLEET_AGENT_BUNDLES_PROBATION_DURATION_S"] == "30"
    assert env["EDGEFLEET_CP_ROLLOUT_TICK_S"] == "1"
    assert env["PATH"] == "/usr/bin"
    assert "NOTIFY_SOCKET" not in env
    assert "EDGEFLEET_AGENT_MQTT_PROTOCOL" not in child_environment(caller, embedded_broker=False)
