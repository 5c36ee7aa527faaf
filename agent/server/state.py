"""Typed keys for what the aiohttp application carries."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CollectorRegistry

from agent.config import AgentSettings
from agent.dataplane import DataPlane

DATAPLANE = web.AppKey("dataplane", DataPlane)
SETTINGS = web.AppKey("settings", AgentSettings)
METRICS = web.AppKey("metrics", CollectorRegistry)
