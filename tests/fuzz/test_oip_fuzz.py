"""Fuzzing the agent's inference API: generated, edited and broken requests against a live agent.

One agent serves two real ONNX models on onnxruntime: the sample MLP and the echo model (every
OIP datatype in, the same out). Whatever a request holds, the agent must answer it: never a
5xx (501 is the documented answer for a protocol feature it does not implement), every error
as JSON `{"error": "..."}` naming the problem (a message its HTTP parser refuses before the
application sees it is the one exception), no hang. Valid requests get exactly the right
answer, and after each target a valid inference still does.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.config import AgentSettings, SelectionSettings, ServerSettings
from agent.model import ModelSpec
from tests.agent.echo_model import build_echo_model
from tests.agent.harness import AgentThread
from tests.fuzz.budget import fuzz_settings
from tests.fuzz.mutations import mutate_bytes
from tests.fuzz.oip_hostile import RawRequest, almost_valid_cases, framing_cases, path_requests
from tests.fuzz.oip_requests import InferCase, decode_outputs, echo_cases, mlp_cases, top_k
from tests.fuzz.recorder import Tally, recording
from tests.fuzz.wire import Reply, exchange, request

UNSUPPORTED = 501  # agent.errors.Unsupported: a protocol feature the agent does not implement


@pytest.fixture(scope="module")
def agent(sample_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentThread]:
    """A live agent serving the sample MLP and the echo model on onnxruntime."""
    state = tmp_path_factory.mktemp("fuzz-agent")
    models = (
        ModelSpec("mlp", 1, (sample_models / "mlp.onnx",), pin="onnxruntime/CPU"),
        ModelSpec("echo", 1, (build_echo_model(state / "echo.onnx"),), pin="onnxruntime/CPU"),
    )
    settings = AgentSettings(
        state_dir=state,
        server=ServerSettings(max_body_mb=1.0, max_elements=100_000),
        selection=SelectionSettings(budget_s=0.1),
        models=models,
    )
    thread = AgentThread(settings).start()
    yield thread
    thread.stop()


def check_answer(
    reply: Reply | None,
    tally: Tally,
    *,
    http_errors: bool = False,
    may_close: bool = False,
    inference: bool = True,
) -> None:
    """No 5xx but 501, no silent close, every error a JSON body with a message, answers readable.

    With `http_errors`, the request may be malformed HTTP: aiohttp then answers in plain text
    before the application sees it (400 from its parser, 417 for an unknown `Expect`). With
    `may_close`, the body may never have arrived in full: closing without an answer is right.
    """
    if reply is None:
        assert may_close, "the agent closed the connection without an answer"
        tally.saw("closed")
        return
    if http_errors and reply.status in (400, 417) and reply.content_type == "text/plain":
        tally.saw(f"{reply.status} (HTTP layer)")
        return
    tally.saw(reply.status)
    assert reply.status < 500 or reply.status == UNSUPPORTED, f"{reply.status}: {reply.body!r}"
    if reply.status >= 400:
        assert reply.content_type == "application/json", f"{reply.status}: {reply.body[:200]!r}"
        error = reply.json().get("error")
        assert isinstance(error, str), f"{reply.status} without an error message: {reply.body!r}"
        assert error.strip(), f"{reply.status} with an empty error message"
    elif inference:
        decode_outputs(reply)
    elif reply.content_type == "application/json":
        reply.json()


def infer(agent: AgentThread, case: InferCase) -> Reply:
    """Send a generated inference request."""
    body, headers = case.body()
    return request(agent.port, "POST", f"/v2/models/{case.model}/infer", body, headers)


def still_serves(agent: AgentThread, sample_models: Path) -> None:
    """A valid inference of the sample inputs gets the expected probabilities."""
    inputs = np.load(sample_models / "mlp.inputs.npz")["input"]
    expected = np.load(sample_models / "mlp.expected.npz")["probabilities"]
    case = InferCase({"inputs": [{"name": "input", "datatype": "FP32"}]}, model="mlp")
    case.document["inputs"][0].update(shape=list(inputs.shape), data=inputs.ravel().tolist())
    reply = infer(agent, case)
    assert reply.status == 200, reply.body
    _, outputs = decode_outputs(reply)
    np.testing.assert_allclose(outputs["probabilities"], expected, atol=1e-5)


def check_echo(case: InferCase, reply: Reply) -> None:
    """The echo model's answer holds exactly the inputs sent (or their top-k classes)."""
    header, outputs = decode_outputs(reply)
    assert header["model_name"] == "echo"
    assert header.get("id") == case.document.get("id")
    assert sorted(outputs) == sorted(f"out_{d}" for d in case.wanted)
    for datatype, classes in case.wanted.items():
        got, sent = outputs[f"out_{datatype}"], case.sent[datatype]
        if classes:
            assert got.shape == (len(sent), min(classes, 3))
            for row, answer in zip(sent, got, strict=True):
                expected = top_k(row, classes)
                assert expected is None or [a.decode() for a in answer] == expected, datatype
        elif datatype == "FP16":  # NaN != NaN: compare the bits
            assert got.view(np.uint16).tolist() == sent.view(np.uint16).tolist()
        else:
            assert got.dtype == sent.dtype, datatype
            assert got.tolist() == sent.tolist(), datatype


def check_mlp(case: InferCase, reply: Reply) -> None:
    """The MLP answers one row of probabilities per input row."""
    _, outputs = decode_outputs(reply)
    probabilities = outputs["probabilities"]
    assert probabilities.shape == (len(case.sent["FP32"]), 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


def test_valid_requests_get_the_right_answer(agent: AgentThread, sample_models: Path) -> None:
    with recording("oip-infer-valid") as tally:

        @fuzz_settings
        @given(case=echo_cases() | mlp_cases())
        def valid(case: InferCase) -> None:
            tally.example()
            reply = infer(agent, case)
            tally.saw(reply.status)
            if case.refusal:
                assert reply.status == 400, reply.body
                assert case.refusal in reply.json()["error"]
                return
            assert reply.status == 200, reply.body
            (check_echo if case.model == "echo" else check_mlp)(case, reply)

        valid()
        still_serves(agent, sample_models)


def test_almost_valid_requests_get_a_json_error(agent: AgentThread, sample_models: Path) -> None:
    with recording("oip-infer-almost-valid") as tally:

        @fuzz_settings
        @given(case=almost_valid_cases())
        def almost_valid(case: InferCase) -> None:
            tally.example()
            check_answer(infer(agent, case), tally)

        almost_valid()
        still_serves(agent, sample_models)


def test_mutated_bodies_get_a_json_error(agent: AgentThread, sample_models: Path) -> None:
    with recording("oip-body-bytes") as tally:

        @fuzz_settings
        @given(case=echo_cases() | mlp_cases(), data=st.data())
        def mutated(case: InferCase, data: st.DataObject) -> None:
            tally.example()
            body, headers = case.body()
            for _ in range(data.draw(st.integers(1, 3))):
                body = data.draw(mutate_bytes(body))
            path = f"/v2/models/{case.model}/infer"
            check_answer(request(agent.port, "POST", path, body, headers), tally)

        mutated()
        still_serves(agent, sample_models)


def test_broken_http_framing_is_answered_or_closed(agent: AgentThread, sample_models: Path) -> None:
    with recording("oip-http-framing") as tally:

        @fuzz_settings
        @given(raw=framing_cases())
        def framing(raw: RawRequest) -> None:
            tally.example()
            reply = exchange(agent.port, raw.data, raw.half_close, raw.patience_s)
            check_answer(reply, tally, http_errors=True, may_close=True)
            assert request(agent.port, "GET", "/v2/health/live").status == 200

        framing()
        still_serves(agent, sample_models)


def test_any_path_and_method_get_a_json_answer(agent: AgentThread, sample_models: Path) -> None:
    with recording("oip-paths") as tally:

        @fuzz_settings
        @given(call=path_requests())
        def paths(call: tuple[str, str, bytes]) -> None:
            tally.example()
            method, path, body = call
            reply = request(agent.port, method, path, body)
            check_answer(reply, tally, http_errors=True, inference=path.endswith("/infer"))

        paths()
        still_serves(agent, sample_models)
