"""Signing in with an operator token, and signing out.

The sign-in form has no session to tie a CSRF token to yet, so GET /login sets a short-lived
login cookie holding a random nonce and the form carries that nonce's CSRF token: a form posted
from another site has neither. The token itself is checked like the API checks it
(`control_plane.tokens.authenticate`, which records its use).
"""

from __future__ import annotations

from aiohttp import web

from control_plane import tokens
from control_plane.api.state import ENGINE
from control_plane.dashboard.access import (
    LOGIN_PATH,
    Page,
    authenticate,
    check_origin,
    safe_next,
)
from control_plane.dashboard.render import is_secure, redirect, render
from control_plane.dashboard.session import (
    CSRF_FIELD,
    LOGIN_COOKIE,
    LOGIN_LIFETIME_S,
    SESSION_COOKIE,
    SESSION_LIFETIME_S,
    clear_cookie,
    set_cookie,
)
from control_plane.dashboard.state import SIGNER
from control_plane.db.engine import open_session

MAX_SECRET_CHARS = 200


def _login_page(
    request: web.Request, nonce: str, next_path: str, error: str = "", status: int = 200
) -> web.Response:
    signer = request.app[SIGNER]
    response = render(
        request,
        "login.html",
        {"login_csrf": signer.csrf_token(nonce), "next": next_path, "error": error},
        status,
    )
    set_cookie(response, LOGIN_COOKIE, nonce, LOGIN_LIFETIME_S, is_secure(request))
    return response


async def login_form(request: web.Request) -> web.Response:
    """The sign-in page (or, already signed in, where the operator was going)."""
    next_path = safe_next(request.query.get("next"))
    if await authenticate(request) is not None:
        return redirect(request, next_path)
    return _login_page(request, request.app[SIGNER].login_nonce(), next_path)


async def login(request: web.Request) -> web.Response:
    """Check the login form's CSRF token and the operator token; start a session."""
    signer = request.app[SIGNER]
    form = await request.post()
    next_path = safe_next(str(form.get("next", "")))
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    presented = form.get(CSRF_FIELD)
    check_origin(request)
    if not nonce or not signer.csrf_ok(nonce, presented if isinstance(presented, str) else None):
        message = "The sign-in form expired or came from elsewhere: please sign in again."
        return _login_page(request, signer.login_nonce(), next_path, message, 403)
    secret = str(form.get("token", "")).strip()
    token = None
    if secret and len(secret) <= MAX_SECRET_CHARS:
        async with open_session(request.app[ENGINE]) as session:
            token = await tokens.authenticate(session, secret)
    if token is None:
        message = "That token is unknown or revoked."
        return _login_page(request, signer.login_nonce(), next_path, message, 401)
    response = redirect(request, next_path)
    secure = is_secure(request)
    set_cookie(response, SESSION_COOKIE, signer.issue(token), SESSION_LIFETIME_S, secure)
    clear_cookie(response, LOGIN_COOKIE, secure)
    return response


async def logout(request: web.Request) -> web.Response:
    """End the session in this browser (revoke the token to end it everywhere)."""
    response = redirect(request, LOGIN_PATH, "Signed out.")
    clear_cookie(response, SESSION_COOKIE, is_secure(request))
    return response


PAGES = (
    Page("GET", LOGIN_PATH, login_form, role=None),
    Page("POST", LOGIN_PATH, login, role=None),
    Page("POST", "/logout", logout),
)
