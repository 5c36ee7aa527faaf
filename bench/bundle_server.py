"""A static file server for `bench.bundles`, so the agent downloads bundles over real HTTP.

`python -m bench.bundle_server --port P --directory DIR` serves the files of DIR under
`/bundles/` (aiohttp's `FileResponse`: sendfile, Range requests) and answers `GET /ready`, the
way a CDN or the control plane's blob store would hand bundles to devices. `plain_download_s`
is the baseline of the agent's download: the same GET with aiohttp, the body discarded.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import time
from pathlib import Path

import aiohttp
from aiohttp import web

from bench import BenchError

PREFIX = "/bundles"
READY_PATH = "/ready"
CHUNK = 1 << 20  # what the agent's downloader reads at a time


async def ready(request: web.Request) -> web.Response:
    """`GET /ready`: always 200."""
    return web.Response(text="ready")


def build_app(directory: Path) -> web.Application:
    """The static route and the readiness route."""
    app = web.Application()
    app.router.add_get(READY_PATH, ready)
    app.router.add_static(PREFIX, directory)
    return app


async def serve(host: str, port: int, directory: Path) -> None:
    """Serve until SIGINT or SIGTERM."""
    runner = web.AppRunner(build_app(directory), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


async def _fetch(url: str) -> int:
    """GET `url` and count the body's bytes without keeping them."""
    received = 0
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        response.raise_for_status()
        async for chunk in response.content.iter_chunked(CHUNK):
            received += len(chunk)
    return received


def plain_download_s(url: str, size: int, runs: int) -> float:
    """Median seconds of a plain aiohttp GET of `url` (no hashing, no writing) over `runs`."""
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        received = asyncio.run(_fetch(url))
        timings.append(time.perf_counter() - started)
        if received != size:
            raise BenchError(f"{url}: {received} bytes, expected {size}")
    return statistics.median(timings)


def main() -> None:
    """Parse `--host`, `--port` and `--directory`, and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--directory", type=Path, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port, args.directory))


if __name__ == "__main__":
    main()
