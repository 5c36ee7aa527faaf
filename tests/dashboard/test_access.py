"""Sessions, CSRF and roles on every dashboard route, without a browser.

Every page needs a session; every form needs the session's CSRF token and the minimum role of
the API route it stands for; the session cookie is HttpOnly, SameSite=Strict (and Secure over
HTTPS) and stops working when its token is revoked. Tables come from the route list, so a new
page or form is covered without touching this file.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from control_plane.api.openapi import ALL_ENDPOINTS
from control_plane.dashboard.access import Page, api_role
from control_plane.dashboard.app import PAGES
from control_plane.dashboard.render import SECURITY_HEADERS
from control_plane.roles import Role
from tests.dashboard.client import CSRF_FIELD, Dashboard, dashboard_app

pytestmark = pytest.mark.asyncio(loop_scope="session")

PUBLIC = {("GET", "/login"), ("POST", "/login")}
FORMS = [p for p in PAGES if p.method == "POST" and (p.method, p.path) not in PUBLIC]
RANK = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def concrete(page: Page) -> str:
    """A path for the route: placeholders become 1 (`{action}` an action)."""
    path = page.path.replace("{action}", "pause")
    return re.sub(r"\{[^}]+\}", "1", path)


@pytest_asyncio.fixture(loop_scope="session")
async def app(tmp_path: Path) -> AsyncIterator[Dashboard]:
    async with dashboard_app(tmp_path) as running:
        yield running


async def test_every_page_needs_a_session(app: Dashboard) -> None:
    for page in PAGES:
        if (page.method, page.path) in PUBLIC:
            continue
        response = await app.client.request(
            page.method, concrete(page), allow_redirects=False, data={}
        )
        if page.method == "GET" and page.path != "/dashboard/events":
            assert response.status == 303, page.path
            assert response.headers["Location"].startswith("/login?next=/"), page.path
        else:
            assert response.status == 401, page.path


async def test_every_form_carries_the_role_of_its_api_route() -> None:
    assert len(FORMS) >= 6
    api = {(e.method, e.path): e.role for e in ALL_ENDPOINTS}
    for page in FORMS:
        if page.path == "/logout":
            continue
        method, _, path = page.api.partition(" ")
        assert (method, path) in api, page.path
        assert page.required_role() == api[(method, path)] == api_role(page.api), page.path
    with pytest.raises(ValueError, match="public"):
        api_role("GET /api/v1/health")


@pytest.mark.parametrize("role", ["viewer", "operator"])
async def test_a_role_below_a_forms_minimum_is_refused(app: Dashboard, role: str) -> None:
    csrf = await app.sign_in(role)
    refused = 0
    for page in FORMS:
        needed = page.required_role()
        assert needed is not None
        if RANK[needed] > RANK[Role(role)]:
            response = await app.client.post(
                concrete(page), data={"csrf_token": csrf, "name": "x", "role": "admin"}
            )
            assert response.status == 403, (role, page.path, await response.text())
            refused += 1
    assert refused >= (5 if role == "viewer" else 2)
    await app.sign_in("admin")
    audit = await (await app.client.get("/audit")).text()
    assert "Nothing has been changed yet." in audit  # no refused form changed anything


async def test_a_form_without_the_sessions_csrf_token_is_refused(app: Dashboard) -> None:
    other = await app.sign_in("operator")  # a valid token, but of another session
    csrf = await app.sign_in("admin")
    for data in ({}, {"csrf_token": "forged"}, {"csrf_token": other}):
        response = await app.client.post("/tokens", data={**data, "name": "x", "role": "viewer"})
        assert response.status == 403
        assert "CSRF" in await response.text()
    response = await app.client.post(
        "/tokens", data={"csrf_token": csrf, "name": "ci", "role": "viewer"}
    )
    assert response.status == 201
    assert "ef_" in await response.text()


async def test_a_form_posted_from_another_site_is_refused(app: Dashboard) -> None:
    csrf = await app.sign_in("admin")
    response = await app.client.post(
        "/tokens",
        data={"csrf_token": csrf, "name": "x", "role": "viewer"},
        headers={"Origin": "http://attacker.example"},
    )
    assert response.status == 403


async def test_the_sign_in_form_has_its_own_csrf_token(app: Dashboard) -> None:
    form = {"token": app.secrets["admin"], "next": "/"}
    response = await app.client.post("/login", data=form, allow_redirects=False)
    assert response.status == 403  # no login cookie, no form token
    page = await (await app.client.get("/login")).text()
    match = CSRF_FIELD.search(page)
    assert match is not None
    wrong = {**form, "csrf_token": match.group(1), "token": app.secrets["revoked"]}
    response = await app.client.post("/login", data=wrong, allow_redirects=False)
    assert response.status == 401
    assert "unknown or revoked" in await response.text()


async def test_session_cookie_flags(app: Dashboard) -> None:
    page = await (await app.client.get("/login")).text()
    match = CSRF_FIELD.search(page)
    assert match is not None
    form = {"csrf_token": match.group(1), "token": app.secrets["viewer"], "next": "/"}
    response = await app.client.post("/login", data=form, allow_redirects=False)
    cookie = next(
        c for c in response.headers.getall("Set-Cookie") if c.startswith("edgefleet_session=")
    )
    flags = {part.strip().split("=")[0].lower(): part for part in cookie.split(";")}
    assert "httponly" in flags
    assert flags["samesite"].strip() == "SameSite=Strict"
    assert flags["path"].strip() == "Path=/"
    assert flags["max-age"].strip() == "Max-Age=43200"
    assert "secure" not in flags  # plain HTTP here; see the HTTPS test below
    assert app.secrets["viewer"] not in cookie


async def test_cookies_are_secure_when_the_public_url_is_https(tmp_path: Path) -> None:
    async with dashboard_app(tmp_path, public_url="https://cp.example.com") as app:
        response = await app.client.get("/login")
        cookie = response.headers["Set-Cookie"]
        assert "Secure" in cookie
        assert "HttpOnly" in cookie


async def test_a_revoked_token_or_a_changed_cookie_ends_the_session(app: Dashboard) -> None:
    jar, here = app.client.session.cookie_jar, app.client.make_url("/")
    await app.sign_in("viewer")  # token 1
    viewer = jar.filter_cookies(here)["edgefleet_session"].value
    csrf = await app.sign_in("admin")
    value = jar.filter_cookies(here)["edgefleet_session"].value
    jar.update_cookies({"edgefleet_session": value[:-2] + "xx"}, response_url=here)
    assert (await app.client.get("/tokens", allow_redirects=False)).status == 303
    jar.update_cookies({"edgefleet_session": value}, response_url=here)
    response = await app.client.post("/tokens/1/revoke", data={"csrf_token": csrf})
    assert response.status == 200
    assert "Token 1 revoked." in await response.text()
    jar.update_cookies({"edgefleet_session": viewer}, response_url=here)
    response = await app.client.get("/", allow_redirects=False)
    assert response.status == 303  # the viewer's session ended with its token


async def test_after_signing_in_the_browser_goes_only_to_this_site(app: Dashboard) -> None:
    for target, expected in (("//attacker.example/x", "/"), ("/devices?q=a", "/devices?q=a")):
        page = await (await app.client.get(f"/login?next={target}")).text()
        match = CSRF_FIELD.search(page)
        assert match is not None
        form = {"csrf_token": match.group(1), "token": app.secrets["viewer"], "next": target}
        response = await app.client.post("/login", data=form, allow_redirects=False)
        assert response.headers["Location"] == expected
        app.client.session.cookie_jar.clear()


async def test_a_session_is_not_an_api_credential(app: Dashboard) -> None:
    await app.sign_in("admin")
    assert (await app.client.get("/api/v1/audit")).status == 401
    document = await (await app.client.get("/api/v1/openapi.json")).json()
    assert not any(not path.startswith("/api/v1") for path in document["paths"])


async def test_pages_carry_security_headers_and_assets_are_served(app: Dashboard) -> None:
    await app.sign_in("viewer")
    response = await app.client.get("/")
    for name, value in SECURITY_HEADERS.items():
        assert response.headers[name] == value
    page = await response.text()
    css = re.search(r'href="(/static/app\.css\?v=[0-9a-f]{12})"', page)
    assert css is not None
    assert (await app.client.get(css.group(1))).status == 200
    assert (await app.client.get("/static/../settings.py")).status in (403, 404)
    response = await app.client.get("/dashboard/events")
    assert response.status == 400  # no topic


@pytest.mark.parametrize(
    ("role", "path", "status"),
    [
        ("viewer", "/rollouts/new", 403),
        ("viewer", "/tokens", 403),
        ("operator", "/tokens", 403),
        ("operator", "/enrollment", 403),
        ("operator", "/rollouts/new", 200),
        ("admin", "/enrollment", 200),
        ("viewer", "/rollouts/99", 404),
        ("viewer", "/devices/nope", 404),
        ("viewer", "/models/mlp/versions/3", 404),
    ],
)
async def test_pages_by_role(app: Dashboard, role: str, path: str, status: int) -> None:
    await app.sign_in(role)
    response = await app.client.get(path)
    assert response.status == status
    assert response.content_type == "text/html"
