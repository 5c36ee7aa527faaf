"""Single blocking HTTP calls to the servers under test: requests, statistics, configuration."""

from __future__ import annotations

import http.client
from dataclasses import dataclass

import orjson


@dataclass(frozen=True)
class Reply:
    """An HTTP answer."""

    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


def http_request(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> Reply:
    """Send one request to 127.0.0.1:`port` on a fresh connection."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        answer = {name.lower(): value for name, value in response.getheaders()}
        return Reply(response.status, answer, response.read())
    finally:
        connection.close()


def infer_path(model: str) -> str:
    """The OIP inference route of `model`."""
    return f"/v2/models/{model}/infer"


def batch_counts(port: int, model: str) -> tuple[int, int] | None:
    """The agent's (inference_count, execution_count) of `model`; None from other servers."""
    reply = http_request(port, "GET", f"/v2/models/{model}/stats")
    if reply.status != 200:
        return None
    stats = orjson.loads(reply.body)["model_stats"][0]
    return int(stats["inference_count"]), int(stats["execution_count"])


def chosen_backend(port: int, model: str) -> str:
    """The candidate the agent serves `model` with, from its model configuration."""
    reply = http_request(port, "GET", f"/v2/models/{model}/config")
    if reply.status != 200:
        return "unknown"
    edgefleet = orjson.loads(reply.body).get("edgefleet", {})
    return str(edgefleet.get("selection", {}).get("chosen", edgefleet.get("runtime", "unknown")))
