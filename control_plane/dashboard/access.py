"""Who may open each dashboard page and send each form, checked before any handler runs.

Every dashboard route is a `Page` with a minimum role. A form that changes something names the
API route it stands for (`api="POST /api/v1/rollouts"`) and takes that route's minimum role from
the API's own table, so the dashboard can never allow what the API refuses. For every request
that is not a GET, the session's CSRF token must come with it (form field or header) and the
Origin, when the browser sends one, must be this server. Errors become a page (or the API's JSON
shape for the page's own scripts) with the status `control_plane.api.middleware` gives them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from aiohttp import hdrs, web

from control_plane.api.errors import AuthenticationRequired, PermissionDenied
from control_plane.api.middleware import status_for
from control_plane.api.openapi import ALL_ENDPOINTS
from control_plane.api.state import CALLER, ENGINE
from control_plane.dashboard.render import error_response
from control_plane.dashboard.session import CSRF_FIELD, CSRF_HEADER, SESSION_COOKIE
from control_plane.dashboard.state import SIGNER, USER, DashboardUser
from control_plane.db.engine import open_session
from control_plane.db.models import OperatorToken
from control_plane.errors import ControlPlaneError
from control_plane.roles import Role

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
SAFE_METHODS = ("GET", "HEAD")
LOGIN_PATH = "/login"
EVENTS_PATH = "/dashboard/events"  # a stream: answered 401, never redirected to the sign-in


@dataclass(frozen=True)
class Page:
    """One dashboard route and who may use it."""

    method: str
    path: str
    handler: Handler
    role: Role | None = Role.VIEWER  # None: open to anybody (the sign-in page)
    api: str = ""  # "METHOD /api/v1/...": the API route whose minimum role this form needs

    def required_role(self) -> Role | None:
        """The minimum role: the API route's, for a form that stands for one."""
        if not self.api:
            return self.role
        return api_role(self.api)


def api_role(route: str) -> Role:
    """The minimum role of an API route, given as "METHOD /api/v1/path" from its table."""
    method, _, path = route.partition(" ")
    for endpoint in ALL_ENDPOINTS:
        if endpoint.method == method and endpoint.path == path:
            if endpoint.role is None:
                raise ValueError(f"{route} is public: a dashboard form must not stand for it")
            return endpoint.role
    raise ValueError(f"no API route {route}")


async def authenticate(request: web.Request) -> DashboardUser | None:
    """The signed-in operator, from the session cookie; None without a valid session."""
    signer = request.app[SIGNER]
    claims = signer.read(request.cookies.get(SESSION_COOKIE))
    if claims is None:
        return None
    async with open_session(request.app[ENGINE]) as session:
        token = await session.get(OperatorToken, claims.token_id)
    if token is None or token.revoked_at is not None or not signer.belongs_to(claims, token):
        return None
    return DashboardUser(token, signer.csrf_token(claims.nonce), claims.nonce)


def safe_next(target: str | None) -> str:
    """A path on this server to go to after signing in (never another site)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def check_origin(request: web.Request) -> None:
    """Refuse a cross-site form post: the Origin header, when sent, must name this server."""
    origin = request.headers.get(hdrs.ORIGIN)
    if origin is None:
        return
    if origin == "null" or urlsplit(origin).netloc != request.host:
        raise PermissionDenied("the form was sent from another site")


async def check_csrf(request: web.Request, nonce: str) -> None:
    """The session's CSRF token must come with the request (header, or form field)."""
    presented = request.headers.get(CSRF_HEADER)
    if presented is None and request.content_type in (
        "application/x-www-form-urlencoded",
        "multipart/form-data",
    ):
        form = await request.post()
        field = form.get(CSRF_FIELD)
        presented = field if isinstance(field, str) else None
    if not request.app[SIGNER].csrf_ok(nonce, presented):
        raise PermissionDenied(
            "the form's CSRF token is missing or wrong: reload the page and send it again"
        )


def guarded(page: Page) -> Handler:
    """`page.handler` behind the session, role and CSRF checks, with errors as pages."""
    required = page.required_role()

    async def handle(request: web.Request) -> web.StreamResponse:
        try:
            if required is not None:
                user = await authenticate(request)
                if user is None:
                    if request.method in SAFE_METHODS and page.path != EVENTS_PATH:
                        next_path = quote(request.path_qs, safe="/?=&")
                        raise web.HTTPSeeOther(f"{LOGIN_PATH}?next={next_path}")
                    raise AuthenticationRequired("your session has ended: sign in again")
                if request.method not in SAFE_METHODS:
                    check_origin(request)
                    await check_csrf(request, user.nonce)
                if not user.may(required):
                    raise PermissionDenied(
                        f"this needs the {required.value} role; you are signed in as "
                        f"{user.role.value}"
                    )
                request[USER] = user
                request[CALLER] = user.token  # the API's functions audit under this name
            return await page.handler(request)
        except ControlPlaneError as error:
            return error_response(request, status_for(error), str(error))

    handle.__name__ = page.handler.__name__
    handle.__doc__ = page.handler.__doc__
    return handle
