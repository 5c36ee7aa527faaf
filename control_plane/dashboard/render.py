"""Jinja2 templates and the responses every page is sent with.

Templates are autoescaped, undefined names are errors, and they are compiled once at start-up
(`preload`, in a thread) so no request reads a template file. Every page carries the same
security headers: a Content-Security-Policy that allows only the control plane's own scripts,
styles and connections (nothing inline, nothing from elsewhere), no framing, no caching.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jinja2
from aiohttp import hdrs, web

from control_plane.api.state import SETTINGS
from control_plane.dashboard.live import Fragment, Topic, render_fragment, role_context
from control_plane.dashboard.session import FLASH_COOKIE, FLASH_LIFETIME_S, clear_cookie, set_cookie
from control_plane.dashboard.state import ASSET_VERSIONS, SIGNER, TEMPLATES, USER
from control_plane.roles import Role

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/static"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}
NAVIGATION = (  # (path, label, minimum role)
    ("/", "Overview", Role.VIEWER),
    ("/devices", "Devices", Role.VIEWER),
    ("/models", "Models", Role.VIEWER),
    ("/rollouts", "Rollouts", Role.VIEWER),
    ("/audit", "Audit log", Role.VIEWER),
    ("/tokens", "Tokens", Role.ADMIN),
    ("/enrollment", "Enrollment", Role.ADMIN),
)


def build_environment() -> jinja2.Environment:
    """The dashboard's template environment (templates are loaded by `preload`)."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("control_plane.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        auto_reload=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=format_time,
        ms=format_ms,
        pct=format_percent,
        number=format_number,
        pretty_json=pretty_json,
        bytes=format_bytes,
    )
    return env


def preload(env: jinja2.Environment) -> None:
    """Compile every template now (blocking: call it from a thread)."""
    for name in env.list_templates(extensions=("html", "svg")):
        env.get_template(name)


def asset_versions() -> dict[str, str]:
    """A short content hash per static file (blocking: call it from a thread)."""
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        for path in sorted(STATIC_DIR.iterdir())
        if path.is_file()
    }


def format_time(value: datetime | str | float | None) -> str:
    """A time as `2026-11-29 18:47:03 UTC`; an em dash for none."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    elif isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_ms(seconds: float | None, digits: int = 1) -> str:
    """Seconds as milliseconds; an em dash for none."""
    return "—" if seconds is None else f"{seconds * 1000:.{digits}f} ms"


def format_percent(fraction: float | None, digits: int = 1) -> str:
    """A fraction as a percentage; an em dash for none."""
    return "—" if fraction is None else f"{fraction * 100:.{digits}f}%"


def format_number(value: float | None, digits: int = 0) -> str:
    """A number with thousands separators; an em dash for none."""
    return "—" if value is None else f"{value:,.{digits}f}"


def format_bytes(value: int | None) -> str:
    """A size in B, KiB, MiB or GiB."""
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def pretty_json(value: Any) -> str:
    """JSON indented for reading."""
    return json.dumps(value, indent=2, sort_keys=True, default=str)


def static_url(request: web.Request, name: str) -> str:
    """The URL of a static file, with its content hash so browsers never use a stale copy."""
    version = request.app[ASSET_VERSIONS].get(name, "")
    return f"{STATIC_PREFIX}/{name}?v={version}"


def page_context(request: web.Request) -> dict[str, Any]:
    """What every page's template gets: the user, their role, navigation, CSRF, assets."""
    user = request.get(USER)
    role = user.role if user is not None else Role.VIEWER
    return {
        **role_context(role),
        "user": user,
        "csrf_token": user.csrf if user is not None else "",
        "navigation": [
            (path, label) for path, label, needed in NAVIGATION if user and user.may(needed)
        ],
        "path": request.path,
        "static": lambda name: static_url(request, name),
        "flash": request.app[SIGNER].unseal(request.cookies.get(FLASH_COOKIE)),
    }


def render(
    request: web.Request,
    template: str,
    context: dict[str, Any],
    status: int = 200,
) -> web.Response:
    """A full page, with the security headers; a flash message shown here is cleared."""
    html = (
        request.app[TEMPLATES].get_template(template).render({**page_context(request), **context})
    )
    response = web.Response(
        text=html, status=status, content_type="text/html", headers=SECURITY_HEADERS
    )
    if FLASH_COOKIE in request.cookies:
        clear_cookie(response, FLASH_COOKIE, is_secure(request))
    return response


def redirect(request: web.Request, location: str, flash: str | None = None) -> web.Response:
    """303 See Other to `location` (after a form), with a message for the next page."""
    response = web.Response(status=303, headers={hdrs.LOCATION: location, **SECURITY_HEADERS})
    if flash:
        sealed = request.app[SIGNER].seal(flash)
        set_cookie(response, FLASH_COOKIE, sealed, FLASH_LIFETIME_S, is_secure(request))
    return response


def wants_json(request: web.Request) -> bool:
    """Whether the caller is the page's own script asking for JSON (the bundle upload)."""
    return "application/json" in request.headers.get(hdrs.ACCEPT, "")


def error_response(request: web.Request, status: int, message: str) -> web.Response:
    """An error as a page (or as the API's JSON shape for a script)."""
    if wants_json(request):
        return web.json_response({"error": message}, status=status, headers=SECURITY_HEADERS)
    return render(request, "error.html", {"status": status, "message": message}, status)


def is_secure(request: web.Request) -> bool:
    """Whether cookies get the Secure flag: the request came over HTTPS, or the public URL is."""
    return request.secure or request.app[SETTINGS].public_url.startswith("https://")


def live_part(request: web.Request, topic: Topic, key: str, context: dict[str, Any]) -> Fragment:
    """A live part of the page being rendered, exactly as the live feed will render it."""
    user = request[USER]
    return render_fragment(request.app[TEMPLATES], topic, key, context, user.role)
