"""Errors only the API raises; they join the tree in `control_plane.errors` under `ApiError`.

ControlPlaneError
└── ApiError
    ├── InvalidRequest            the request body or query is malformed; permanent
    ├── AuthenticationRequired    no, an unknown or a revoked token; re-authenticate
    └── PermissionDenied          the token's role is too low; permanent for this token
"""

from __future__ import annotations

from control_plane.errors import ControlPlaneError


class ApiError(ControlPlaneError):
    """A request the API refuses."""


class InvalidRequest(ApiError):
    """The request body or query string is malformed."""


class AuthenticationRequired(ApiError):
    """The request carries no token, or one that is unknown or revoked."""


class PermissionDenied(ApiError):
    """The token is valid but its role does not allow this route."""
