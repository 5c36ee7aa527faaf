"""The OpenAPI 3.1 document, generated from the same route table that registers the routes."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from control_plane.api import assignments, devices, rollouts, telemetry
from control_plane.api.routes import BINARY, ENDPOINTS, PREFIX, Endpoint
from control_plane.roles import Role

_ROLES = [r.value for r in Role]
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_TOKEN = {
    "type": "object",
    "required": ["id", "name", "role", "created_at", "last_used_at", "revoked_at"],
    "properties": {
        "id": {"type": "integer"},
        "name": {"type": "string"},
        "role": {"type": "string", "enum": _ROLES},
        "created_at": _TIME,
        "last_used_at": _NULLABLE_TIME,
        "revoked_at": _NULLABLE_TIME,
    },
}
_STATE = {"type": ["object", "null"]}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}},
    },
    "Health": {"type": "object", "properties": {"status": {"const": "ok"}}},
    "Token": _TOKEN,
    "TokenList": {
        "type": "object",
        "properties": {
            "tokens": {"type": "array", "items": {"$ref": "#/components/schemas/Token"}}
        },
    },
    "TokenEnvelope": {
        "type": "object",
        "properties": {"token": {"$ref": "#/components/schemas/Token"}},
    },
    "TokenRequest": {
        "type": "object",
        "required": ["role"],
        "properties": {
            "name": {"type": "string", "maxLength": 200},
            "role": {"type": "string", "enum": _ROLES},
        },
    },
    "CreatedToken": {
        "type": "object",
        "required": ["token", "secret"],
        "properties": {
            "token": {"$ref": "#/components/schemas/Token"},
            "secret": {"type": "string", "description": "shown only in this response"},
        },
    },
    "AuditEntry": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "time": _TIME,
            "actor": {"type": "string"},
            "action": {"type": "string"},
            "target": {"type": "string"},
            "before": _STATE,
            "after": _STATE,
        },
    },
    "ModelVersion": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "integer"},
            "digest": {"type": "string"},
            "size": {"type": "integer"},
            "signer_keyid": {"type": "string"},
            "uploaded_at": _TIME,
            "uploaded_by": {"type": "string"},
        },
    },
    "ModelVersionDetail": {"type": "object", "description": "ModelVersion plus its manifest"},
    "ModelList": {
        "type": "object",
        "properties": {"models": {"type": "array", "items": {"type": "object"}}},
    },
    "AuditList": {
        "type": "object",
        "properties": {
            "entries": {"type": "array", "items": {"$ref": "#/components/schemas/AuditEntry"}}
        },
    },
    **assignments.SCHEMAS,
    **devices.SCHEMAS,
    **telemetry.SCHEMAS,
    **rollouts.SCHEMAS,
}

# The X-EdgeFleet-* request signature of `shared.device_auth`; OpenAPI has no scheme for it,
# so it is described as the header that carries it.
DEVICE_SCHEME = {
    "device": {
        "type": "apiKey",
        "in": "header",
        "name": "X-EdgeFleet-Signature",
        "description": "a request signed by an enrolled device (shared.device_auth)",
    }
}

_ERROR_TEXT = {
    206: "Part of the bytes, as the Range header asked",
    304: "Not modified: If-None-Match names the current ETag",
    400: "Malformed request",
    401: "Missing, unknown or revoked token",
    403: "The token's role is too low",
    404: "No such object",
    409: "Conflicts with what is stored",
    413: "The body is over the size cap",
    416: "The Range is outside the bytes",
    503: "The database is unavailable; retry later",
}


async def openapi_document(request: web.Request) -> web.Response:
    """This API described as OpenAPI 3.1."""
    return web.json_response(build_document())


OPENAPI = Endpoint(
    "GET", f"{PREFIX}/openapi.json", openapi_document, None, "This document", response=""
)
ALL_ENDPOINTS: tuple[Endpoint, ...] = (
    *ENDPOINTS,
    *assignments.ENDPOINTS,
    *devices.ENDPOINTS,
    *telemetry.ENDPOINTS,
    *rollouts.ENDPOINTS,
    OPENAPI,
)


def build_document(endpoints: tuple[Endpoint, ...] = ALL_ENDPOINTS) -> dict[str, Any]:
    """The OpenAPI document for `endpoints`."""
    paths: dict[str, dict[str, Any]] = {}
    for endpoint in endpoints:
        paths.setdefault(endpoint.path, {})[endpoint.method.lower()] = _operation(endpoint)
    return {
        "openapi": "3.1.0",
        "info": {"title": "EdgeFleet control plane", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}, **DEVICE_SCHEME},
        },
    }


def _operation(endpoint: Endpoint) -> dict[str, Any]:
    if endpoint.response == BINARY:
        content: dict[str, Any] = {"application/octet-stream": {"schema": {"type": "string"}}}
    elif endpoint.response:
        ref = {"$ref": f"#/components/schemas/{endpoint.response}"}
        content = {"application/json": {"schema": ref}}
    else:
        content = {"application/json": {"schema": {"type": "object"}}}
    responses: dict[str, Any] = {str(endpoint.status): {"description": "OK", "content": content}}
    errors = set(endpoint.errors) | {503}
    if endpoint.role is not None or endpoint.device:
        errors |= {401, 403}
    for status in sorted(errors):
        responses[str(status)] = {"description": _ERROR_TEXT[status]}
        if status >= 400:  # 206 and 304 are not errors: the body is the bytes, or nothing
            error = {"schema": {"$ref": "#/components/schemas/Error"}}
            responses[str(status)]["content"] = {"application/json": error}
    operation: dict[str, Any] = {
        "summary": endpoint.summary,
        "operationId": endpoint.handler.__name__,
        "security": [] if endpoint.role is None else [{"bearer": []}],
        "responses": responses,
    }
    if endpoint.role is not None:
        operation["x-minimum-role"] = endpoint.role.value
    if endpoint.device:  # a device's signature is accepted too (see docs/operations.md)
        operation["security"] = [*operation["security"], {"device": []}]
    if endpoint.parameters:
        operation["parameters"] = list(endpoint.parameters)
    if endpoint.request:
        if endpoint.request == BINARY:
            body: dict[str, Any] = {"application/octet-stream": {"schema": {"type": "string"}}}
        else:
            ref = {"$ref": f"#/components/schemas/{endpoint.request}"}
            body = {"application/json": {"schema": ref}}
        operation["requestBody"] = {"required": True, "content": body}
    return operation
