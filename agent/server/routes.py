"""REST handlers of the Open Inference Protocol (KServe v2) with Triton's extensions.

Each handler decodes the HTTP request, asks the `DataPlane`, and encodes the answer. Work that
grows with the body (decompression, decoding and encoding large tensors) moves to a worker
thread so that one big request never stalls the others.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from agent.dataplane import DataPlane
from agent.errors import (
    InvalidRequest,
    ModelNotReady,
    PayloadTooLarge,
    RequestTimeout,
    Unsupported,
)
from agent.inference import InferenceRequest
from agent.server.codec import (
    EncodedResponse,
    decode_json_object,
    decode_request,
    encode_response,
)
from agent.server.metrics import CONTENT_TYPE, render
from agent.server.middleware import error_response
from agent.server.state import DATAPLANE, METRICS, SETTINGS

# Bodies above this size are decoded and encoded in a worker thread.
OFFLOAD_BYTES = 256 * 1024
T = TypeVar("T")


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _version(request: web.Request) -> int | None:
    raw = request.match_info.get("version")
    if raw is None or raw == "":
        return None
    if not (raw.isascii() and raw.isdigit()):  # isdigit() alone takes '²', which int() refuses
        raise InvalidRequest(f"model version must be a decimal integer, got '{raw}'")
    return int(raw)


def _dataplane(request: web.Request) -> DataPlane:
    return request.app[DATAPLANE]


async def read_body(request: web.Request) -> bytes:
    """The whole request body, within the server's size and time limits.

    A body that declares more than `max_body_mb` is refused before a byte of it is read, and
    one that does not arrive within `body_timeout_s` (a trickle, an endless chunked stream under
    the size limit) is answered 408: neither can hold a handler, or its buffer, indefinitely.
    """
    server = request.app[SETTINGS].server
    declared = request.content_length
    if declared is not None and declared > server.max_body_bytes:
        raise PayloadTooLarge(
            f"the request body ({declared} bytes) is larger than the limit of "
            f"{server.max_body_bytes} bytes"
        )
    try:
        async with asyncio.timeout(server.body_timeout_s if server.body_timeout_s > 0 else None):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {server.body_timeout_s:g} s"
        ) from None


async def server_metadata(request: web.Request) -> web.Response:
    """`GET /v2`."""
    return _json(_dataplane(request).server_metadata())


async def live(request: web.Request) -> web.Response:
    """`GET /v2/health/live`: the process answers; loading models never makes this fail."""
    return _json({"live": True})


async def ready(request: web.Request) -> web.Response:
    """`GET /v2/health/ready`: 200 once every assigned model is loaded, else 503."""
    if _dataplane(request).ready():
        return _json({"ready": True})
    return error_response(503, "not every model is loaded yet", {"Retry-After": "2"})


async def model_metadata(request: web.Request) -> web.Response:
    """`GET /v2/models/{model}[/versions/{version}]`."""
    return _json(_dataplane(request).model_metadata(request.match_info["model"], _version(request)))


async def model_ready(request: web.Request) -> web.Response:
    """`GET .../ready`."""
    name = request.match_info["model"]
    if _dataplane(request).model_ready(name, _version(request)):
        return _json({"name": name, "ready": True})
    raise ModelNotReady(f"model '{name}' is not ready", retry_after=2.0)


async def model_config(request: web.Request) -> web.Response:
    """`GET .../config`."""
    return _json(_dataplane(request).model_config(request.match_info["model"], _version(request)))


async def model_stats(request: web.Request) -> web.Response:
    """`GET /v2/models/stats` and `GET /v2/models/{model}[/versions/{version}]/stats`."""
    name = request.match_info.get("model")
    return _json(_dataplane(request).statistics(name, _version(request)))


async def repository_index(request: web.Request) -> web.Response:
    """`POST /v2/repository/index` with an optional body `{"ready": bool}`."""
    ready_only = decode_json_object(await read_body(request)).get("ready", False)
    if not isinstance(ready_only, bool):
        raise InvalidRequest("'ready' must be a boolean")
    return _json(_dataplane(request).repository_index(ready_only))


async def repository_load(request: web.Request) -> web.Response:
    """`POST /v2/repository/models/{model}/load`: (re)load a model the agent already knows.

    Models only ever come from the agent's own configuration (and, in production, from verified
    bundles): a request cannot upload a configuration or files.
    """
    name = request.match_info["model"]
    parameters = await _repository_parameters(request)
    if any(key == "config" or key.startswith("file:") for key in parameters):
        raise Unsupported(
            "uploading model configurations or files is not allowed; models come from the "
            "agent's settings or from signed bundles"
        )
    await _dataplane(request).control.load(name)
    return _json({})


async def repository_unload(request: web.Request) -> web.Response:
    """`POST /v2/repository/models/{model}/unload`."""
    name = request.match_info["model"]
    await _repository_parameters(request)
    await _dataplane(request).control.unload(name)
    return _json({})


async def _repository_parameters(request: web.Request) -> dict[str, Any]:
    parameters = decode_json_object(await read_body(request)).get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidRequest("'parameters' must be an object")
    return parameters


async def infer(request: web.Request) -> web.Response:
    """`POST /v2/models/{model}[/versions/{version}]/infer`."""
    settings = request.app[SETTINGS]
    name = request.match_info["model"]
    version = _version(request)
    header_length = _header_length(request)
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip", "deflate"):
        raise Unsupported(f"unsupported Content-Encoding '{encoding}'; use gzip or deflate")
    body = await read_body(request)
    limit = settings.server.max_body_bytes
    if encoding != "identity":
        body = await _offload(_decompress, body, encoding, limit)
    max_elements = settings.server.max_elements
    if len(body) > OFFLOAD_BYTES:
        decoded = await _offload(decode_request, body, header_length, max_elements)
    else:
        decoded = decode_request(body, header_length, max_elements)
    model, outputs = await _dataplane(request).infer(name, version, decoded)
    size = sum(array.nbytes for _, array, _ in outputs)
    encode = _encoder(model.name, str(model.version), decoded, outputs)
    encoded = await _offload(encode) if size > OFFLOAD_BYTES else encode()
    return await _respond(request, encoded, settings.server.compress_min_bytes)


def _encoder(
    name: str, version: str, decoded: InferenceRequest, outputs: Any
) -> Callable[[], EncodedResponse]:
    return lambda: encode_response(name, version, decoded.id, outputs)


def _header_length(request: web.Request) -> int | None:
    raw = request.headers.get("Inference-Header-Content-Length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidRequest(
            f"Inference-Header-Content-Length must be an integer, got '{raw}'"
        ) from None


async def _offload(func: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(None, func, *args)


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Inflate a gzip or deflate body, refusing to produce more than `limit` bytes."""
    # deflate means the zlib format (what tritonclient sends); accept raw deflate streams too.
    attempts = (
        (zlib.MAX_WBITS | 16,)
        if encoding in ("gzip", "x-gzip")
        else (zlib.MAX_WBITS, -zlib.MAX_WBITS)
    )
    for wbits in attempts:
        inflater = zlib.decompressobj(wbits)
        try:
            data = inflater.decompress(body, limit + 1)
        except zlib.error as error:
            if wbits == attempts[-1]:
                raise InvalidRequest(
                    f"the {encoding} body cannot be decompressed: {error}"
                ) from None
            continue
        if len(data) > limit or inflater.unconsumed_tail:
            raise PayloadTooLarge(
                f"the decompressed body is larger than the limit of {limit} bytes"
            )
        if not inflater.eof:
            raise InvalidRequest(f"the {encoding} body is truncated")
        return data
    raise AssertionError("unreachable")  # pragma: no cover


async def _respond(request: web.Request, encoded: EncodedResponse, min_size: int) -> web.Response:
    if encoded.json_length is None:
        headers = {"Content-Type": "application/json"}
    else:
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(encoded.json_length),
        }
    body = encoded.body
    coding = _accepted_encoding(request.headers.get("Accept-Encoding", ""))
    if coding is not None and len(body) >= min_size:
        compress = _gzip if coding == "gzip" else zlib.compress
        body = await _offload(compress, body) if len(body) > OFFLOAD_BYTES else compress(body)
        headers["Content-Encoding"] = coding
    return web.Response(body=body, headers=headers)


def _gzip(data: bytes) -> bytes:
    packer = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    return packer.compress(data) + packer.flush()


def _accepted_encoding(header: str) -> str | None:
    """Pick gzip or deflate from Accept-Encoding by q-value (never br: clients choke on it)."""
    best: tuple[float, str] | None = None
    for part in header.split(","):
        token, _, params = part.strip().partition(";")
        token = token.strip().lower()
        if token not in ("gzip", "deflate"):
            continue
        quality = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                quality = float(params[2:])
            except ValueError:
                quality = 0.0
        if quality > 0 and (best is None or quality > best[0]):
            best = (quality, token)
    return best[1] if best else None


async def metrics(request: web.Request) -> web.Response:
    """`GET /metrics` in Prometheus' text format."""
    return web.Response(body=render(request.app[METRICS]), headers={"Content-Type": CONTENT_TYPE})


def add_routes(app: web.Application) -> None:
    """Register every route; `/v2/models/stats` before `/v2/models/{model}` (Triton does too)."""
    model = "/v2/models/{model}"
    versioned = "/v2/models/{model}/versions/{version}"
    # The router tries routes in order: the hot one goes first.
    app.router.add_post(model + "/infer", infer)
    app.router.add_post(versioned + "/infer", infer)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", ready)
    app.router.add_get("/v2/models/stats", model_stats)
    for base in (model, versioned):
        app.router.add_get(base, model_metadata)
        app.router.add_get(base + "/ready", model_ready)
        app.router.add_get(base + "/config", model_config)
        app.router.add_get(base + "/stats", model_stats)
    app.router.add_post("/v2/repository/index", repository_index)
    app.router.add_post("/v2/repository/models/{model}/load", repository_load)
    app.router.add_post("/v2/repository/models/{model}/unload", repository_unload)
    app.router.add_get("/metrics", metrics)
