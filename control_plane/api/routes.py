"""The `/api/v1` routes: one table registers them, sets their minimum role and feeds OpenAPI."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy import select

from control_plane import tokens
from control_plane.api.auth import actor, caller
from control_plane.api.errors import InvalidRequest
from control_plane.api.models import download_bundle, get_model_version, list_models, upload_model
from control_plane.api.state import ACCESS, DEVICE_ACCESS, ENGINE
from control_plane.db.engine import open_session
from control_plane.db.models import INTEGER_MAX, AuditEntry, OperatorToken, fits_integer
from control_plane.roles import Role

PREFIX = "/api/v1"
DEFAULT_AUDIT_LIMIT = 100
MAX_AUDIT_LIMIT = 1000
MAX_NAME_LENGTH = 200
BINARY = "binary"  # an `Endpoint.request` or `.response` that is raw bytes, not a JSON schema

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Endpoint:
    """One route: what it does, who may call it, and what OpenAPI says about it."""

    method: str
    path: str
    handler: Handler
    role: Role | None  # None: public (unless `device`)
    summary: str
    status: int = 200
    response: str = ""  # a schema name in `control_plane.api.openapi`
    request: str = ""
    parameters: tuple[dict[str, Any], ...] = field(default=())
    errors: tuple[int, ...] = ()
    # A request signed by an enrolled device is accepted too (with `role=None`: only such a
    # request); when the path has `{device_id}`, only that device's own signature.
    device: bool = False


def iso_time(value: datetime | None) -> str | None:
    """A stored time as ISO 8601 for a JSON answer; None stays None."""
    return value.isoformat() if value is not None else None


def query_parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    """An optional query parameter, as OpenAPI describes it."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


# The `{device_id}` of every per-device route, and the prefix of those routes.
DEVICE_ID_PARAMETER = {
    "name": "device_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
}
DEVICE_PATH = f"{PREFIX}/devices/{{device_id}}"


def token_json(token: OperatorToken) -> dict[str, Any]:
    """A token as the API shows it: never the secret or its hash."""
    return {
        "id": token.id,
        "name": token.name,
        "role": token.role.value,
        "created_at": token.created_at.isoformat(),
        "last_used_at": token.last_used_at.isoformat() if token.last_used_at else None,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
    }


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    """An audit entry as the API shows it."""
    return {
        "id": entry.id,
        "time": entry.time.isoformat(),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "before": entry.before,
        "after": entry.after,
    }


async def health(request: web.Request) -> web.Response:
    """Liveness: the process answers."""
    return web.json_response({"status": "ok"})


async def list_tokens(request: web.Request) -> web.Response:
    """Every token, oldest first, without secrets."""
    async with open_session(request.app[ENGINE]) as session:
        rows = await tokens.list_tokens(session)
        return web.json_response({"tokens": [token_json(t) for t in rows]})


async def create_token(request: web.Request) -> web.Response:
    """Issue a token; the response is the only place its secret ever appears."""
    name, role = _token_request(await json_object(request))
    async with open_session(request.app[ENGINE]) as session:
        token, secret = await tokens.issue_audited(session, actor(caller(request)), name, role)
        body = {"token": token_json(token), "secret": secret}
    return web.json_response(body, status=201)


async def revoke_token(request: web.Request) -> web.Response:
    """Revoke a token; revoking one already revoked changes (and audits) nothing."""
    token_id = parse_int(request.match_info["id"], "token id")
    async with open_session(request.app[ENGINE]) as session:
        token = await tokens.revoke_audited(session, actor(caller(request)), token_id)
        body = {"token": token_json(token)}
    return web.json_response(body)


async def list_audit(request: web.Request) -> web.Response:
    """The newest audit entries first, at most `?limit=` of them."""
    raw = request.query.get("limit")
    limit = DEFAULT_AUDIT_LIMIT if raw is None else parse_int(raw, "limit")
    if not 1 <= limit <= MAX_AUDIT_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_AUDIT_LIMIT}")
    async with open_session(request.app[ENGINE]) as session:
        rows = await session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit))
        return web.json_response({"entries": [audit_json(e) for e in rows]})


async def json_object(request: web.Request) -> dict[str, Any]:
    """The request body as a JSON object, or `InvalidRequest`."""
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequest("the request body is not JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def _token_request(body: dict[str, Any]) -> tuple[str, Role]:
    name = body.get("name", "")
    role = body.get("role")
    if not isinstance(name, str) or len(name) > MAX_NAME_LENGTH:
        raise InvalidRequest(f"name must be a string of at most {MAX_NAME_LENGTH} characters")
    if not isinstance(role, str):
        raise InvalidRequest("role is required: one of viewer, operator, admin")
    return name, Role.parse(role)


def parse_int(raw: str, what: str) -> int:
    """A path or query value as an integer a column can hold, or `InvalidRequest` naming it."""
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{what} must be an integer, not {raw!r}") from None
    if not fits_integer(value):
        low = -INTEGER_MAX - 1
        raise InvalidRequest(f"{what} must be an integer from {low} to {INTEGER_MAX}")
    return value


_LIMIT = {
    "name": "limit",
    "in": "query",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_AUDIT_LIMIT},
}
_MODEL_PATH = (
    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
    {"name": "version", "in": "path", "required": True, "schema": {"type": "integer"}},
)
_DIGEST = {"name": "digest", "in": "path", "required": True, "schema": {"type": "string"}}
_TOKEN_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}

# The OpenAPI route itself is appended by `control_plane.api.openapi`, which reads this table.
ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint("GET", f"{PREFIX}/health", health, None, "Liveness", response="Health"),
    Endpoint(
        "GET",
        f"{PREFIX}/tokens",
        list_tokens,
        Role.ADMIN,
        "List operator tokens",
        response="TokenList",
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/tokens",
        create_token,
        Role.ADMIN,
        "Issue an operator token",
        status=201,
        response="CreatedToken",
        request="TokenRequest",
        errors=(400,),
    ),
    Endpoint(
        "DELETE",
        f"{PREFIX}/tokens/{{id}}",
        revoke_token,
        Role.ADMIN,
        "Revoke an operator token",
        response="TokenEnvelope",
        parameters=(_TOKEN_ID,),
        errors=(400, 404),
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/audit",
        list_audit,
        Role.VIEWER,
        "Audit log, newest first",
        response="AuditList",
        parameters=(_LIMIT,),
        errors=(400,),
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/models",
        upload_model,
        Role.OPERATOR,
        "Upload a signed model bundle (200 if the identical bundle is already stored)",
        status=201,
        response="ModelVersion",
        request=BINARY,
        errors=(400, 409, 413),
    ),
    Endpoint(
        "GET", f"{PREFIX}/models", list_models, Role.VIEWER, "List models", response="ModelList"
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/models/{{name}}/versions/{{version}}",
        get_model_version,
        Role.VIEWER,
        "One model version with its manifest",
        response="ModelVersionDetail",
        parameters=_MODEL_PATH,
        errors=(404,),
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/bundles/{{digest}}",
        download_bundle,
        Role.VIEWER,
        "Download a bundle (ETag = digest; Range and If-None-Match supported)",
        response=BINARY,
        parameters=(_DIGEST,),
        errors=(206, 304, 404, 416),
        device=True,
    ),
)


def add_routes(app: web.Application, endpoints: tuple[Endpoint, ...]) -> None:
    """Register `endpoints` and remember each one's minimum role for the auth middleware."""
    access = app[ACCESS]
    device_access = app[DEVICE_ACCESS]
    for endpoint in endpoints:
        route = app.router.add_route(endpoint.method, endpoint.path, endpoint.handler)
        access[route] = endpoint.role
        device_access[route] = endpoint.device
