"""TLS on the control plane's API: HTTPS served by `cp serve`, the loopback rule, the operator CLI.

Real TLS throughout: a CA and a server certificate for 127.0.0.1 made by `tests.shared.tls`, the
control plane serving them in this event loop, and clients that trust that CA, another one, or
only the system's CAs.
"""

from __future__ import annotations

import asyncio
import io
import ssl
from collections.abc import AsyncIterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from control_plane.api.app import serve
from control_plane.db.engine import create_engine_for, default_database_url, open_session
from control_plane.db.migrate import upgrade
from control_plane.roles import Role
from control_plane.settings import ControlPlaneSettings, InvalidSettings
from control_plane.tokens import create_token
from shared.cli import main
from shared.tls import client_context
from tests.control_plane.fleet import serving
from tests.shared.tls import HttpsPki, make_test_pki

HEALTH = "/api/v1/health"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> HttpsPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"))


def build(tmp_path: Path, env: dict[str, str] | None = None, **flags: Any) -> ControlPlaneSettings:
    return ControlPlaneSettings.build(env or {}, data_dir=tmp_path, **flags)


# --- The loopback rule, as the settings are built ----------------------------------------------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "cp.example.com"])
def test_plain_http_beyond_loopback_is_refused_naming_both_ways_out(
    tmp_path: Path, host: str
) -> None:
    with pytest.raises(InvalidSettings) as refused:
        build(tmp_path, host=host)
    message = str(refused.value)
    assert f"refusing to serve plain HTTP on {host}" in message
    for way_out in ("--tls-cert", "EDGEFLEET_CP_TLS_CERT_FILE", "--behind-tls-proxy"):
        assert way_out in message
    assert "behind_tls_proxy = true" in message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "localhost"])
def test_loopback_stays_plain_by_default(tmp_path: Path, host: str) -> None:
    settings = build(tmp_path, host=host, port=8080)
    assert settings.tls_cert_file is None
    assert settings.base_url.startswith("http://")


def test_the_ways_out_from_flags_environment_and_file(tmp_path: Path, pki: HttpsPki) -> None:
    assert build(tmp_path, host="0.0.0.0", behind_tls_proxy=True).behind_tls_proxy
    env = {"EDGEFLEET_CP_HOST": "0.0.0.0", "EDGEFLEET_CP_BEHIND_TLS_PROXY": "true"}
    assert build(tmp_path, env).behind_tls_proxy
    config = tmp_path / "cp.toml"
    config.write_text('host = "0.0.0.0"\nbehind_tls_proxy = true\n')
    assert ControlPlaneSettings.build({}, config, data_dir=tmp_path).behind_tls_proxy
    env = {
        "EDGEFLEET_CP_HOST": "0.0.0.0",
        "EDGEFLEET_CP_TLS_CERT_FILE": str(pki.server_cert),
        "EDGEFLEET_CP_TLS_KEY_FILE": str(pki.server_key),
    }
    settings = build(tmp_path, env, port=8443)
    assert settings.tls_cert_file == pki.server_cert
    assert settings.base_url == "https://0.0.0.0:8443"  # devices get public_url in practice
    # A flag that says "false" puts the refusal back.
    with pytest.raises(InvalidSettings, match="plain HTTP"):
        build(tmp_path, {"EDGEFLEET_CP_BEHIND_TLS_PROXY": "true"}, host="::", behind_tls_proxy=0)


def test_bad_tls_settings_are_named(tmp_path: Path, pki: HttpsPki) -> None:
    with pytest.raises(InvalidSettings, match="not a valid bool"):
        build(tmp_path, {"EDGEFLEET_CP_BEHIND_TLS_PROXY": "maybe"})
    with pytest.raises(InvalidSettings, match="tls_key_file is set without tls_cert_file"):
        build(tmp_path, tls_key_file=pki.server_key)


def test_plain_links_beyond_loopback_are_listed_for_a_warning(tmp_path: Path) -> None:
    settings = build(
        tmp_path,
        host="0.0.0.0",
        behind_tls_proxy=True,
        public_url="http://cp.internal:8080",
        mqtt_url="mqtt://127.0.0.1:1883",
        device_mqtt_url="mqtts://broker.example.com:8883",
    )
    assert settings.plain_links() == [
        "the API URL devices are told (public_url): http://cp.internal:8080"
    ]
    assert build(tmp_path).plain_links() == []


# --- `cp serve` from the command line ----------------------------------------------------------


def run(*argv: str) -> tuple[int, str]:
    """The command line in-process; the exit status and stderr."""
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(list(argv))
    return code, err.getvalue()


def test_cp_serve_refuses_a_plain_wildcard_bind(tmp_path: Path) -> None:
    code, err = run("cp", "serve", "--data", str(tmp_path), "--host", "0.0.0.0")
    assert code == 1
    assert "refusing to serve plain HTTP on 0.0.0.0" in err
    assert "--tls-cert FILE --tls-key FILE" in err
    assert "--behind-tls-proxy" in err


def test_cp_serve_names_a_certificate_it_cannot_load(tmp_path: Path, pki: HttpsPki) -> None:
    # The key of another certificate: checked before the database or the socket.
    code, err = run(
        "cp", "serve", "--data", str(tmp_path), "--host", "0.0.0.0", "--port", "0",
        "--tls-cert", str(pki.ca), "--tls-key", str(pki.server_key),
    )  # fmt: skip
    assert code == 1
    assert f"cannot load the TLS certificate {pki.ca}" in err
    assert "--tls-key" in err


# --- Serving HTTPS -----------------------------------------------------------------------------


@dataclass
class HttpsControlPlane:
    """A control plane serving HTTPS on 127.0.0.1, and an operator token for it."""

    url: str
    operator: str


async def migrated_with_token(tmp_path: Path) -> tuple[str, str]:
    """A migrated SQLite database and an operator token in it."""
    database_url = default_database_url(tmp_path)
    await upgrade(database_url)
    engine = create_engine_for(database_url)
    try:
        async with open_session(engine) as session:
            token = await create_token(session, "ops", Role.OPERATOR)
    finally:
        await engine.dispose()
    return database_url, token


@pytest.fixture
async def https_cp(tmp_path: Path, pki: HttpsPki) -> AsyncIterator[HttpsControlPlane]:
    database_url, token = await migrated_with_token(tmp_path)
    settings = ControlPlaneSettings.build(
        {},
        data_dir=tmp_path / "cp",
        database_url=database_url,
        port=0,
        tls_cert_file=pki.server_cert,
        tls_key_file=pki.server_key,
    )
    settings.data_dir.mkdir()
    async with serving(settings) as url:
        yield HttpsControlPlane(url, token)


async def get_status(url: str, tls: ssl.SSLContext | bool) -> int:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=tls)) as session,
        session.get(url) as response,
    ):
        return response.status


async def test_cp_serves_https_that_only_its_ca_vouches_for(
    https_cp: HttpsControlPlane, pki: HttpsPki
) -> None:
    assert https_cp.url.startswith("https://127.0.0.1:")
    trusted = await asyncio.to_thread(client_context, pki.ca)
    assert await get_status(https_cp.url + HEALTH, trusted) == 200
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get_status(https_cp.url + HEALTH, True)  # the system's CAs
    other = await asyncio.to_thread(client_context, pki.other_ca)
    with pytest.raises(aiohttp.ClientConnectorCertificateError):
        await get_status(https_cp.url + HEALTH, other)
    plain = https_cp.url.replace("https://", "http://")
    with pytest.raises(aiohttp.ClientError):
        await get_status(plain + HEALTH, True)  # no plain HTTP on the TLS port


async def test_behind_a_tls_proxy_the_wildcard_bind_starts(tmp_path: Path) -> None:
    database_url, _ = await migrated_with_token(tmp_path)
    settings = ControlPlaneSettings.build(
        {},
        data_dir=tmp_path / "cp",
        database_url=database_url,
        host="0.0.0.0",
        port=0,
        behind_tls_proxy=True,
    )
    settings.data_dir.mkdir()
    async with serving(settings) as url:
        assert url.startswith("http://")
        assert await get_status(url + HEALTH, True) == 200


async def test_a_certificate_that_cannot_load_stops_serve_before_it_listens(
    tmp_path: Path, pki: HttpsPki
) -> None:
    settings = build(tmp_path, port=0, tls_cert_file=tmp_path / "missing.crt")
    with pytest.raises(InvalidSettings, match=r"missing\.crt .*no such file"):
        await serve(settings, asyncio.Event())


# --- The operator command line against HTTPS ---------------------------------------------------


async def operator_cli(*argv: str) -> tuple[int, str, str]:
    """An operator command in a thread (it runs its own event loop): status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()

    def call() -> int:
        with redirect_stdout(out), redirect_stderr(err):
            return main(list(argv))

    code = await asyncio.to_thread(call)
    return code, out.getvalue(), err.getvalue()


async def test_operator_cli_with_ca_file(
    https_cp: HttpsControlPlane, pki: HttpsPki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EDGEFLEET_CA_FILE", raising=False)
    target = ("--cp", https_cp.url, "--token", https_cp.operator, "--json")
    code, out, err = await operator_cli("models", "ls", *target, "--ca-file", str(pki.ca))
    assert code == 0, err
    assert '"models": []' in out

    code, _, err = await operator_cli("models", "ls", *target)
    assert code == 1
    assert "presented a certificate that is not trusted" in err
    assert "--ca-file FILE or EDGEFLEET_CA_FILE" in err

    monkeypatch.setenv("EDGEFLEET_CA_FILE", str(pki.ca))
    code, _, err = await operator_cli("groups", "ls", *target)
    assert code == 0, err

    code, _, err = await operator_cli("models", "ls", *target, "--ca-file", str(pki.server_key))
    assert code == 1
    assert f"cannot use {pki.server_key} as CA certificates" in err
    assert "--ca-file" in err


# --- Slow and idle clients ----------------------------------------------------------------------


async def test_a_header_that_never_ends_is_closed_by_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same aiohttp timer closes idle keep-alive connections; 60 s in service, 0.5 s here.
    monkeypatch.setattr("control_plane.api.app.IDLE_CONNECTION_TIMEOUT_S", 0.5)
    database_url, _ = await migrated_with_token(tmp_path)
    settings = build(tmp_path / "cp", database_url=database_url, host="127.0.0.1", port=0)
    settings.data_dir.mkdir()
    async with serving(settings) as url:
        host, port = url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: cp\r\nX-Slow: ")  # never ends
            await writer.drain()
            closed = await asyncio.wait_for(reader.read(), timeout=20)  # EOF: the server closed
        finally:
            writer.close()
        assert b"200 OK" not in closed
        assert await get_status(url + HEALTH, True) == 200  # and it serves everyone else
