"""The audit log, operator tokens and enrollment tokens.

Issuing and revoking go through the same functions as the API (`control_plane.tokens`,
`control_plane.enrollment`) and are audited the same way, under the signed-in operator's name.
A new secret is shown once, on the page that answers the form (sent with `no-store`), and never
again; it is not put in a redirect, a cookie or the log.
"""

from __future__ import annotations

from aiohttp import web
from sqlalchemy import select

from control_plane import tokens
from control_plane.api.auth import actor, caller
from control_plane.api.enroll import parse_groups, parse_labels, parse_region
from control_plane.api.errors import InvalidRequest
from control_plane.api.routes import audit_json, token_json
from control_plane.api.state import ENGINE, SETTINGS
from control_plane.dashboard.access import Page
from control_plane.dashboard.render import redirect, render
from control_plane.db.engine import open_session
from control_plane.db.models import AuditEntry, utcnow
from control_plane.enrollment import (
    DevicePreset,
    describe_token,
    issue_enrollment_token,
    list_enrollment_tokens,
)
from control_plane.roles import Role

AUDIT_PAGE = 100
MAX_NAME = 200
MAX_TTL_HOURS = 365 * 24


async def audit_log(request: web.Request) -> web.Response:
    """The newest changes first, 100 a page (`?before=<id>` for older ones)."""
    raw = request.query.get("before", "")
    query = select(AuditEntry).order_by(AuditEntry.id.desc()).limit(AUDIT_PAGE)
    if raw.isdigit():
        query = query.where(AuditEntry.id < int(raw))
    async with open_session(request.app[ENGINE]) as session:
        entries = [audit_json(e) for e in await session.scalars(query)]
    older = entries[-1]["id"] if len(entries) == AUDIT_PAGE else None
    return render(request, "audit.html", {"entries": entries, "older": older})


async def _tokens_page(
    request: web.Request, secret: str = "", created: str = "", status: int = 200
) -> web.Response:
    async with open_session(request.app[ENGINE]) as session:
        rows = [token_json(t) for t in await tokens.list_tokens(session)]
    context = {"tokens": rows, "roles": [r.value for r in Role], "secret": secret}
    return render(request, "tokens.html", {**context, "created": created}, status)


async def token_list(request: web.Request) -> web.Response:
    """Every operator token, without secrets."""
    return await _tokens_page(request)


async def create_token(request: web.Request) -> web.Response:
    """Issue a token and show its secret this once."""
    form = await request.post()
    name = str(form.get("name", "")).strip()
    if len(name) > MAX_NAME:
        raise InvalidRequest(f"the name is longer than {MAX_NAME} characters")
    role = Role.parse(str(form.get("role", "")))
    async with open_session(request.app[ENGINE]) as session:
        token, secret = await tokens.issue_audited(session, actor(caller(request)), name, role)
    return await _tokens_page(request, secret, name or f"token {token.id}", 201)


async def revoke_token(request: web.Request) -> web.Response:
    """Revoke a token (already revoked: nothing changes)."""
    raw = request.match_info["id"]
    async with open_session(request.app[ENGINE]) as session:
        token_id = int(raw) if raw.isdigit() else -1
        await tokens.revoke_audited(session, actor(caller(request)), token_id)
    return redirect(request, "/tokens", f"Token {raw} revoked.")


async def _enrollment_page(
    request: web.Request, secret: str = "", status: int = 200
) -> web.Response:
    now = utcnow()
    async with open_session(request.app[ENGINE]) as session:
        rows = [describe_token(t, now) for t in await list_enrollment_tokens(session)]
    default_hours = request.app[SETTINGS].enrollment_token_ttl_s / 3600
    context = {"tokens": rows[::-1], "secret": secret, "default_hours": f"{default_hours:g}"}
    return render(request, "enrollment.html", context, status)


async def enrollment_list(request: web.Request) -> web.Response:
    """Every enrollment token, newest first, with its state."""
    return await _enrollment_page(request)


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


async def create_enrollment_token(request: web.Request) -> web.Response:
    """Issue a one-time enrollment token with groups, labels and a region; show it once."""
    form = await request.post()
    labels = {}
    for pair in _split(str(form.get("labels", ""))):
        key, sep, value = pair.partition("=")
        if not sep:
            raise InvalidRequest(f"labels are KEY=VALUE, not {pair!r}")
        labels[key.strip()] = value.strip()
    preset = DevicePreset(
        parse_groups(_split(str(form.get("groups", "")))),
        parse_labels(labels),
        parse_region(str(form.get("region", "")).strip() or None),
    )
    raw_hours = str(form.get("ttl_hours", "")).strip() or "24"
    try:
        hours = float(raw_hours)
    except ValueError:
        raise InvalidRequest(f"the lifetime must be a number of hours, not {raw_hours!r}") from None
    if not 0 < hours <= MAX_TTL_HOURS:
        raise InvalidRequest(f"the lifetime must be above 0 and at most {MAX_TTL_HOURS} hours")
    who, now = actor(caller(request)), utcnow()
    async with open_session(request.app[ENGINE]) as session:
        _, secret = await issue_enrollment_token(session, who, preset, hours * 3600, now)
    return await _enrollment_page(request, secret, 201)


PAGES = (
    Page("GET", "/audit", audit_log, api="GET /api/v1/audit"),
    Page("GET", "/tokens", token_list, api="GET /api/v1/tokens"),
    Page("POST", "/tokens", create_token, api="POST /api/v1/tokens"),
    Page("POST", r"/tokens/{id:\d+}/revoke", revoke_token, api="DELETE /api/v1/tokens/{id}"),
    Page("GET", "/enrollment", enrollment_list, api="GET /api/v1/enroll-tokens"),
    Page("POST", "/enrollment", create_enrollment_token, api="POST /api/v1/enroll-tokens"),
)
