"""Typed keys for what the dashboard keeps on the application and on each request."""

from __future__ import annotations

from dataclasses import dataclass

import jinja2
from aiohttp import web

from control_plane.dashboard.live import LiveFeed
from control_plane.dashboard.session import SessionSigner
from control_plane.db.models import OperatorToken
from control_plane.roles import Role, allows


@dataclass(frozen=True, slots=True)
class DashboardUser:
    """The operator behind a signed-in request: their token and their session's CSRF token."""

    token: OperatorToken
    csrf: str
    nonce: str

    @property
    def role(self) -> Role:
        """The token's role."""
        return self.token.role

    @property
    def name(self) -> str:
        """How the dashboard and the audit log name this operator."""
        return self.token.name or f"token:{self.token.id}"

    def may(self, role: Role) -> bool:
        """Whether this operator holds `role` or a higher one."""
        return allows(self.token.role, role)


TEMPLATES = web.AppKey("dashboard_templates", jinja2.Environment)
# Content hashes of the static files, for cache-busting URLs; filled at start-up.
ASSET_VERSIONS = web.AppKey("dashboard_assets", dict[str, str])
SIGNER = web.AppKey("dashboard_signer", SessionSigner)  # set at start-up (key file)
LIVE = web.AppKey("dashboard_live", LiveFeed)
USER = web.RequestKey("dashboard_user", DashboardUser)
