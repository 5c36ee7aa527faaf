"""Unmodified tritonclient (sync and aio) against a live agent, on all three runtimes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from tritonclient.utils import InferenceServerException

from agent.batching import BatchingConfig
from agent.config import AgentSettings, SelectionSettings
from agent.model import ModelSpec
from agent.tensors import OIP_TO_NUMPY
from tests.agent.echo_model import ECHO_TYPES, build_echo_model
from tests.agent.harness import AgentThread

# model name -> (sample file, pinned runtime, input name, output name, tolerance)
RUNTIME_MODELS: dict[str, tuple[str, str, str, str, float]] = {
    "mlp_onnxruntime": ("mlp.onnx", "onnxruntime/CPU", "input", "probabilities", 1e-5),
    "mlp_int8": ("mlp.int8.onnx", "onnxruntime/CPU", "input", "probabilities", 5e-2),
    "mlp_openvino": ("mlp.xml", "openvino/CPU", "input", "probabilities", 1e-5),
    "mlp_tflite": ("mlp.tflite", "tflite/CPU", "input", "probabilities", 1e-5),
    "cnn_onnxruntime": ("cnn.onnx", "onnxruntime/CPU", "image", "logits", 1e-4),
    "cnn_openvino": ("cnn.xml", "openvino/CPU", "image", "logits", 1e-4),
    "cnn_tflite": ("cnn.tflite", "tflite/CPU", "image", "logits", 1e-4),
}


@pytest.fixture(scope="module")
def agent(sample_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentThread]:
    """One agent serving every runtime's variant of the samples, plus an all-datatypes echo."""
    state = tmp_path_factory.mktemp("state")
    specs = [
        ModelSpec(name=name, version=1, paths=(sample_models / file,), pin=pin)
        for name, (file, pin, *_rest) in RUNTIME_MODELS.items()
    ]
    specs.append(ModelSpec(name="echo", version=1, paths=(build_echo_model(state / "echo.onnx"),)))
    # A long queue delay makes concurrent requests share batches deterministically.
    specs.append(
        ModelSpec(
            name="mlp_batched",
            version=1,
            paths=(sample_models / "mlp.onnx",),
            batching=BatchingConfig(max_batch_size=8, max_queue_delay_us=500_000),
        )
    )
    settings = AgentSettings(
        state_dir=state, models=tuple(specs), selection=SelectionSettings(budget_s=0.2)
    )
    thread = AgentThread(settings).start()
    yield thread
    thread.stop()


def expected(sample_models: Path, model: str) -> tuple[np.ndarray, np.ndarray]:
    """The fixed inputs and expected outputs written by sample-models."""
    family = model.split("_")[0]
    _, _, input_name, output_name, _ = RUNTIME_MODELS[model]
    inputs = np.load(sample_models / f"{family}.inputs.npz")[input_name]
    outputs = np.load(sample_models / f"{family}.expected.npz")[output_name]
    return inputs, outputs


def make_input(name: str, array: np.ndarray, datatype: str, binary: bool) -> httpclient.InferInput:
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def test_health_and_metadata(agent: AgentThread) -> None:
    client = httpclient.InferenceServerClient(agent.url)
    assert client.is_server_live()
    assert client.is_server_ready()
    metadata = client.get_server_metadata()
    assert metadata["name"] == "edgefleet"
    assert "binary_tensor_data" in metadata["extensions"]
    assert client.is_model_ready("mlp_onnxruntime")
    assert client.is_model_ready("mlp_onnxruntime", "1")
    assert not client.is_model_ready("mlp_onnxruntime", "7")
    model = client.get_model_metadata("cnn_openvino")
    assert model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "image", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert model["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert client.get_model_metadata("cnn_openvino", "1")["name"] == "cnn_openvino"
    client.close()


@pytest.mark.parametrize("model", sorted(RUNTIME_MODELS))
def test_config_reports_the_chosen_backend(agent: AgentThread, model: str) -> None:
    client = httpclient.InferenceServerClient(agent.url)
    config = client.get_model_config(model)
    runtime, device = RUNTIME_MODELS[model][1].split("/")
    assert config["edgefleet"]["runtime"] == runtime
    assert config["edgefleet"]["device"] == device
    assert config["max_batch_size"] == 32
    assert config["dynamic_batching"]["default_queue_policy"]["max_queue_size"] == 256
    assert config["input"][0]["dims"] in ([64], [3, 32, 32])
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    assert config["edgefleet"]["selection"]["chosen"].startswith(f"{runtime}/{device}")
    client.close()


@pytest.mark.parametrize("model", sorted(RUNTIME_MODELS))
@pytest.mark.parametrize(
    ("binary", "compression"),
    [(True, None), (False, None), (True, "gzip"), (False, "deflate")],
)
def test_sync_infer_matches_expected(
    agent: AgentThread, sample_models: Path, model: str, binary: bool, compression: str | None
) -> None:
    inputs, want = expected(sample_models, model)
    _, _, input_name, output_name, tolerance = RUNTIME_MODELS[model]
    client = httpclient.InferenceServerClient(agent.url)
    result = client.infer(
        model,
        [make_input(input_name, inputs, "FP32", binary)],
        outputs=[httpclient.InferRequestedOutput(output_name, binary_data=binary)],
        request_id="req-7",
        request_compression_algorithm=compression,
        response_compression_algorithm=compression,
    )
    got = result.as_numpy(output_name)
    assert got is not None
    np.testing.assert_allclose(got, want, atol=tolerance, rtol=0)
    response = result.get_response()
    assert response["id"] == "req-7"
    assert response["model_version"] == "1"
    client.close()


def test_infer_without_outputs_returns_all_binary(agent: AgentThread, sample_models: Path) -> None:
    inputs, want = expected(sample_models, "mlp_tflite")
    client = httpclient.InferenceServerClient(agent.url)
    result = client.infer("mlp_tflite", [make_input("input", inputs[:1], "FP32", True)])
    got = result.as_numpy("probabilities")
    assert got is not None
    np.testing.assert_allclose(got, want[:1], atol=1e-5)
    assert result.get_output("probabilities")["parameters"]["binary_data_size"] == 40
    client.close()


def test_classification_extension(agent: AgentThread, sample_models: Path) -> None:
    inputs, want = expected(sample_models, "mlp_onnxruntime")
    client = httpclient.InferenceServerClient(agent.url)
    result = client.infer(
        "mlp_onnxruntime",
        [make_input("input", inputs, "FP32", True)],
        outputs=[httpclient.InferRequestedOutput("probabilities", class_count=2)],
    )
    classes = result.as_numpy("probabilities")
    assert classes is not None
    assert classes.shape == (len(inputs), 2)
    top = [int(item.decode().split(":")[1]) for item in classes[:, 0]]
    assert top == [int(i) for i in np.argmax(want, axis=1)]
    client.close()


def test_classification_ranks_integers_by_value_and_refuses_bool_and_bytes(
    agent: AgentThread,
) -> None:
    # Found by tests/fuzz: ranking by -x put 0 first for unsigned types (and -128 first for
    # INT8), and BOOL or BYTES outputs failed with a 500.
    client = httpclient.InferenceServerClient(agent.url)
    scores = {"UINT8": [[0, 5, 3]], "INT8": [[-128, 5, 3]], "UINT64": [[0, 2**64 - 1, 3]]}
    inputs = []
    for datatype in ECHO_TYPES:
        values = scores.get(datatype, [[b"", b"", b""]] if datatype == "BYTES" else [[0, 0, 0]])
        array = np.array(values, dtype=OIP_TO_NUMPY[datatype])
        inputs.append(make_input(f"in_{datatype}", array, datatype, True))
    outputs = [httpclient.InferRequestedOutput(f"out_{d}", class_count=3) for d in scores]
    result = client.infer("echo", inputs, outputs=outputs)
    for datatype in scores:
        ranked = result.as_numpy(f"out_{datatype}")
        assert ranked is not None
        assert [item.decode().split(":")[1] for item in ranked[0]] == ["1", "2", "0"], datatype
    for datatype in ("BOOL", "BYTES"):
        refused = [httpclient.InferRequestedOutput(f"out_{datatype}", class_count=1)]
        with pytest.raises(InferenceServerException, match="ranks numbers only") as info:
            client.infer("echo", inputs, outputs=refused)
        assert info.value.status() == "400"
    client.close()


@pytest.mark.parametrize("binary", [True, False])
def test_every_datatype_round_trips(agent: AgentThread, binary: bool) -> None:
    rng = np.random.default_rng(1)
    client = httpclient.InferenceServerClient(agent.url)
    inputs, sent = [], {}
    for datatype in ECHO_TYPES:
        if datatype == "FP16" and not binary:
            continue  # FP16 cannot travel as JSON
        array: np.ndarray[Any, Any]
        if datatype == "BYTES":
            array = np.array([[b"a", b"", b"xyz"], [b"q", b"rs", b"t"]], dtype=np.object_)
        elif datatype == "BOOL":
            array = rng.integers(0, 2, (2, 3)).astype(bool)
        else:
            from agent.tensors import OIP_TO_NUMPY

            array = rng.integers(0, 100, (2, 3)).astype(OIP_TO_NUMPY[datatype])
        sent[datatype] = array
        inputs.append(make_input(f"in_{datatype}", array, datatype, binary))
    if not binary:  # the echo model needs every input: send FP16 binary even here
        fp16 = np.ones((2, 3), dtype=np.float16)
        inputs.append(make_input("in_FP16", fp16, "FP16", True))
    outputs = [
        httpclient.InferRequestedOutput(f"out_{d}", binary_data=binary or d == "FP16")
        for d in ECHO_TYPES
    ]
    result = client.infer("echo", inputs, outputs=outputs)
    for datatype, array in sent.items():
        got = result.as_numpy(f"out_{datatype}")
        assert got is not None, datatype
        if datatype == "BYTES":
            decoded = [x if isinstance(x, bytes) else x.encode() for x in got.ravel()]
            assert decoded == list(array.ravel())
        else:
            np.testing.assert_array_equal(got, array)
            assert got.dtype == array.dtype, datatype
    client.close()


def test_statistics_and_repository(agent: AgentThread, sample_models: Path) -> None:
    client = httpclient.InferenceServerClient(agent.url)
    inputs, _ = expected(sample_models, "cnn_tflite")
    before = client.get_inference_statistics("cnn_tflite")["model_stats"][0]
    client.infer("cnn_tflite", [make_input("image", inputs, "FP32", True)])
    stats = client.get_inference_statistics("cnn_tflite", "1")["model_stats"][0]
    assert stats["name"] == "cnn_tflite"
    assert stats["version"] == "1"
    success = stats["inference_stats"]["success"]["count"]
    assert success == before["inference_stats"]["success"]["count"] + 1
    assert stats["inference_count"] == before["inference_count"] + len(inputs)
    everything = client.get_inference_statistics()["model_stats"]
    assert {s["name"] for s in everything} >= set(RUNTIME_MODELS)
    index = client.get_model_repository_index()
    assert {"name": "echo", "version": "1", "state": "READY"} in index
    client.close()


def test_unload_and_load(agent: AgentThread, sample_models: Path) -> None:
    client = httpclient.InferenceServerClient(agent.url)
    client.unload_model("mlp_int8")
    assert not client.is_model_ready("mlp_int8")
    assert not client.is_server_ready()
    inputs, _ = expected(sample_models, "mlp_int8")
    with pytest.raises(InferenceServerException, match="not ready") as info:
        client.infer("mlp_int8", [make_input("input", inputs, "FP32", True)])
    assert info.value.status() == "503"
    client.load_model("mlp_int8")
    assert client.is_model_ready("mlp_int8")
    assert client.is_server_ready()
    with pytest.raises(InferenceServerException, match="not allowed"):
        client.load_model("mlp_int8", config='{"backend": "python"}')
    client.close()


def test_errors_reach_the_client_with_their_status(agent: AgentThread) -> None:
    client = httpclient.InferenceServerClient(agent.url)
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as info:
        client.get_model_metadata("nope")
    assert info.value.status() == "404"
    bad = make_input("input", np.zeros((1, 63), dtype=np.float32), "FP32", True)
    with pytest.raises(InferenceServerException, match=r"shape \[1, 63\] does not match") as info:
        client.infer("mlp_onnxruntime", [bad])
    assert info.value.status() == "400"
    client.close()


async def test_aio_client(agent: AgentThread, sample_models: Path) -> None:
    client = aioclient.InferenceServerClient(agent.url)
    try:
        assert await client.is_server_live()
        assert await client.is_server_ready()
        assert await client.is_model_ready("cnn_onnxruntime")
        assert (await client.get_server_metadata())["name"] == "edgefleet"
        assert (await client.get_model_metadata("cnn_onnxruntime"))["platform"] == (
            "onnxruntime_onnx"
        )
        config = await client.get_model_config("cnn_tflite")
        assert config["edgefleet"]["runtime"] == "tflite"
        stats = await client.get_inference_statistics("cnn_tflite")
        assert stats["model_stats"][0]["name"] == "cnn_tflite"
        assert await client.get_model_repository_index()
        for model in ("mlp_openvino", "cnn_tflite", "cnn_onnxruntime"):
            inputs, want = expected(sample_models, model)
            _, _, input_name, output_name, tolerance = RUNTIME_MODELS[model]
            for binary, compression in ((True, None), (False, "gzip"), (True, "deflate")):
                tensor = aioclient.InferInput(input_name, list(inputs.shape), "FP32")
                tensor.set_data_from_numpy(inputs, binary_data=binary)
                result = await client.infer(
                    model,
                    [tensor],
                    outputs=[aioclient.InferRequestedOutput(output_name, binary_data=binary)],
                    request_compression_algorithm=compression,
                    response_compression_algorithm=compression,
                )
                got = result.as_numpy(output_name)
                assert got is not None
                np.testing.assert_allclose(got, want, atol=tolerance, rtol=0)
    finally:
        await client.close()


async def test_concurrent_requests_are_batched_and_answered_individually(
    agent: AgentThread, sample_models: Path
) -> None:
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(sample_models / "mlp.onnx"), providers=["CPUExecutionProvider"]
    )
    rows = np.random.default_rng(7).standard_normal((16, 64)).astype(np.float32)
    client = aioclient.InferenceServerClient(agent.url)
    try:
        before = (await client.get_inference_statistics("mlp_batched"))["model_stats"][0]

        async def one(row: np.ndarray) -> np.ndarray:
            tensor = aioclient.InferInput("input", [1, 64], "FP32")
            tensor.set_data_from_numpy(row[None, :])
            result = await client.infer("mlp_batched", [tensor])
            return np.asarray(result.as_numpy("probabilities"))

        answers = await asyncio.gather(*(one(row) for row in rows))
        after = (await client.get_inference_statistics("mlp_batched"))["model_stats"][0]
    finally:
        await client.close()
    for row, got in zip(rows, answers, strict=True):
        (want,) = session.run(None, {"input": row[None, :]})
        np.testing.assert_allclose(got, want, atol=1e-6)
    executions = after["execution_count"] - before["execution_count"]
    assert after["inference_count"] - before["inference_count"] == len(rows)
    assert executions < len(rows), "16 concurrent requests never shared a batch"
    assert any(b["batch_size"] > 1 for b in after["batch_stats"])
