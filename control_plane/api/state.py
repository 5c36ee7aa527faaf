"""Typed keys for what the application and each request carry."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.assignments import AssignmentService
from control_plane.db.models import OperatorToken
from control_plane.ingest import IngestService
from control_plane.roles import Role
from control_plane.rollout_controller import RolloutController
from control_plane.settings import ControlPlaneSettings
from shared.mqtt.client import MqttClient

SETTINGS = web.AppKey("settings", ControlPlaneSettings)
ENGINE = web.AppKey("engine", AsyncEngine)
# The minimum role of every registered route; None marks a public route.
ACCESS = web.AppKey("access", dict[web.AbstractRoute, Role | None])
# The control plane's broker connection; None when no `mqtt_url` is configured.
MQTT = web.AppKey[MqttClient | None]("mqtt")
# The route's device access; see `control_plane.api.routes.Endpoint.device`.
DEVICE_ACCESS = web.AppKey("device_access", dict[web.AbstractRoute, bool])
# Signs and serves per-device assignments; absent when no assignment key is configured.
ASSIGNMENTS = web.AppKey("assignments", AssignmentService)
# The telemetry ingest; None when there is no broker connection.
INGEST = web.AppKey[IngestService | None]("ingest")
# Advances rollouts; absent, like ASSIGNMENTS, when no assignment key is configured.
ROLLOUTS = web.AppKey("rollouts", RolloutController)
CALLER = web.RequestKey("caller", OperatorToken)  # an operator token authenticated the request
DEVICE = web.RequestKey("device", str)  # the id of the device that signed the request
