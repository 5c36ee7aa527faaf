"""The baseline for `bench.serving`: an aiohttp endpoint that does no work.

`python -m bench.trivial_server --port P` serves `POST /infer` (reads the body, answers a small
fixed JSON document) and `GET /ready`, with the same server settings as the agent
(`agent.server.app.serve`): no access log, handler cancellation, no automatic decompression,
the same body limit. Whatever the agent reaches below this is the cost of inference, decoding
and batching, not of aiohttp itself.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import orjson
from aiohttp import web

MAX_BODY_BYTES = 64 * 1024 * 1024  # the agent's default `server.max_body_mb`
_ANSWER = orjson.dumps({"model_name": "trivial", "model_version": "1", "outputs": []})


async def infer(request: web.Request) -> web.Response:
    """`POST /infer`: read the whole body, answer a fixed document."""
    await request.read()
    return web.Response(body=_ANSWER, content_type="application/json")


async def ready(request: web.Request) -> web.Response:
    """`GET /ready`: always 200."""
    return web.Response(body=b'{"ready":true}', content_type="application/json")


def build_app() -> web.Application:
    """The two routes, with the agent's body limit."""
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post("/infer", infer)
    app.router.add_get("/ready", ready)
    return app


async def serve(host: str, port: int) -> None:
    """Serve until SIGINT or SIGTERM."""
    runner = web.AppRunner(
        build_app(), access_log=None, handler_cancellation=True, auto_decompress=False
    )
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


def main() -> None:
    """Parse `--host` / `--port` and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    asyncio.run(serve(args.host, args.port))


if __name__ == "__main__":
    main()
