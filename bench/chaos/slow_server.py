"""A bundle server with a capped rate, so a download lasts long enough to be interrupted.

`python -m bench.chaos.slow_server --port P --directory DIR --rate BYTES_PER_S` serves the files
of DIR under `/bundles/` like `bench.bundle_server`, but sends each response in small pieces at
no more than the given rate, the way a device on a slow link sees it. It honours
`Range: bytes=N-` (206 with `Content-Range`), so an interrupted download resumes over real
HTTP, and answers `GET /ready`. A chaos scenario that kills the agent at a random moment then
lands in the download phase about as often as that phase lasts in a real rollout.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from aiohttp import web

from bench.bundle_server import PREFIX, READY_PATH, ready
from bench.processes import Command

PIECE = 64 * 1024
DIRECTORY = web.AppKey("directory", Path)
RATE = web.AppKey("rate", float)


async def bundle(request: web.Request) -> web.StreamResponse:
    """`GET /bundles/{name}`: the file, or the rest of it from a Range start, at the capped rate."""
    name = request.match_info["name"]
    path = request.app[DIRECTORY] / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise web.HTTPNotFound()
    size = path.stat().st_size
    start = request.http_range.start or 0
    if start < 0 or start > size:
        raise web.HTTPRequestRangeNotSatisfiable(headers={"Content-Range": f"bytes */{size}"})
    ranged = "Range" in request.headers
    response = web.StreamResponse(status=206 if ranged else 200)
    response.content_length = size - start
    if ranged:
        response.headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
    await response.prepare(request)
    rate = request.app[RATE]
    with path.open("rb") as source:
        source.seek(start)
        while piece := source.read(PIECE):
            await response.write(piece)
            # Pacing, not waiting for an event: this is what makes the link slow.
            await asyncio.sleep(len(piece) / rate)
    await response.write_eof()
    return response


def build_app(directory: Path, rate: float) -> web.Application:
    """The bundle route and the readiness route."""
    app = web.Application()
    app[DIRECTORY] = directory
    app[RATE] = rate
    app.router.add_get(READY_PATH, ready)
    app.router.add_get(PREFIX + "/{name}", bundle)
    return app


async def serve(port: int, directory: Path, rate: float) -> None:
    """Serve on 127.0.0.1 until SIGINT or SIGTERM."""
    runner = web.AppRunner(build_app(directory, rate), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def command(directory: Path, rate: float) -> Command:
    """The command line of this server, for a port."""

    def line(port: int) -> list[str]:
        server = [sys.executable, "-m", "bench.chaos.slow_server", "--port", str(port)]
        return [*server, "--directory", str(directory), "--rate", f"{rate:g}"]

    return line


def main() -> None:
    """Parse `--port`, `--directory` and `--rate`, and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--directory", type=Path, required=True)
    parser.add_argument("--rate", type=float, required=True, help="bytes per second")
    args = parser.parse_args()
    asyncio.run(serve(args.port, args.directory, args.rate))


if __name__ == "__main__":
    main()
