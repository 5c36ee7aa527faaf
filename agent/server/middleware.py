"""Turns every failure into the protocol's `{"error": "..."}` body with the right status.

This is the one place where agent errors meet HTTP status codes.
"""

from __future__ import annotations

import logging

from aiohttp import web
from aiohttp.typedefs import Handler

from agent.errors import (
    AgentError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    RequestTimeout,
    Unavailable,
    Unsupported,
)
from agent.server.state import SETTINGS

log = logging.getLogger(__name__)

# Most specific first: the first class an error is an instance of decides its status.
_STATUS: tuple[tuple[type[AgentError], int], ...] = (
    (PayloadTooLarge, 413),
    (RequestTimeout, 408),
    (InvalidRequest, 400),
    (ModelNotFound, 404),
    (Unavailable, 503),
    (Unsupported, 501),
)


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON error body as the protocol prescribes."""
    return web.json_response({"error": message}, status=status, headers=headers)


def status_for(error: AgentError) -> int:
    """The HTTP status of an agent error (500 when nothing more specific applies)."""
    for cls, status in _STATUS:
        if isinstance(error, cls):
            return status
    return 500


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map agent errors, aiohttp's HTTP exceptions and crashes to JSON error responses."""
    try:
        return await handler(request)
    except AgentError as error:
        status = status_for(error)
        headers: dict[str, str] = {}
        if isinstance(error, Unavailable):
            headers["Retry-After"] = str(max(1, round(error.retry_after)))
        if isinstance(error, Unsupported):
            headers["Accept-Encoding"] = "gzip, deflate"
        if status == 500:
            log.error("%s %s failed: %s", request.method, request.path, error)
        response = error_response(status, str(error), headers)
        if isinstance(error, RequestTimeout):
            response.force_close()  # the rest of a slow body is not worth waiting for
        return response
    except web.HTTPException as error:
        if error.status < 400:
            raise
        message = (
            error.reason
            if error.status != 413
            else (
                f"the request body is larger than the limit of "
                f"{request.app[SETTINGS].server.max_body_bytes} bytes"
            )
        )
        return error_response(
            error.status,
            message,
            {k: v for k, v in error.headers.items() if k.lower() in ("allow", "retry-after")},
        )
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(500, "internal error; see the agent's log")
