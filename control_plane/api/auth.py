"""Bearer-token authentication and the per-route minimum role.

Every route is registered with its minimum role (`None`: public). A route that was never
registered through `control_plane.api.routes` is treated as admin-only: access fails closed.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from control_plane import tokens
from control_plane.api.errors import AuthenticationRequired, PermissionDenied
from control_plane.api.state import ACCESS, CALLER, ENGINE
from control_plane.db.engine import open_session
from control_plane.db.models import OperatorToken
from control_plane.roles import Role, allows

SCHEME = "bearer"


def caller(request: web.Request) -> OperatorToken:
    """The token that authenticated this request (only on routes that need one)."""
    return request[CALLER]


def actor(token: OperatorToken) -> str:
    """How the audit log names a token: its name, or its id when it has none."""
    return token.name or f"token:{token.id}"


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate the bearer token and check the route's minimum role."""
    if request.match_info.http_exception is not None:
        return await handler(request)  # 404 / 405: nothing to protect
    required = request.app[ACCESS].get(request.match_info.route, Role.ADMIN)
    if required is None:
        return await handler(request)
    secret = _bearer_secret(request)
    # Its own transaction, so the token's last use is recorded even if the handler fails.
    async with open_session(request.app[ENGINE]) as session:
        token = await tokens.authenticate(session, secret)
    if token is None:
        raise AuthenticationRequired("the token is unknown or revoked")
    if not allows(token.role, required):
        raise PermissionDenied(
            f"this needs the {required.value} role; the token has {token.role.value}"
        )
    request[CALLER] = token
    return await handler(request)


def _bearer_secret(request: web.Request) -> str:
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != SCHEME or not secret.strip():
        raise AuthenticationRequired("send an operator token as 'Authorization: Bearer <token>'")
    return secret.strip()
