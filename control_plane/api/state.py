"""Typed keys for what the application and each request carry."""

from __future__ import annotations

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.db.models import OperatorToken
from control_plane.roles import Role
from control_plane.settings import ControlPlaneSettings

SETTINGS = web.AppKey("settings", ControlPlaneSettings)
ENGINE = web.AppKey("engine", AsyncEngine)
# The minimum role of every registered route; None marks a public route.
ACCESS = web.AppKey("access", dict[web.AbstractRoute, Role | None])
CALLER = web.RequestKey("caller", OperatorToken)
