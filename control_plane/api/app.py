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
from control_plane.api.middleware import error_middleware
from control_plane.api.openapi import ALL_ENDPOINTS
from control_plane.api.routes import add_routes
from control_plane.api.state import ACCESS, DEVICE_ACCESS, ENGINE, MQTT, SETTINGS
from control_plane.db.engine import create_engine_for, redact, sqlite_file
from control_plane.db.migrate import check_current
from control_plane.errors import SchemaOutOfDate
from control_plane.settings import ControlPlaneSettings
from shared.http_server import serve_until_stopped
from shared.mqtt.client import MqttClient, MqttSettings

log = logging.getLogger(__name__)


def build_app(settings: ControlPlaneSettings) -> web.Application:
    """The API with its routes; the database is opened (and checked) when the app starts."""
    app = web.Application(middlewares=[error_middleware, auth_middleware])
    app[SETTINGS] = settings
    app[ACCESS] = {}
    app[DEVICE_ACCESS] = {}
    add_routes(app, ALL_ENDPOINTS)
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_broker)
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
    """Serve until `stop` is set (or SIGINT/SIGTERM in the main thread), then shut down."""
    runner = web.AppRunner(build_app(settings), access_log=None)
    host = settings.host
    await serve_until_stopped(
        runner,
        host,
        settings.port,
        lambda port: f"serving the control plane API on http://{host}:{port}/api/v1",
        stop,
        started,
    )
