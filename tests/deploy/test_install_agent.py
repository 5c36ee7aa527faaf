"""deploy/install-agent.sh, run for real under `--root` (a temporary directory as /).

The venv is made and pip installs into it for real; what it installs is a small wheel holding
a fake `edgefleet` (tests/deploy/fake_edgefleet.py), so the test needs no network and takes
seconds. Under `--root` the script makes no user, chowns nothing and only prints its systemctl
commands.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SCRIPT = DEPLOY / "install-agent.sh"
UNITS = ("edgefleet-agent.service", "edgefleet-batch.service", "edgefleet-batch.timer")


def record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


@pytest.fixture(scope="module")
def fake_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A wheel named `edgefleet` whose `edgefleet` command is the fake."""
    dist = "edgefleet-0.0.0.dist-info"
    files = {
        "edgefleet_fake.py": (Path(__file__).parent / "fake_edgefleet.py").read_bytes(),
        f"{dist}/METADATA": b"Metadata-Version: 2.1\nName: edgefleet\nVersion: 0.0.0\n",
        f"{dist}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: edgefleet-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
        f"{dist}/entry_points.txt": b"[console_scripts]\nedgefleet = edgefleet_fake:main\n",
    }
    record = [record_line(path, data) for path, data in files.items()] + [f"{dist}/RECORD,,"]
    wheel = tmp_path_factory.mktemp("wheel") / "edgefleet-0.0.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return wheel


def run_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_ENROLL_TOKEN"}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return subprocess.run(
        ["bash", str(SCRIPT), *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


def enroll_calls(root: Path) -> list[dict[str, Any]]:
    calls = root / "var/lib/edgefleet/enroll-calls.jsonl"
    return [json.loads(line) for line in calls.read_text().splitlines()]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_install_twice_then_uninstall(fake_wheel: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    root_key = tmp_path / "root.pub"
    root_key.write_text("the pinned root key\n")
    install: list[str | Path] = [
        "--root",
        root,
        "--source",
        fake_wheel,
        "--extras",
        "openvino,tflite",
        "--python",
        sys.executable,
    ]
    enroll: list[str | Path] = [
        "--cp",
        "https://cp.example.com",
        "--token",
        "efe_secret",
        "--device-id",
        "edge-7",
    ]

    cp_ca = tmp_path / "cp-ca.crt"
    cp_ca.write_text("the control plane's private CA\n")
    first = run_script(*install, *enroll, "--root-key", root_key, "--cp-ca", cp_ca)
    assert first.returncode == 0, first.stdout + first.stderr
    assert (root / "opt/edgefleet/venv/bin/edgefleet").is_file()
    config = root / "etc/edgefleet/agent.toml"
    assert config.read_text() == (DEPLOY / "systemd/agent.toml.example").read_text()
    assert mode(config) == 0o640
    for unit in UNITS:
        installed = root / "etc/systemd/system" / unit
        assert installed.read_bytes() == (DEPLOY / "systemd" / unit).read_bytes()
    state = root / "var/lib/edgefleet"
    assert mode(state) == 0o700
    [call] = enroll_calls(root)
    assert call["token"] == "efe_secret", "the token goes through the environment"
    assert "efe_secret" not in call["argv"], "the token must stay out of `ps`"
    assert call["argv"] == [
        "agent",
        "enroll",
        "--cp",
        "https://cp.example.com",
        "--state",
        str(state),
        "--device-id",
        "edge-7",
        "--root-key",
        str(root / "etc/edgefleet/root.pub"),
        "--cp-ca",
        str(root / "etc/edgefleet/cp-ca.crt"),
    ]
    assert (root / "etc/edgefleet/root.pub").read_text() == "the pinned root key\n"
    assert (root / "etc/edgefleet/cp-ca.crt").read_text() == "the control plane's private CA\n"
    for command in ("daemon-reload", "enable edgefleet-agent.service"):
        assert f"would run: systemctl {command}" in first.stdout

    # Again, with a local change to the settings: kept, and no second enrollment.
    config.write_text(config.read_text() + "# changed on the device\n")
    second = run_script(*install, *enroll)
    assert second.returncode == 0, second.stdout + second.stderr
    assert config.read_text().endswith("# changed on the device\n")
    assert len(enroll_calls(root)) == 1
    assert "already enrolled" in second.stdout
    # An upgrade needs no token once enrolled.
    upgrade = run_script(*install)
    assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr

    for _ in range(2):  # uninstalling is idempotent too
        removed = run_script("--root", root, "--uninstall")
        assert removed.returncode == 0, removed.stdout + removed.stderr
        assert not (root / "opt/edgefleet").exists()
        assert not (root / "etc/edgefleet").exists()
        assert not any((root / "etc/systemd/system" / unit).exists() for unit in UNITS)
        assert (state / "identity.json").is_file(), "the device identity stays"

    purged = run_script("--root", root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not state.exists()


def test_a_device_that_is_not_enrolled_needs_a_token(tmp_path: Path) -> None:
    result = run_script("--root", tmp_path, "--cp", "https://cp.example.com")
    assert result.returncode == 1
    assert "not enrolled yet: give --cp URL and --token TOKEN" in result.stderr
    assert not (tmp_path / "opt").exists(), "it fails before installing anything"


def test_the_uninstall_keeps_what_the_control_plane_put_in_etc(tmp_path: Path) -> None:
    etc = tmp_path / "etc/edgefleet"
    etc.mkdir(parents=True)
    (etc / "agent.toml").write_text("")
    (etc / "cp.toml").write_text("")
    result = run_script("--root", tmp_path, "--uninstall")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in etc.iterdir()) == ["cp.toml"]


def test_help_and_unknown_options() -> None:
    helped = run_script("--help")
    assert helped.returncode == 0
    assert helped.stdout.startswith("usage: install-agent.sh --cp URL --token TOKEN")
    wrong = run_script("--tokn", "x")
    assert wrong.returncode == 1
    assert "unknown option --tokn" in wrong.stderr
    missing = run_script("--cp")
    assert missing.returncode == 1
    assert "--cp needs a value" in missing.stderr


def test_shellcheck_finds_nothing() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck, or make system-deps)")
    result = subprocess.run(
        [shellcheck, "--shell=bash", str(SCRIPT)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout
