"""Turns every failure into a JSON `{"error": "..."}` body with the right status.

This is the one place where control plane errors meet HTTP status codes.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from control_plane.api.errors import AuthenticationRequired, InvalidRequest, PermissionDenied
from control_plane.errors import (
    BundleTooLarge,
    ControlPlaneError,
    DatabaseError,
    DeviceExists,
    EnrollmentRefused,
    InvalidBundle,
    InvalidCsr,
    InvalidRole,
    KeysNotConfigured,
    UnknownDevice,
    UnknownModel,
    UnknownToken,
    VersionConflict,
)
from control_plane.rollout_plan import InvalidRollout
from control_plane.rollouts import RolloutConflict, UnknownRollout

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides its status.
_STATUS: tuple[tuple[type[ControlPlaneError], int], ...] = (
    (InvalidRequest, 400),
    (InvalidRole, 400),
    (AuthenticationRequired, 401),
    (PermissionDenied, 403),
    (UnknownToken, 404),
    (InvalidBundle, 400),
    (UnknownModel, 404),
    (VersionConflict, 409),
    (InvalidRollout, 400),
    (UnknownRollout, 404),
    (RolloutConflict, 409),
    (BundleTooLarge, 413),
    (KeysNotConfigured, 503),
    (InvalidCsr, 400),
    (EnrollmentRefused, 401),
    (DeviceExists, 409),
    (UnknownDevice, 404),
    (DatabaseError, 503),
)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The API's one error shape."""
    return web.json_response({"error": message}, status=status, headers=headers)


def status_for(error: ControlPlaneError) -> int:
    """The HTTP status of a control plane error (500 when nothing more specific applies)."""
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 500


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map control plane errors, aiohttp's HTTP errors and crashes to JSON error responses."""
    try:
        return await handler(request)
    except ControlPlaneError as error:
        status = status_for(error)
        headers: dict[str, str] = {}
        if isinstance(error, AuthenticationRequired):
            headers["WWW-Authenticate"] = 'Bearer realm="edgefleet"'
        if isinstance(error, DatabaseError):
            headers["Retry-After"] = "5"
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.path, error)
        return error_response(status, str(error), headers)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        allow = {k: v for k, v in error.headers.items() if k.lower() == "allow"}
        return error_response(error.status, error.reason, allow)
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(500, "internal error; see the control plane's log")
