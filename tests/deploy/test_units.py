"""The systemd units in deploy/systemd: verified by systemd itself, hardened, and consistent.

`systemd-analyze` comes with the `systemd` package, which installs on any Debian machine
(including containers, where systemd is not PID 1: `verify` and `security --offline` need no
running manager). A Linux machine without it fails these tests with the command to run;
elsewhere (macOS) they are skipped, since no unit would run there anyway.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from agent.config import load_settings
from control_plane.settings import ControlPlaneSettings
from shared.cli import build_parser

SYSTEMD_DIR = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
UNITS = sorted(p.name for p in SYSTEMD_DIR.glob("edgefleet-*.*"))
SERVICES = [name for name in UNITS if name.endswith(".service")]
INSTALLED_COMMAND = "/opt/edgefleet/venv/bin/edgefleet"
# The worst `systemd-analyze security` exposure accepted, in tenths (1.9 is "OK").
MAX_EXPOSURE = 25


def read_unit(name: str) -> dict[str, list[str]]:
    """`Section.Key` -> values, in order (a key may repeat, like SystemCallFilter=)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in (SYSTEMD_DIR / name).read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, sep, value = line.partition("=")
        assert sep, f"{name}: not Key=Value: {line!r}"
        settings.setdefault(f"{section}.{key}", []).append(value)
    return settings


def systemd_analyze() -> str:
    """The systemd-analyze binary; fails (Linux) or skips (elsewhere) when it is missing."""
    found = shutil.which("systemd-analyze")
    if found is None:
        if not sys.platform.startswith("linux"):
            pytest.skip("systemd units are verified on Linux only")
        pytest.fail(
            "systemd-analyze is missing: install systemd (`apt-get install systemd`, or "
            "`make system-deps`) to verify the units in deploy/systemd"
        )
    return found


@pytest.fixture(scope="module")
def unit_copies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The units with ExecStart= on this checkout's `edgefleet`: verify checks it is executable."""
    directory = tmp_path_factory.mktemp("units")
    local = str(Path(sys.executable).parent / "edgefleet")
    assert Path(local).is_file(), f"{local} is missing: install the project (make venv)"
    for name in UNITS:
        text = (SYSTEMD_DIR / name).read_text()
        (directory / name).write_text(text.replace(INSTALLED_COMMAND, local))
    return directory


def test_every_unit_is_there() -> None:
    assert UNITS == [
        "edgefleet-agent.service",
        "edgefleet-batch.service",
        "edgefleet-batch.timer",
        "edgefleet-cp.service",
    ]


@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_accepts_the_unit(name: str, unit_copies: Path) -> None:
    result = subprocess.run(
        [systemd_analyze(), "verify", str(unit_copies / name)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Warnings (unknown keys, bad values) are printed without failing: none are accepted.
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


@pytest.mark.parametrize("name", SERVICES)
def test_the_service_is_hardened(name: str, unit_copies: Path) -> None:
    analyze = systemd_analyze()
    version = subprocess.run([analyze, "--version"], capture_output=True, text=True, check=True)
    found = re.match(r"systemd (\d+)", version.stdout)
    if found is None or int(found.group(1)) < 252:
        pytest.skip("`systemd-analyze security --offline` needs systemd 252 or newer")
    result = subprocess.run(
        [
            analyze,
            "security",
            "--offline=true",
            f"--threshold={MAX_EXPOSURE}",
            "--no-pager",
            str(unit_copies / name),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["edgefleet-agent.service", "edgefleet-cp.service"])
def test_the_long_running_services_have_what_the_issue_asks_for(name: str) -> None:
    unit = read_unit(name)
    expected = {
        "Service.Type": ["notify"],
        "Service.Restart": ["on-failure"],
        "Service.ProtectSystem": ["strict"],
        "Service.ProtectHome": ["yes"],
        "Service.PrivateTmp": ["yes"],
        "Service.NoNewPrivileges": ["yes"],
        "Service.CapabilityBoundingSet": [""],
        "Service.AmbientCapabilities": [""],
        "Service.ConfigurationDirectory": ["edgefleet"],
    }
    assert {key: unit.get(key) for key in expected} == expected
    for key in ("WatchdogSec", "MemoryMax", "TimeoutStartSec", "StateDirectory", "User"):
        assert unit.get(f"Service.{key}"), f"{name} has no {key}="
    assert unit["Service.User"] != ["root"]
    assert "DynamicUser" not in unit


def test_the_agent_unit_runs_the_production_agent() -> None:
    unit = read_unit("edgefleet-agent.service")
    assert unit["Service.User"] == ["edgefleet"]
    assert unit["Service.StateDirectory"] == ["edgefleet"]
    assert unit["Service.ExecStart"] == [
        f"{INSTALLED_COMMAND} agent run --config /etc/edgefleet/agent.toml "
        "--state /var/lib/edgefleet"
    ]


def test_the_timer_starts_the_batch_service() -> None:
    timer = read_unit("edgefleet-batch.timer")
    assert timer["Timer.OnCalendar"]
    assert timer["Timer.Persistent"] == ["true"]
    assert read_unit("edgefleet-batch.service")["Service.Type"] == ["oneshot"]


@pytest.mark.parametrize("name", UNITS)
def test_exec_start_is_a_valid_command_line(name: str) -> None:
    """Flags that the command line does not know would only fail on the device, at start."""
    commands = read_unit(name).get("Service.ExecStart", [])
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == INSTALLED_COMMAND
        if argv[1] not in {e.name for e in entry_points(group="edgefleet.commands")}:
            pytest.skip(f"`edgefleet {argv[1]}` is not installed in this checkout yet")
        build_parser().parse_args(argv[1:])


def test_the_example_settings_load() -> None:
    agent = load_settings(SYSTEMD_DIR / "agent.toml.example", {})
    assert str(agent.state_dir) == "/var/lib/edgefleet"
    cp = ControlPlaneSettings.build(
        {}, SYSTEMD_DIR / "cp.toml.example", data_dir=Path("/var/lib/edgefleet-cp")
    )
    assert cp.public_url == "https://cp.example.com"
