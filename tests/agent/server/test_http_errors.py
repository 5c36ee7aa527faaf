"""Malformed and hostile requests get a 4xx or 503 whose JSON body names the problem."""

from __future__ import annotations

import asyncio
import gzip
import io
import zlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from agent.batching import BatchingConfig
from agent.config import AgentSettings, SelectionSettings, ServerSettings
from agent.model import ModelSpec
from agent.runtimes.registry import RuntimeRegistry
from agent.server.app import RUNNER_OPTIONS, Agent, build_agent
from tests.agent.fakes import FakeRuntime, write_fake_model
from tests.agent.polling import until

MLP_INFER = "/v2/models/mlp/infer"


@dataclass
class Served:
    """A client for an agent running in this test's event loop, and the fake runtime."""

    client: TestClient[Any, Any]
    fake: FakeRuntime
    agent: Agent


async def wait_ready(client: TestClient[Any, Any]) -> None:
    """Poll readiness until the models are loaded (or a minute has passed)."""
    async with asyncio.timeout(60):
        while True:
            async with client.get("/v2/health/ready") as response:
                if response.status == 200:
                    return
            await asyncio.sleep(0.02)


@pytest.fixture
async def served(sample_models: Path, tmp_path: Path) -> AsyncIterator[Served]:
    fake = FakeRuntime()
    registry = RuntimeRegistry([*RuntimeRegistry.default().adapters, fake])
    slow = write_fake_model(tmp_path / "slow.fake", latency_ms=1)
    settings = AgentSettings(
        state_dir=tmp_path / "state",
        server=ServerSettings(max_body_mb=1.0, max_elements=100_000),
        selection=SelectionSettings(budget_s=0.1),
        models=(
            ModelSpec("mlp", 1, (sample_models / "mlp.onnx",), pin="onnxruntime/CPU"),
            ModelSpec(
                "slow",
                1,
                (slow,),
                batching=BatchingConfig(max_batch_size=1, max_queue_size=2),
            ),
        ),
    )
    agent = build_agent(settings, registry)
    server = TestServer(agent.app)
    await server.start_server(**RUNNER_OPTIONS)  # TestServer adds handler_cancellation itself
    async with TestClient(server) as client:
        await wait_ready(client)
        yield Served(client, fake, agent)


async def held(fake: FakeRuntime) -> None:
    """Wait until a request is running and held at the fake model's gate."""
    await until(lambda: fake.waiting > 0)


def mlp_request(**overrides: Any) -> dict[str, Any]:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [0.5] * 64}
    tensor.update(overrides)
    return {"inputs": [tensor]}


def binary_request(payload: bytes, size: int) -> tuple[bytes, dict[str, str]]:
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "input",
                    "datatype": "FP32",
                    "shape": [1, 64],
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    )
    return header + payload, {"Inference-Header-Content-Length": str(len(header))}


BOMB = gzip.compress(b"\0" * (8 * 1024 * 1024))  # 8 KB that inflate to 8 MB


CASES: list[tuple[str, str, bytes, dict[str, str], int, str]] = [
    (
        "wrong datatype",
        MLP_INFER,
        orjson.dumps(mlp_request(datatype="FP64")),
        {},
        400,
        "datatype FP64 does not match the model's FP32",
    ),
    (
        "wrong shape",
        MLP_INFER,
        orjson.dumps(mlp_request(shape=[1, 32], data=[0.5] * 32)),
        {},
        400,
        r"shape [1, 32] does not match",
    ),
    (
        "missing input",
        MLP_INFER,
        orjson.dumps(
            {"inputs": [{"name": "other", "datatype": "FP32", "shape": [1], "data": [1]}]}
        ),
        {},
        400,
        "unexpected input 'other'",
    ),
    (
        "unknown output",
        MLP_INFER,
        orjson.dumps({**mlp_request(), "outputs": [{"name": "nope"}]}),
        {},
        400,
        "unexpected inference output 'nope'",
    ),
    ("bad JSON", MLP_INFER, b'{"inputs": [', {}, 400, "not valid JSON"),
    (
        "truncated binary part",
        MLP_INFER,
        *binary_request(b"\0" * 100, 256),
        400,
        "expects 256 bytes of binary data but only 100 remain",
    ),
    (
        "binary size mismatch",
        MLP_INFER,
        *binary_request(b"\0" * 200, 200),
        400,
        "binary_data_size is 200 bytes but shape [1, 64] of FP32 needs 256",
    ),
    (
        "bad header length",
        MLP_INFER,
        b"{}",
        {"Inference-Header-Content-Length": "x"},
        400,
        "must be an integer",
    ),
    ("body too large", MLP_INFER, b" " * (2 * 1024 * 1024), {}, 413, "larger than the limit"),
    (
        "gzip bomb",
        MLP_INFER,
        BOMB,
        {"Content-Encoding": "gzip"},
        413,
        "decompressed body is larger than the limit",
    ),
    (
        "corrupt gzip",
        MLP_INFER,
        b"\x1f\x8bnot gzip",
        {"Content-Encoding": "gzip"},
        400,
        "cannot be decompressed",
    ),
    (
        "unsupported encoding",
        MLP_INFER,
        b"{}",
        {"Content-Encoding": "br"},
        501,
        "unsupported Content-Encoding 'br'",
    ),
    (
        "batch too large",
        MLP_INFER,
        orjson.dumps(mlp_request(shape=[33, 64], data=[0.1] * 2112)),
        {},
        400,
        "batch size 33 is outside 1..32",
    ),
    (
        "unknown model",
        "/v2/models/nope/infer",
        orjson.dumps(mlp_request()),
        {},
        404,
        "unknown model 'nope'",
    ),
    (
        "unknown version",
        "/v2/models/mlp/versions/9/infer",
        orjson.dumps(mlp_request()),
        {},
        404,
        "has no version 9",
    ),
    (
        "non-integer version",
        "/v2/models/mlp/versions/latest/infer",
        orjson.dumps(mlp_request()),
        {},
        400,
        "must be a decimal integer",
    ),
    (
        "non-ASCII digit version",  # '²'.isdigit(), but int() refuses it: was a 500 (tests/fuzz)
        "/v2/models/mlp/versions/%C2%B2/infer",
        orjson.dumps(mlp_request()),
        {},
        400,
        "must be a decimal integer",
    ),
    (
        "too many elements",
        MLP_INFER,
        orjson.dumps(mlp_request(shape=[2000, 64])),
        {},
        413,
        "elements exceed the limit",
    ),
]


@pytest.mark.parametrize(
    ("case", "path", "body", "headers", "status", "message"), CASES, ids=[c[0] for c in CASES]
)
async def test_bad_requests(
    served: Served,
    case: str,
    path: str,
    body: bytes,
    headers: dict[str, str],
    status: int,
    message: str,
) -> None:
    # A BytesIO body: aiohttp warns that large raw bytes would block the client's loop.
    async with served.client.post(path, data=io.BytesIO(body), headers=headers) as response:
        assert response.status == status
        document = await response.json()
    assert message in document["error"]
    # The agent keeps serving after every bad request.
    async with served.client.post(MLP_INFER, data=orjson.dumps(mlp_request())) as response:
        assert response.status == 200


async def test_unknown_route_and_method_are_json(served: Served) -> None:
    async with served.client.get("/v2/nothing") as response:
        assert response.status == 404
        assert "error" in await response.json()
    async with served.client.get(MLP_INFER) as response:
        assert response.status == 405
        assert "error" in await response.json()


async def test_compressed_request_without_content_type(served: Served) -> None:
    body = zlib.compress(orjson.dumps(mlp_request()))
    async with served.client.post(
        MLP_INFER, data=body, headers={"Content-Encoding": "deflate", "Content-Type": ""}
    ) as response:
        assert response.status == 200
        document = await response.json()
    assert document["outputs"][0]["name"] == "probabilities"
    assert abs(sum(document["outputs"][0]["data"]) - 1.0) < 1e-5


async def test_queue_full_is_503_with_retry_after(served: Served) -> None:
    served.fake.gate.clear()  # hold the model so that requests pile up
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    tasks: list[asyncio.Future[Any]] = []
    rejected = None
    while rejected is None and loop.time() < deadline:
        tasks.append(asyncio.ensure_future(served.client.post("/v2/models/slow/infer", data=body)))
        await asyncio.sleep(0.02)
        rejected = next((t.result() for t in tasks if t.done() and t.result().status == 503), None)
    assert rejected is not None
    assert rejected.headers["Retry-After"].isdigit()
    assert "queue of this model is full" in (await rejected.json())["error"]
    served.fake.gate.set()
    statuses = []
    for task in tasks:
        response = await task
        statuses.append(response.status)
        response.release()
    # One request runs and two wait (max_queue_size=2): those three are answered, and every
    # later one (the loop may send more before it sees the first 503) is turned away at once.
    assert statuses[:3] == [200, 200, 200]
    assert statuses[3:] == [503] * (len(tasks) - 3)
    assert len(tasks) >= 4


async def test_timeout_is_503(served: Served) -> None:
    served.fake.gate.clear()
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    blocker = asyncio.ensure_future(
        served.client.post("/v2/models/slow/infer", data=orjson.dumps(body))
    )
    await held(served.fake)
    timed = {**body, "parameters": {"timeout": 2000}}  # 2 ms, while the model is held
    async with served.client.post("/v2/models/slow/infer", data=orjson.dumps(timed)) as response:
        assert response.status == 503
        assert "timeout expired" in (await response.json())["error"]
        assert "Retry-After" in response.headers
    served.fake.gate.set()
    response = await blocker
    assert response.status == 200
    response.release()
    stats = (await (await served.client.get("/v2/models/slow/stats")).json())["model_stats"][0]
    assert stats["inference_stats"]["fail"]["count"] >= 1


async def test_metrics_follow_requests(served: Served) -> None:
    for _ in range(3):
        async with served.client.post(MLP_INFER, data=orjson.dumps(mlp_request())) as response:
            assert response.status == 200
    async with served.client.post(MLP_INFER, data=b"{") as response:
        assert response.status == 400
    async with served.client.get("/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    mlp = (("backend", "onnxruntime/CPU"), ("model", "mlp"), ("version", "1"))
    assert samples[("edgefleet_inference_request_success_total", mlp)] == 3
    assert samples[("edgefleet_inference_count_total", mlp)] == 3
    assert samples[("edgefleet_inference_exec_count_total", mlp)] == 3
    assert samples[("edgefleet_inference_pending_request_count", mlp)] == 0
    assert samples[("edgefleet_model_ready", mlp)] == 1
    assert samples[("edgefleet_inference_queue_duration_us_total", mlp)] > 0
    assert samples[("edgefleet_inference_compute_infer_duration_us_total", mlp)] > 0
    assert samples[("edgefleet_inference_batch_size_count", mlp)] == 3
    assert samples[("edgefleet_inference_request_latency_seconds_count", mlp)] == 3
    # The malformed body never reached the model: no backend failure is counted.
    backend_failures = (*mlp[:2], ("reason", "backend"), mlp[2])
    assert samples[("edgefleet_inference_request_failure_total", backend_failures)] == 0


async def test_work_of_a_disconnected_client_is_dropped(served: Served) -> None:
    served.fake.gate.clear()
    measured = len(served.fake.calls)  # selection ran the model while measuring it
    body = orjson.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}]}
    )
    blocker = asyncio.ensure_future(served.client.post("/v2/models/slow/infer", data=body))
    await held(served.fake)
    # A second client queues a request behind the held one, then hangs up.
    assert served.client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", served.client.port)
    writer.write(
        b"POST /v2/models/slow/infer HTTP/1.1\r\nHost: x\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    await writer.drain()
    model = served.agent.repository.resolve("slow", None)
    await until(lambda: model.pending == 1)
    writer.close()
    await writer.wait_closed()
    await until(lambda: model.pending == 0)  # the cancelled request leaves the queue
    served.fake.gate.set()
    response = await blocker
    assert response.status == 200
    response.release()
    assert len(served.fake.calls) == measured + 1, "the abandoned request must not run"
    del reader
