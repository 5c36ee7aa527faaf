"""Bearer-token and device authentication, and the per-route minimum role.

Every route is registered with its minimum role (`None`: public). A route that was never
registered through `control_plane.api.routes` is treated as admin-only: access fails closed.
A route registered with `device=True` also accepts a request signed by an enrolled device
(`shared.device_auth`; checked in `control_plane.api.device_auth`); without the device headers
such a route falls back to the bearer token (or, when its role is None, refuses).
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

from control_plane import tokens
from control_plane.api.device_auth import authenticate_device
from control_plane.api.errors import AuthenticationRequired, PermissionDenied
from control_plane.api.state import ACCESS, CALLER, DEVICE, DEVICE_ACCESS, ENGINE
from control_plane.db.engine import open_session
from control_plane.db.models import OperatorToken
from control_plane.roles import Role, allows
from shared.device_auth import DeviceAuthError, SignedRequest

SCHEME = "bearer"


def caller(request: web.Request) -> OperatorToken:
    """The token that authenticated this request (only on routes that need one)."""
    return request[CALLER]


def actor(token: OperatorToken) -> str:
    """How the audit log names a token: its name, or its id when it has none."""
    return token.name or f"token:{token.id}"


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Authenticate the device signature or the bearer token; check the route's minimum role."""
    if request.match_info.http_exception is not None:
        return await handler(request)  # 404 / 405: nothing to protect
    route = request.match_info.route
    required = request.app[ACCESS].get(route, Role.ADMIN)
    if request.app[DEVICE_ACCESS].get(route, False):
        signed = _device_signature(request)
        if signed is not None:
            request[DEVICE] = await authenticate_device(request, signed)
            return await handler(request)
        if required is None:
            raise AuthenticationRequired(
                "this route needs a request signed by an enrolled device "
                "(X-EdgeFleet-Device, -Time, -Nonce and -Signature headers)"
            )
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


def _device_signature(request: web.Request) -> SignedRequest | None:
    try:
        return SignedRequest.from_headers(request.headers)
    except DeviceAuthError as error:
        raise AuthenticationRequired(str(error)) from None


def _bearer_secret(request: web.Request) -> str:
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, secret = header.partition(" ")
    if scheme.lower() != SCHEME or not secret.strip():
        raise AuthenticationRequired("send an operator token as 'Authorization: Bearer <token>'")
    return secret.strip()
