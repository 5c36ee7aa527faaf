"""The dashboard's pages against a 10,000-device fleet: server time p50/p95, with baselines.

    .venv/bin/python -m bench.dashboard [--devices 10000] [--requests 200] [--output FILE]

A database is seeded directly (`bench.dashboard_fleet`), `edgefleet cp serve` runs on it in its
own process, and one client signs in to the dashboard and requests each page in turn, one at a
time, over loopback: the time from sending the request to the last byte of the answer is the
server's time plus a loopback round trip. Baselines, measured the same way in the same run:

- the device list and device detail against the JSON API for the same data
  (`GET /api/v1/devices?...`; for a device, its inventory, telemetry, events and presence:
  the four calls a client makes to draw the same page, timed together);
- the overview against its own queries run in this process on the same database (there is no
  API call for the whole overview), so the ratio is what rendering and HTTP add.

The target is a p95 under 300 ms for the overview, the device list and the device detail. With
Chromium and Playwright present, screenshots of those pages at this scale go to docs/img/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import re
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from urllib.parse import urlencode

import aiohttp

from bench import BenchError, say, stop_on_sigterm
from bench.dashboard_fleet import SeededFleet, seed
from bench.dashboard_report import SECTION, WARMUP, Figure, Timing, render_section
from bench.processes import REPO, running
from bench.report import add_output_option, command_line, write_section
from control_plane.dashboard.views.overview import load_overview
from control_plane.db.engine import create_engine_for, default_database_url, open_session
from control_plane.db.migrate import upgrade
from control_plane.roles import Role
from control_plane.tokens import create_token

SCREENSHOTS = REPO / "docs" / "img"
CHROMIUM = Path("/usr/bin/chromium")
CSRF_FIELD = re.compile(r'name="csrf_token" value="([^"]+)"')
# As the browser tests start it (tests/dashboard/conftest.py): root needs --no-sandbox.
CHROMIUM_ARGS = (
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-default-apps",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
)


async def timed(requests: int, call: Callable[[], Awaitable[None]]) -> Timing:
    """Run `call` `WARMUP` times, then `requests` times, one at a time; time each."""
    for _ in range(WARMUP):
        await call()
    samples = []
    for _ in range(requests):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return Timing(samples)


def fetch(http: aiohttp.ClientSession, url: str, expect: str = "") -> Callable[[], Awaitable[None]]:
    """A call that GETs `url` and checks it answered 200 (with `expect` in the body)."""

    async def call() -> None:
        async with http.get(url, allow_redirects=False) as response:
            body = await response.text()
            if response.status != 200 or expect not in body:
                raise BenchError(f"GET {url} answered {response.status}: {body[:300]}")

    return call


def fetch_all(http: aiohttp.ClientSession, urls: Sequence[str]) -> Callable[[], Awaitable[None]]:
    """A call that GETs every URL in turn (a client drawing one page from several answers)."""
    calls = [fetch(http, url) for url in urls]

    async def call() -> None:
        for one in calls:
            await one()

    return call


async def sign_in(http: aiohttp.ClientSession, base: str, secret: str) -> None:
    """Sign in to the dashboard; the session cookie stays in the client's jar."""
    async with http.get(f"{base}/login") as response:
        match = CSRF_FIELD.search(await response.text())
    if match is None:
        raise BenchError("the sign-in page has no CSRF field")
    form = {"csrf_token": match.group(1), "token": secret, "next": "/"}
    async with http.post(f"{base}/login", data=form, allow_redirects=False) as response:
        if response.status != 303:
            raise BenchError(f"signing in answered {response.status}")


async def measure(
    base: str, secret: str, database_url: str, fleet: SeededFleet, requests: int
) -> list[Figure]:
    """Every page and its baseline."""
    detail = fleet.detail_devices[0]
    api = {"Authorization": f"Bearer {secret}"}
    jar = aiohttp.CookieJar(unsafe=True)  # cookies for 127.0.0.1
    async with (
        aiohttp.ClientSession(cookie_jar=jar) as page_client,
        aiohttp.ClientSession(headers=api) as api_client,
    ):
        await sign_in(page_client, base, secret)
        engine = create_engine_for(database_url)

        async def overview_queries() -> None:
            async with open_session(engine) as session:
                await load_overview(session, "")

        figures = []
        try:
            say("overview")
            figures.append(
                Figure(
                    "overview `/`",
                    await timed(requests, fetch(page_client, f"{base}/", "Fleet overview")),
                    "its queries in-process",
                    await timed(requests, overview_queries),
                )
            )
        finally:
            await engine.dispose()
        lists = [
            ("device list, first page", "", ""),
            (
                "device list, filtered (status, backend, group)",
                "status=online&backend=arm-cpu&group=site-07",
                "status=online&backend=arm-cpu&group=site-07",
            ),
            (
                "device list, filtered by label and model",
                "label=tier%3Dgold&model=mlp",
                "label=tier%3Dgold&model=mlp",
            ),
            (
                f"device list, last page (offset {fleet.devices - 50:,})",
                f"page={fleet.devices // 50}",
                f"offset={fleet.devices - 50}",
            ),
        ]
        for name, query, api_query in lists:
            say(name)
            figures.append(
                Figure(
                    f"{name} `/devices?{query}`" if query else f"{name} `/devices`",
                    await timed(requests, fetch(page_client, f"{base}/devices?{query}", "<table")),
                    f"`GET /api/v1/devices?limit=50{'&' + api_query if api_query else ''}`",
                    await timed(
                        requests, fetch(api_client, f"{base}/api/v1/devices?limit=50&{api_query}")
                    ),
                )
            )

        def behind_the_page(hours: int, bucket_s: int) -> list[str]:
            since = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=hours)
            query = urlencode({"since": since.isoformat(), "bucket": bucket_s})
            return [
                f"{base}/api/v1/devices/{detail}",
                f"{base}/api/v1/devices/{detail}/telemetry?{query}",
                f"{base}/api/v1/devices/{detail}/events?limit=25",
                f"{base}/api/v1/devices/{detail}/presence?limit=20",
            ]

        say("device detail")
        figures.append(
            Figure(
                "device detail, 6 h of 10 s telemetry",
                await timed(requests, fetch(page_client, f"{base}/devices/{detail}", "<svg")),
                "the 4 API calls behind it",
                await timed(requests, fetch_all(api_client, behind_the_page(6, 300))),
            )
        )
        say("device detail, 24 h")
        figures.append(
            Figure(
                "device detail, 24 h of 10 s telemetry",
                await timed(
                    requests, fetch(page_client, f"{base}/devices/{detail}?window=24h", "<svg")
                ),
                "the 4 API calls behind it",
                await timed(requests, fetch_all(api_client, behind_the_page(24, 900))),
            )
        )
        say("rollout")
        figures.append(
            Figure(
                f"rollout at wave 2 of 4 `/rollouts/{fleet.running_rollout}`",
                await timed(
                    requests,
                    fetch(page_client, f"{base}/rollouts/{fleet.running_rollout}", "Waves"),
                ),
                "`GET /api/v1/rollouts/N`",
                await timed(
                    requests,
                    fetch(api_client, f"{base}/api/v1/rollouts/{fleet.running_rollout}"),
                ),
                targeted=False,
            )
        )
    return figures


async def screenshots(base: str, secret: str, fleet: SeededFleet) -> list[Path]:
    """Full-page screenshots of the main pages at this scale (needs Chromium and Playwright)."""
    if not await asyncio.to_thread(CHROMIUM.exists):
        say(f"no {CHROMIUM}: no screenshots")
        return []
    from playwright.async_api import async_playwright

    pages = {
        "dashboard-10k-overview.png": "/",
        "dashboard-10k-devices.png": "/devices?status=online&backend=gpu",
        "dashboard-10k-device.png": f"/devices/{fleet.detail_devices[0]}?window=24h",
        "dashboard-10k-rollout.png": f"/rollouts/{fleet.running_rollout}",
    }
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    saved = []
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=list(CHROMIUM_ARGS)
        )
        try:
            context = await browser.new_context(
                base_url=base, viewport={"width": 1360, "height": 900}
            )
            page = await context.new_page()
            await page.goto("/login")
            await page.get_by_label("Operator token").fill(secret)
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_url(f"{base}/")
            for name, path in pages.items():
                await page.goto(path)
                await page.screenshot(path=str(SCREENSHOTS / name), full_page=True)
                saved.append(SCREENSHOTS / name)
        finally:
            await browser.close()
    return saved


async def collect(
    count: int, requests: int, pictures: bool
) -> tuple[SeededFleet, list[Figure], list[Path], float]:
    """Seed, serve, measure, photograph; everything in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-dashboard-") as tmp:
        work = Path(tmp)
        database_url = default_database_url(work)
        await upgrade(database_url)
        engine = create_engine_for(database_url)
        started = time.perf_counter()
        try:
            say(f"seeding {count:,} devices ...")
            fleet = await seed(engine, count)
            async with open_session(engine) as session:
                secret = await create_token(session, "bench", Role.ADMIN)
        finally:
            await engine.dispose()
        seeded_s = time.perf_counter() - started
        say(f"seeded in {seeded_s:.0f} s: {fleet.rows}")

        def command(port: int) -> list[str]:
            serve = ["cp", "serve", "--data", str(work), "--port", str(port)]
            return [sys.executable, "-m", "shared.cli", *serve]

        with running("control-plane", command, "/api/v1/health", work, 60.0) as server:
            base = f"http://127.0.0.1:{server.port}"
            figures = await measure(base, secret, database_url, fleet, requests)
            saved = await screenshots(base, secret, fleet) if pictures else []
    return fleet, figures, saved, seeded_s


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.dashboard",
        description="Time the dashboard's pages on a 10,000-device fleet against the API.",
    )
    parser.add_argument("--devices", type=int, default=10_000, metavar="N")
    parser.add_argument("--requests", type=int, default=200, metavar="N", help="per figure")
    parser.add_argument("--no-screenshots", action="store_true", help="skip docs/img/")
    add_output_option(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, and update the Markdown file."""
    args = parse_args(argv)
    stop_on_sigterm()
    command = command_line("bench.dashboard", argv)
    try:
        fleet, figures, saved, _ = asyncio.run(
            collect(max(100, args.devices), max(10, args.requests), not args.no_screenshots)
        )
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every process was stopped", file=sys.stderr)
        return 130
    section = render_section(fleet, figures, saved, command, max(10, args.requests))
    say("\n" + section.split("\n", 2)[2].rsplit("\n", 1)[0])
    if args.output != "-":
        write_section(Path(args.output), SECTION, section)
        say(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
