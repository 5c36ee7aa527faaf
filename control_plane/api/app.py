"""Builds the control plane's aiohttp application and runs it until a signal stops it."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from control_plane.api.auth import auth_middleware
from control_plane.api.device_auth import setup_device_identity
from control_plane.api.middleware import error_middleware
from control_plane.api.openapi import ALL_ENDPOINTS
from control_plane.api.routes import add_routes
from control_plane.api.state import (
    ACCESS,
    ASSIGNMENTS,
    DEVICE_ACCESS,
    ENGINE,
    MQTT,
    ROLLOUTS,
    SETTINGS,
)
from control_plane.api.telemetry import ingest_context, retention_context
from control_plane.assignments import AssignmentKeyError, AssignmentService, load_signer
from control_plane.dashboard import setup_dashboard
from control_plane.db.engine import create_engine_for, redact, sqlite_file
from control_plane.db.migrate import check_current
from control_plane.errors import SchemaOutOfDate
from control_plane.rollout_controller import RolloutController
from control_plane.settings import ControlPlaneSettings, InvalidSettings
from shared.http_server import serve_until_stopped
from shared.key_directory import KeyDirectory, passphrase_from_env
from shared.malformed_log import quiet_malformed_requests
from shared.mqtt.client import MqttClient, MqttSettings
from shared.tls import ServerTls, TlsFileError
from shared.trust_errors import KeyFileError

log = logging.getLogger(__name__)

# aiohttp closes a connection on which no complete request header arrived this long after it
# opened or after its last answer: idle keep-alive connections and slowloris headers alike (its
# default is over an hour). Long polls are not affected: the timer stops while a request runs.
IDLE_CONNECTION_TIMEOUT_S = 60.0


def build_app(settings: ControlPlaneSettings) -> web.Application:
    """The API with its routes; the database is opened (and checked) when the app starts."""
    app = web.Application(middlewares=[error_middleware, auth_middleware])
    app[SETTINGS] = settings
    app[ACCESS] = {}
    app[DEVICE_ACCESS] = {}
    add_routes(app, ALL_ENDPOINTS)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_broker)
    app.cleanup_ctx.append(ingest_context)  # after the database and the broker
    app.cleanup_ctx.append(retention_context)
    setup_device_identity(app)  # after the database: the CRL is rewritten from it
    app.cleanup_ctx.append(_assignments)
    app.cleanup_ctx.append(_rollouts)  # after the assignments it reissues through
    setup_dashboard(app)  # the operator dashboard at `/`; after the services it reads
    # Long polls end when the server stops, not when aiohttp's shutdown timeout runs out.
    app.on_shutdown.append(_end_long_polls)
    return app


async def _database(app: web.Application) -> AsyncIterator[None]:
    """Refuse to start on a database that is missing or not at the newest schema."""
    url = app[SETTINGS].database_url
    hint = "run `edgefleet cp migrate` first"
    file = sqlite_file(url)
    if file is not None and not await asyncio.to_thread(file.exists):
        raise SchemaOutOfDate(f"no database at {redact(url)}; {hint}")
    if not await check_current(url):
        raise SchemaOutOfDate(f"{redact(url)} is not at the newest schema; {hint}")
    engine = create_engine_for(url)
    app[ENGINE] = engine
    try:
        yield
    finally:
        await engine.dispose()


async def _broker(app: web.Application) -> AsyncIterator[None]:
    """The control plane's own MQTT connection, when `mqtt_url` is set; it reconnects by itself."""
    settings = app[SETTINGS]
    if not settings.mqtt_url:
        app[MQTT] = None
        yield
        return
    client = MqttClient(broker_settings(settings))
    await client.start()
    app[MQTT] = client
    log.info("connecting to the broker at %s", settings.mqtt_url)
    try:
        yield
    finally:
        await client.stop()


async def _assignments(app: web.Application) -> AsyncIterator[None]:
    """The assignment service and its reconciler, when the key directory has assignment.key."""
    settings = app[SETTINGS]
    if settings.keys_dir is None:
        log.info("no key directory: assignments are disabled (start with --keys)")
        yield
        return
    keys = KeyDirectory(settings.keys_dir)
    try:
        passphrase = passphrase_from_env(settings.keys_passphrase_env or None, os.environ)
    except KeyFileError as error:
        raise AssignmentKeyError(f"cannot use the assignment key: {error}") from None
    signer = await asyncio.to_thread(load_signer, keys, passphrase)
    if signer is None:
        log.warning("no %s: assignments are disabled", keys.key_file("assignment"))
        yield
        return
    service = AssignmentService(settings, app[ENGINE], signer, app[MQTT])
    app[ASSIGNMENTS] = service
    # Reconciling at start heals a desired-state change committed just before a crash.
    task = asyncio.create_task(service.run_reconciler(), name="edgefleet-assignments")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        service.close()


async def _rollouts(app: web.Application) -> AsyncIterator[None]:
    """The rollout controller, which picks running rollouts up from the database at start."""
    service = app.get(ASSIGNMENTS)
    if service is None:
        yield
        return
    settings = app[SETTINGS]
    controller = RolloutController(app[ENGINE], service, settings.rollout_tick_s)
    app[ROLLOUTS] = controller
    task = asyncio.create_task(controller.run(), name="edgefleet-rollouts")
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def _end_long_polls(app: web.Application) -> None:
    service = app.get(ASSIGNMENTS)
    if service is not None:
        service.close()


def broker_settings(settings: ControlPlaneSettings) -> MqttSettings:
    """How this replica connects: a client id unique per host and process."""
    return MqttSettings(
        url=settings.mqtt_url,
        client_id=f"edgefleet-cp-{socket.gethostname()}-{os.getpid()}",
        username=settings.mqtt_username or None,
        password=settings.mqtt_password or None,
        ca_file=Path(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
        cert_file=Path(settings.mqtt_cert_file) if settings.mqtt_cert_file else None,
        key_file=Path(settings.mqtt_key_file) if settings.mqtt_key_file else None,
        protocol=settings.mqtt_protocol,
    )


async def serve(
    settings: ControlPlaneSettings,
    stop: asyncio.Event | None = None,
    started: Callable[[int], None] | None = None,
) -> None:
    """Serve until `stop` is set (or SIGINT/SIGTERM in the main thread), then shut down.

    Under systemd, READY follows the database check (the app's start-up) and the bind, and the
    watchdog is pinged while `/api/v1/health` answers (`shared.http_server`). With
    `tls_cert_file` the API is HTTPS, its certificate loaded here, before anything starts.
    """
    tls = await asyncio.to_thread(_server_tls, settings)
    for link in settings.plain_links():
        log.warning(
            "not encrypted beyond loopback: %s; agents refuse it unless allow_plain_transport "
            "is set on them",
            link,
        )
    quiet_malformed_requests()
    runner = web.AppRunner(
        build_app(settings), access_log=None, keepalive_timeout=IDLE_CONNECTION_TIMEOUT_S
    )
    host = settings.host
    scheme = "https" if tls else "http"
    await serve_until_stopped(
        runner,
        host,
        settings.port,
        lambda port: f"serving the control plane API on {scheme}://{host}:{port}/api/v1",
        stop,
        started,
        live_path="/api/v1/health",
        tls=tls,
    )


def _server_tls(settings: ControlPlaneSettings) -> ServerTls | None:
    """The HTTPS certificate and key, or None for plain HTTP (blocking: reads the files)."""
    if settings.tls_cert_file is None:
        return None
    try:
        return ServerTls.load(settings.tls_cert_file, settings.tls_key_file)
    except TlsFileError as error:
        raise InvalidSettings(f"{error}; check --tls-cert and --tls-key") from None
