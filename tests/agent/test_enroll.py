"""`edgefleet agent enroll` against a real control plane, and `agent run --state` settings.

Also over HTTPS: a control plane serving a certificate from a test CA (`tests.shared.tls`), which
the device trusts only when enrolled with `--cp-ca`, for enrollment and for assignments.
"""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from agent.bundles.sync import AssignmentSource
from agent.config import SettingsError
from agent.identity import (
    IdentityFiles,
    control_plane_session,
    control_plane_tls,
    load_identity,
    load_run_settings,
    request_signer,
)
from agent.runner import load_trust
from control_plane.api.app import build_app
from control_plane.db.engine import create_engine_for, default_database_url
from control_plane.db.migrate import upgrade
from control_plane.settings import ControlPlaneSettings
from shared.assignment import verify_assignment
from shared.cli import build_parser, main
from shared.key_directory import KeyDirectory
from shared.tls import client_context
from tests.control_plane.fleet import bearer, cp_settings, role_secrets, serving
from tests.shared.tls import make_test_pki


@dataclass
class ControlPlane:
    """A control plane serving on a free port, with its key directory and operator tokens."""

    url: str
    keys: Path
    secrets: dict[str, str]
    ca: Path | None = None  # the CA of its HTTPS certificate; None: plain HTTP

    async def token(self, **body: object) -> str:
        """A new enrollment token."""
        tls = await asyncio.to_thread(client_context, self.ca) if self.ca else True
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as session,
            session.post(
                f"{self.url}/api/v1/enroll-tokens",
                json=body,
                headers=bearer(self.secrets["operator"]),
            ) as response,
        ):
            assert response.status == 201
            secret: str = (await response.json())["secret"]
            return secret


@pytest.fixture
async def control_plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    url = default_database_url(tmp_path)
    await upgrade(url)
    engine = create_engine_for(url)
    try:
        secrets = await role_secrets(engine)
    finally:
        await engine.dispose()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = await asyncio.to_thread(
        cp_settings, tmp_path, url, port=port, device_mqtt_url="mqtts://broker:8883"
    )
    settings.data_dir.mkdir()
    server = TestServer(build_app(settings), port=port)
    await server.start_server()
    try:
        assert settings.keys_dir is not None
        yield ControlPlane(settings.base_url, settings.keys_dir, secrets)
    finally:
        await server.close()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
async def https_control_plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """`cp serve` with --tls-cert/--tls-key and an assignment key: it signs assignments."""
    pki = await asyncio.to_thread(make_test_pki, tmp_path / "pki")
    url = default_database_url(tmp_path)
    await upgrade(url)
    engine = create_engine_for(url)
    try:
        secrets = await role_secrets(engine)
    finally:
        await engine.dispose()
    keys = KeyDirectory(tmp_path / "keys")
    await asyncio.to_thread(keys.create, time.time())
    for role in ("root", "release"):  # a control plane holds the assignment key only
        keys.key_file(role).unlink()
    settings = ControlPlaneSettings.build(
        {},
        data_dir=tmp_path / "cp",
        database_url=url,
        keys_dir=keys.path,
        port=free_port(),  # known before it starts: it is in the URLs devices are told
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
    )
    settings.data_dir.mkdir()
    async with serving(settings) as served:
        assert served == settings.base_url
        yield ControlPlane(served, keys.path, secrets, pki.ca)


async def cli(*argv: str) -> tuple[int, str]:
    """Run the command line in a thread (it runs its own event loop); return status, stderr."""
    out, err = io.StringIO(), io.StringIO()

    def run() -> int:
        with redirect_stdout(out), redirect_stderr(err):
            return main(list(argv))

    code = await asyncio.to_thread(run)
    return code, err.getvalue()


def enroll_args(cp: ControlPlane, token: str, state: Path, *more: str) -> list[str]:
    return [
        "agent", "enroll", "--cp", cp.url, "--token", token, "--state", str(state),
        "--device-id", "edge-1", *more,
    ]  # fmt: skip


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


async def test_enroll_with_root_key_then_run_signs_requests(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    token = await control_plane.token(groups=["lab"], labels={"site": "paris"}, region="eu")
    root = str(control_plane.keys / "root.pub")
    code, err = await cli(*enroll_args(control_plane, token, state, "--root-key", root))
    assert code == 0, err
    assert "enrolled as edge-1" in err
    assert "trust on first use" not in err

    files = IdentityFiles(state)
    assert mode(files.directory) == 0o700
    for path in (files.key, files.certificate, files.ca_certificate, files.root_key):
        assert mode(path) == 0o600, path
    assert mode(files.identity_json) == 0o600
    assert mode(files.keylist) == 0o600
    assert files.keylist.read_bytes() == (control_plane.keys / "keylist.json").read_bytes()
    assert files.root_key.read_bytes() == (control_plane.keys / "root.pub").read_bytes()
    document = json.loads(files.identity_json.read_text())
    assert document["device_id"] == "edge-1"
    assert document["assignment_url"] == f"{control_plane.url}/api/v1/devices/edge-1/assignment"
    assert (document["api_url"], document["mqtt_url"]) == (control_plane.url, "mqtts://broker:8883")
    assert (document["groups"], document["labels"], document["region"]) == (
        ["lab"], {"site": "paris"}, "eu",
    )  # fmt: skip

    # `agent run --state` picks the identity up and signs its requests with the device key.
    settings = await asyncio.to_thread(load_run_settings, None, {}, {"": {"state_dir": str(state)}})
    signer = await asyncio.to_thread(request_signer, settings)
    assert signer is not None
    async with aiohttp.ClientSession(middlewares=(signer,)) as session:
        async with session.get(f"{control_plane.url}/api/v1/devices/edge-1") as response:
            assert response.status == 200
            assert (await response.json())["hardware"]["hostname"]
        async with session.get(f"{control_plane.url}/api/v1/bundles/{'0' * 64}") as response:
            assert response.status == 404  # authenticated as the device; no such bundle

    # Enrolled already: refused without --force, and a used token is refused by the server.
    code, err = await cli(*enroll_args(control_plane, token, state))
    assert code == 1
    assert "pass --force" in err
    code, err = await cli(*enroll_args(control_plane, token, tmp_path / "other"))
    assert code == 1
    assert "refused the enrollment token" in err
    assert "already used" in err


async def test_trust_on_first_use_says_so(control_plane: ControlPlane, tmp_path: Path) -> None:
    code, err = await cli(*enroll_args(control_plane, await control_plane.token(), tmp_path / "s"))
    assert code == 0, err
    assert "trust on first use" in err
    assert load_identity(tmp_path / "s") is not None


async def test_wrong_root_key_refuses_and_writes_nothing(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    stranger = KeyDirectory(tmp_path / "stranger")
    await asyncio.to_thread(stranger.create, 0.0)
    state = tmp_path / "state"
    token = await control_plane.token()
    root = str(stranger.path / "root.pub")
    code, err = await cli(*enroll_args(control_plane, token, state, "--root-key", root))
    assert code == 1
    assert "is not the pinned root key" in err
    assert "nothing was written" in err
    assert not state.exists()


async def test_existing_device_and_unreachable_control_plane(
    control_plane: ControlPlane, tmp_path: Path
) -> None:
    assert (await cli(*enroll_args(control_plane, await control_plane.token(), tmp_path / "a")))[
        0
    ] == 0
    token = await control_plane.token()
    code, err = await cli(*enroll_args(control_plane, token, tmp_path / "b"))
    assert code == 1
    assert "already enrolled" in err
    assert "revoke" in err

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    code, err = await cli(
        "agent", "enroll", "--cp", f"http://127.0.0.1:{closed}", "--token", token,
        "--state", str(tmp_path / "c"),
    )  # fmt: skip
    assert code == 1
    assert "cannot reach the control plane" in err
    assert not (tmp_path / "c").exists()


def write_identity(state: Path, mqtt_url: str | None = "mqtts://broker:8883") -> None:
    state.mkdir(parents=True, exist_ok=True)
    document = {
        "device_id": "edge-7",
        "api_url": "https://cp.example.com",
        "assignment_url": "https://cp.example.com/api/v1/devices/edge-7/assignment",
        "mqtt_url": mqtt_url,
        "groups": ["lab", "eu"],
        "labels": {"site": "paris"},
        "region": "eu",
        "enrolled_at": "2026-11-29T00:00:00+00:00",
    }
    (state / "identity.json").write_text(json.dumps(document))


def test_run_settings_come_from_the_identity(tmp_path: Path) -> None:
    write_identity(tmp_path)
    settings = load_run_settings(None, {}, {"": {"state_dir": str(tmp_path)}})
    files = IdentityFiles(tmp_path)
    assert settings.device_id == "edge-7"
    assert settings.bundles.assignment == "https://cp.example.com/api/v1/devices/edge-7/assignment"
    assert settings.bundles.root_key == str(files.root_key)
    assert settings.bundles.keylist == str(tmp_path / "keylist.json")
    assert (settings.mqtt.url, settings.mqtt.groups) == ("mqtts://broker:8883", "lab,eu")
    assert (settings.mqtt.ca_file, settings.mqtt.cert_file, settings.mqtt.key_file) == (
        str(files.ca_certificate), str(files.certificate), str(files.key),
    )  # fmt: skip


def test_file_environment_and_flags_still_override(tmp_path: Path) -> None:
    write_identity(tmp_path / "state", mqtt_url="mqtt://plain:1883")
    config = tmp_path / "agent.toml"
    config.write_text(f'state_dir = "{tmp_path / "state"}"\n[mqtt]\ngroups = "mine"\n')
    env = {
        "EDGEFLEET_AGENT_BUNDLES_POLL_INTERVAL_S": "5",
        "EDGEFLEET_AGENT_MQTT_URL": "mqtt://127.0.0.2",
    }
    overrides = {"bundles": {"assignment": "/srv/assignment.json", "root_key": None}}
    settings = load_run_settings(config, env, overrides)
    assert settings.device_id == "edge-7"
    assert settings.bundles.assignment == "/srv/assignment.json"
    assert settings.bundles.root_key.endswith("identity/root.pub")
    assert settings.bundles.poll_interval_s == 5
    assert (settings.mqtt.url, settings.mqtt.groups) == ("mqtt://127.0.0.2", "mine")
    assert settings.mqtt.cert_file == ""  # not mqtts: no client certificate


def test_a_different_device_id_is_refused(tmp_path: Path) -> None:
    write_identity(tmp_path)
    with pytest.raises(SettingsError, match="differs from 'edge-7'"):
        load_run_settings(None, {}, {"": {"state_dir": str(tmp_path), "device_id": "edge-8"}})
    same = load_run_settings(None, {}, {"": {"state_dir": str(tmp_path), "device_id": "edge-7"}})
    assert same.device_id == "edge-7"


def test_without_identity_nothing_changes(tmp_path: Path) -> None:
    settings = load_run_settings(None, {}, {"": {"state_dir": str(tmp_path)}})
    assert (settings.bundles.assignment, settings.mqtt.url) == ("", "")
    assert request_signer(settings) is None


def test_a_broken_identity_says_to_enroll_again(tmp_path: Path) -> None:
    (tmp_path / "identity.json").write_text("[]")
    with pytest.raises(SettingsError, match="enroll again"):
        load_run_settings(None, {}, {"": {"state_dir": str(tmp_path)}})


@pytest.mark.parametrize("flag", ["--state", "--state-dir"])
def test_state_flag_and_its_alias(flag: str) -> None:
    args = build_parser().parse_args(["agent", "run", flag, "/srv/edge", "--port", "8001"])
    assert (args.state_dir, args.port) == (Path("/srv/edge"), 8001)


# --- Over HTTPS --------------------------------------------------------------------------------


async def test_enroll_over_https_with_cp_ca_then_fetch_the_assignment(
    https_control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp = https_control_plane
    assert cp.ca is not None
    assert cp.url.startswith("https://127.0.0.1:")
    state = tmp_path / "state"
    token = await cp.token()

    # Without the CA the device cannot trust the control plane: refused, nothing written, and
    # the token is not spent.
    code, err = await cli(*enroll_args(cp, token, state))
    assert code == 1
    assert f"the control plane at {cp.url}/api/v1/enroll presented a certificate" in err
    assert "pass that CA's certificate with --cp-ca FILE" in err
    assert "nothing was written" in err
    assert not state.exists()

    code, err = await cli(*enroll_args(cp, token, state, "--cp-ca", str(cp.ca)))
    assert code == 0, err
    files = IdentityFiles(state)
    assert files.cp_ca_certificate.read_bytes() == cp.ca.read_bytes()
    assert mode(files.cp_ca_certificate) == 0o600

    # `agent run --state` finds the CA and reaches the control plane as the runner does: a
    # signed long-poll over HTTPS, answered with the device's first signed assignment.
    settings = await asyncio.to_thread(load_run_settings, None, {}, {"": {"state_dir": str(state)}})
    assert settings.bundles.ca_file == str(files.cp_ca_certificate)
    assert settings.bundles.assignment == f"{cp.url}/api/v1/devices/edge-1/assignment"
    tls = await asyncio.to_thread(control_plane_tls, settings)
    signer = await asyncio.to_thread(request_signer, settings)
    trust = await asyncio.to_thread(load_trust, settings)
    with ThreadPoolExecutor(1) as executor:
        async with control_plane_session(signer, tls) as session:
            source = AssignmentSource.for_location(settings.bundles.assignment, session, executor)
            document = await source.fetch()
        # The system's CAs alone do not vouch for it: the device needs the stored CA.
        async with control_plane_session(signer, None) as session:
            source = AssignmentSource.for_location(settings.bundles.assignment, session, executor)
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await source.fetch()
    assert document is not None
    assignment = verify_assignment(
        document, trust, device_id="edge-1", last_serial=0, now=time.time()
    )
    assert assignment.models == ()


async def test_a_cp_ca_that_is_not_a_certificate_is_refused(
    https_control_plane: ControlPlane, tmp_path: Path
) -> None:
    not_a_ca = tmp_path / "key.pem"
    not_a_ca.write_text("not a certificate\n")
    state = tmp_path / "state"
    token = await https_control_plane.token()
    code, err = await cli(*enroll_args(https_control_plane, token, state, "--cp-ca", str(not_a_ca)))
    assert code == 1
    assert "--cp-ca: cannot use the CA certificates" in err
    assert not state.exists()


async def test_plain_http_beyond_loopback_is_refused_before_any_network(tmp_path: Path) -> None:
    state = tmp_path / "state"
    code, err = await cli(
        "agent", "enroll", "--cp", "http://10.0.0.1:8080", "--token", "efe_x",
        "--state", str(state),
    )  # fmt: skip
    assert code == 1
    assert "--cp http://10.0.0.1:8080 is plain HTTP to a host that is not loopback" in err
    assert "--allow-plain-transport" in err
    assert "--cp-ca" in err
    assert not state.exists()


def test_run_settings_keep_an_explicit_ca_file(tmp_path: Path) -> None:
    write_identity(tmp_path)
    files = IdentityFiles(tmp_path)
    files.directory.mkdir()
    files.cp_ca_certificate.write_text("stored\n")
    overrides = {"": {"state_dir": str(tmp_path)}, "bundles": {"ca_file": "/etc/ssl/cp.pem"}}
    assert load_run_settings(None, {}, overrides).bundles.ca_file == "/etc/ssl/cp.pem"
    stored = load_run_settings(None, {}, {"": {"state_dir": str(tmp_path)}})
    assert stored.bundles.ca_file == str(files.cp_ca_certificate)
