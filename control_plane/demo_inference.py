"""The demo's sample inference: the input of examples/infer_mlp.py, sent and described.

`infer_with_tritonclient` blocks (tritonclient is synchronous); callers run it in a thread.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import numpy as np

MODEL, VERSION = "mlp", 1


def sample_input() -> np.ndarray:
    """examples/infer_mlp.py's fixed input: two rows of 64 values from seed 0."""
    return np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)


def describe_rows(probabilities: np.ndarray) -> list[str]:
    """Each row's top class with the three highest probabilities."""
    lines = []
    for row, p in enumerate(probabilities):
        top = np.argsort(-p)[:3]
        ranked = ", ".join(f"class {i} ({p[i]:.3f})" for i in top)
        lines.append(f"sample {row}: top class {top[0]}; {ranked}")
    return lines


def sample_request() -> dict[str, Any]:
    """The sample input as a KServe v2 JSON request."""
    inputs = sample_input()
    tensor = {
        "name": "input",
        "shape": list(inputs.shape),
        "datatype": "FP32",
        "data": inputs.ravel().tolist(),
    }
    return {"inputs": [tensor]}


def infer_with_tritonclient(address: str) -> list[str]:
    """The sample input through tritonclient (blocking): one line per row, then the backend."""
    import tritonclient.http as httpclient  # the dev extra; see the ImportError fallback

    client = httpclient.InferenceServerClient(address, connection_timeout=5, network_timeout=10)
    try:
        inputs = sample_input()
        tensor = httpclient.InferInput("input", list(inputs.shape), "FP32")
        tensor.set_data_from_numpy(inputs)
        result = client.infer(MODEL, [tensor])
        backend = client.get_model_config(MODEL)["edgefleet"]
    finally:
        client.close()
    lines = describe_rows(result.as_numpy("probabilities"))
    version = result.get_response()["model_version"]
    runtime = f"{backend['runtime']} on {backend['device']} ({backend['file']})"
    return [*lines, f"answered by {MODEL} v{version}, {runtime}"]


async def serves_v1(http: aiohttp.ClientSession, url: str, request: dict[str, Any]) -> bool:
    """Whether a plain inference request is answered by v1."""
    try:
        async with http.post(url, json=request) as response:
            body = await response.json() if response.status == 200 else {}
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
    return bool(body.get("model_version") == str(VERSION))
