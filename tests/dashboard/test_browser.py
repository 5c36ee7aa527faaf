"""The dashboard in a real browser against a control plane, Mosquitto and simulated devices.

An operator signs in with the keyboard, uploads a signed version from the browser, starts a
canary rollout from the form, watches it progress without reloading the page, aborts it and
rolls it back; a viewer finds no button that changes anything. Every page is saved as a
screenshot under tests/artifacts/dashboard/ (with EDGEFLEET_DOCS_SCREENSHOTS=1, the overview
and rollout screenshots are also copied to docs/img/ for the README).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, BrowserContext, Page, expect

from control_plane.sim_reports import BACKEND_RUNTIME
from shared.mqtt.broker import MosquittoBroker
from tests.agent.polling import until
from tests.dashboard.conftest import ROOT
from tests.dashboard.fleet import DEVICES, DashboardFleet, running_fleet
from tests.shared.mqtt.conftest import mosquitto  # noqa: F401

pytestmark = pytest.mark.asyncio(loop_scope="session")

LIVE_TIMEOUT_MS = 30_000
DOCS_IMAGES = ROOT / "docs" / "img"
DOCS_COPIES = {
    "overview.png": "dashboard-overview.png",
    "rollout-live.png": "dashboard-rollout.png",
}
# Forms a viewer may still have: signing out changes nothing in the fleet.
HARMLESS_FORMS = 'form[method="post"]:not([action="/logout"])'


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def fleet(
    tmp_path_factory: pytest.TempPathFactory,
    mosquitto: MosquittoBroker,  # noqa: F811
) -> AsyncIterator[DashboardFleet]:
    async with running_fleet(tmp_path_factory.mktemp("dashboard"), mosquitto) as running:
        yield running


async def new_context(browser: Browser, fleet: DashboardFleet) -> BrowserContext:
    return await browser.new_context(base_url=fleet.url, viewport={"width": 1360, "height": 900})


async def sign_in(context: BrowserContext, secret: str) -> Page:
    page = await context.new_page()
    await page.goto("/login")
    await page.get_by_label("Operator token").fill(secret)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.get_by_role("heading", name="Fleet overview")).to_be_visible()
    return page


@pytest_asyncio.fixture(loop_scope="session")
async def operator(browser: Browser, fleet: DashboardFleet) -> AsyncIterator[Page]:
    context = await new_context(browser, fleet)
    try:
        yield await sign_in(context, fleet.secrets["operator"])
    finally:
        await context.close()


async def shot(page: Page, artifacts: Path, name: str) -> None:
    """Save a full-page screenshot, and copy it to docs/img when asked to."""
    path = artifacts / name
    await page.screenshot(path=str(path), full_page=True)
    if os.environ.get("EDGEFLEET_DOCS_SCREENSHOTS") == "1" and name in DOCS_COPIES:
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMAGES / DOCS_COPIES[name])


async def test_sign_in_with_the_keyboard_and_move_around(
    browser: Browser, fleet: DashboardFleet, artifacts: Path
) -> None:
    context = await new_context(browser, fleet)
    page = await context.new_page()
    await page.goto("/devices")  # not signed in: the sign-in page, then back here
    await expect(page).to_have_url(re.compile(r"/login\?next=/devices"))
    await shot(page, artifacts, "login.png")
    await expect(page.get_by_label("Operator token")).to_be_focused()
    await page.keyboard.type("ef_not-a-token")
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("alert")).to_contain_text("unknown or revoked")
    await page.get_by_label("Operator token").fill(fleet.secrets["operator"])
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Devices")).to_be_visible()
    # The first Tab reaches the skip link, which moves focus to the page's content.
    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to content")).to_be_focused()
    # Tab on to the main navigation and open the rollouts with Enter.
    for _ in range(12):
        await page.keyboard.press("Tab")
        if await page.evaluate("document.activeElement.textContent.trim()") == "Rollouts":
            break
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Rollouts", exact=True)).to_be_visible()
    await context.close()


async def test_the_overview_and_device_pages(
    operator: Page, fleet: DashboardFleet, artifacts: Path
) -> None:
    page = operator
    await expect(page.locator("#online-count")).to_have_text(str(DEVICES), timeout=LIVE_TIMEOUT_MS)
    await expect(page.get_by_role("table", name="By model version")).to_contain_text("v1")
    await expect(page.get_by_role("table", name="By group")).to_contain_text(fleet.group)
    await shot(page, artifacts, "overview.png")

    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Devices").click()
    await page.get_by_label("Backend").select_option("arm-cpu")
    await page.get_by_label("Status").select_option("online")
    await page.get_by_role("button", name="Filter").click()
    await expect(page).to_have_url(re.compile(r"backend=arm-cpu"))
    rows = page.locator("table.data tbody tr")
    count = await rows.count()
    assert 0 < count < DEVICES
    await expect(rows.first).to_contain_text("arm-cpu")
    await page.get_by_label("Label").fill("site=lab")
    await page.get_by_label("Model").fill("mlp")
    await page.get_by_label("Version").fill("1")
    await page.get_by_role("button", name="Filter").click()
    await expect(page.locator("#device-count")).to_have_text(f"{count} devices")
    await shot(page, artifacts, "devices.png")

    device = fleet.simulator.devices[0].device_id
    await page.goto(f"/devices/{device}?window=1h")
    await expect(page.get_by_role("heading", name=device)).to_be_visible()
    await expect(page.locator("ol.timeline")).to_contain_text("active")
    await expect(page.get_by_role("heading", name="Presence history")).to_be_visible()
    await expect(page.locator("svg.chart").first).to_be_visible()
    await expect(page.get_by_role("img", name="Latency p50 and p95, milliseconds")).to_be_visible()
    runtime = BACKEND_RUNTIME[fleet.simulator.devices[0].backend_class]
    await expect(page.get_by_role("table").filter(has_text=runtime)).not_to_have_count(0)
    await shot(page, artifacts, "device.png")


async def test_upload_a_signed_version_from_the_browser(
    operator: Page, fleet: DashboardFleet, artifacts: Path
) -> None:
    page = operator
    await page.goto("/models")
    await page.get_by_label("Bundle file").set_input_files(str(fleet.tampered))
    await page.get_by_role("button", name="Upload").click()
    await expect(page.locator("#upload-result")).to_contain_text("Upload refused")
    await page.get_by_label("Bundle file").set_input_files(str(fleet.bundles[2].path))
    await page.get_by_role("button", name="Upload").click()
    result = page.locator("#upload-result")
    await expect(result).to_contain_text(re.compile(r"(Uploaded and verified|Already stored)"))
    await result.get_by_role("link", name="mlp v2").click()
    await expect(page.get_by_role("heading", name="mlp v2")).to_be_visible()
    await expect(page.get_by_text(fleet.bundles[2].digest)).to_be_visible()
    await expect(page.get_by_role("table").filter(has_text="model.fake")).not_to_have_count(0)
    await shot(page, artifacts, "model-version.png")
    await page.goto("/models")
    await expect(page.get_by_role("link", name="v2", exact=True)).to_be_visible()
    await shot(page, artifacts, "models.png")


async def test_a_canary_rollout_live_then_abort_and_roll_back(
    operator: Page, fleet: DashboardFleet, artifacts: Path
) -> None:
    page = operator
    async with fleet.client() as client:
        await client.upload(fleet.bundles[2].path)  # 200 when the upload test did it already
    await page.goto("/rollouts/new")
    await page.get_by_label("Model version").select_option(label="mlp v2")
    await page.get_by_label("Target").fill(f"group:{fleet.group}")
    await page.get_by_label("Canary, then waves").check()
    await page.get_by_label("Canary size").fill("1")
    await page.get_by_label("Waves", exact=True).fill("100%")
    await page.get_by_label("Observe each wave for").fill("600")  # keep the canary running
    await page.get_by_label("Max error rate").fill("5")
    await shot(page, artifacts, "rollout-new.png")
    await page.get_by_role("button", name="Start rollout").click()
    await expect(
        page.get_by_role("heading", name=re.compile(r"Rollout #\d+: mlp v2"))
    ).to_be_visible()
    await page.evaluate(
        "window.__sameDocument = true; window.__updates = 0;"
        "document.addEventListener('edgefleet:updated', () => window.__updates++)"
    )

    # The canary (one device per backend class) activates v2 while the page just listens.
    members = page.locator("table.members tbody tr")
    await expect(members).to_have_count(2)
    await expect(members.filter(has_text="active").filter(has_text="mlp v2")).to_have_count(
        2, timeout=LIVE_TIMEOUT_MS
    )
    await expect(page.locator("tr[data-wave='0'] td.gate").first).to_contain_text("pass")
    assert await page.evaluate("window.__sameDocument === true && window.__updates > 0")
    await expect(page.locator("#live-status")).to_have_text("live")
    await shot(page, artifacts, "rollout-live.png")

    # Keyboard: the dialog opens from its button and Escape cancels it.
    await page.get_by_role("button", name="Abort", exact=True).focus()
    await page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name=re.compile("Abort rollout"))
    await expect(dialog).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(dialog).to_be_hidden()

    await page.get_by_role("button", name="Abort", exact=True).click()
    await dialog.get_by_role("button", name="Abort rollout").click()
    await expect(page.locator(".flash")).to_contain_text("abort done")
    await expect(page.locator(".status-line")).to_contain_text("aborted")

    await page.get_by_role("button", name="Roll back", exact=True).click()
    confirm = page.get_by_role("dialog", name=re.compile("Roll back rollout"))
    await confirm.get_by_role("button", name="Roll back rollout").click()
    await expect(page.locator(".status-line")).to_contain_text("rolled back")
    # The canary devices go back to v1, and the page shows it as they report it.
    await expect(members.filter(has_text="mlp v1")).to_have_count(2, timeout=LIVE_TIMEOUT_MS)
    await expect(members.filter(has_text="rolled back")).to_have_count(2)
    await until(lambda: fleet.versions() == [1] * DEVICES, 30)
    await shot(page, artifacts, "rollout-rolled-back.png")

    await page.goto("/rollouts")
    await expect(page.locator("table.data")).to_contain_text("rolled back")
    await shot(page, artifacts, "rollouts.png")
    await page.goto("/")
    await expect(page.get_by_text("Rolled-back rollouts")).to_be_visible()


async def test_admin_issues_and_revokes_tokens(
    browser: Browser, fleet: DashboardFleet, artifacts: Path
) -> None:
    context = await new_context(browser, fleet)
    page = await sign_in(context, fleet.secrets["admin"])
    await page.goto("/tokens")
    await page.get_by_label("Name").fill("ci-bot")
    await page.get_by_label("Role").select_option("operator")
    await page.get_by_role("button", name="Issue token").click()
    secret = await page.get_by_label("Secret").input_value()
    assert secret.startswith("ef_")
    await shot(page, artifacts, "tokens.png")
    row = page.locator("table.data tbody tr").filter(has_text="ci-bot")
    await row.get_by_role("button", name="Revoke").click()
    await page.get_by_role("dialog").get_by_role("button", name="Revoke token").click()
    await expect(page.locator(".flash")).to_contain_text("revoked")
    await expect(page.locator("table.data tbody tr").filter(has_text="ci-bot")).to_contain_text(
        "revoked"
    )

    await page.goto("/enrollment")
    await page.get_by_label("Groups").fill("lab, edge")
    await page.get_by_label("Region").fill("eu-west")
    await page.get_by_role("button", name="Issue token").click()
    assert (await page.get_by_label("Secret").input_value()).startswith("efe_")
    await shot(page, artifacts, "enrollment.png")

    await page.goto("/audit")
    await expect(page.locator("table.audit")).to_contain_text("token.revoke")
    await expect(page.locator("table.audit")).to_contain_text("enroll_token.create")
    await shot(page, artifacts, "audit.png")
    await context.close()


async def test_a_viewer_sees_no_button_that_changes_anything(
    browser: Browser, fleet: DashboardFleet, artifacts: Path
) -> None:
    async with fleet.client() as client:
        rollouts = (await client.get("/rollouts"))["rollouts"]
    context = await new_context(browser, fleet)
    page = await sign_in(context, fleet.secrets["viewer"])
    device = fleet.simulator.devices[0].device_id
    pages = ["/", "/devices", f"/devices/{device}", "/models", "/models/mlp/versions/1"]
    pages += ["/rollouts", "/audit", *(f"/rollouts/{r['id']}" for r in rollouts[:2])]
    for path in pages:
        await page.goto(path)
        await expect(page.get_by_role("heading", level=1)).to_be_visible()
        assert await page.locator(HARMLESS_FORMS).count() == 0, path
        assert await page.locator("[data-dialog], input[type=file]").count() == 0, path
        for name in ("Upload", "Start rollout", "New rollout", "Abort", "Roll back", "Pause"):
            assert await page.get_by_role("button", name=name).count() == 0, (path, name)
            assert await page.get_by_role("link", name=name).count() == 0, (path, name)
    navigation = page.get_by_role("navigation", name="Main")
    await expect(navigation.get_by_role("link", name="Tokens")).to_have_count(0)
    await shot(page, artifacts, "viewer-rollout.png")
    await page.goto("/tokens")
    await expect(page.get_by_role("heading", level=1)).to_contain_text("403")
    await context.close()
