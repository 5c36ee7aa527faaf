"""Request bodies for the agent (JSON or binary, one or more rows) and checks of its answers."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from agent.sample_models import SampleIndex, SampleModel
from bench import BenchError
from bench.http_client import Reply, http_request, infer_path

PayloadKey = tuple[str, str, int]  # model, encoding ("json" or "binary"), rows per request


@dataclass(frozen=True)
class Payload:
    """One prebuilt request body for a model, and the answer it must get."""

    model: str
    encoding: str
    rows: int
    path: Path
    header_length: int | None  # Inference-Header-Content-Length; None for plain JSON
    expected: np.ndarray  # the reference output of the request's rows
    tolerance: float

    @property
    def content_type(self) -> str:
        """The Content-Type header wrk and the checks send."""
        return "application/json" if self.header_length is None else "application/octet-stream"

    def headers(self) -> dict[str, str]:
        """Request headers for one POST of this body."""
        headers = {"Content-Type": self.content_type}
        if self.header_length is not None:
            headers["Inference-Header-Content-Length"] = str(self.header_length)
        return headers


def build_payloads(
    index: SampleIndex, models_dir: Path, wanted: Iterable[PayloadKey]
) -> dict[PayloadKey, Payload]:
    """Write one body per wanted (model, encoding, rows), from the model's sample inputs."""
    samples = {sample.name: sample for sample in index.models}
    return {key: write_payload(samples[key[0]], models_dir, *key[1:]) for key in wanted}


def write_payload(sample: SampleModel, models_dir: Path, encoding: str, rows: int) -> Payload:
    """Write a body of `rows` rows next to the models, with the reference answer for them."""
    body, length = (json_body if encoding == "json" else binary_body)(
        sample.inputs[0].name, sample_rows(models_dir, sample, rows)
    )
    path = models_dir / f"{sample.name}.{encoding}.{rows}rows.body"
    path.write_bytes(body)
    expected = np.load(models_dir / sample.expected_file)[sample.outputs[0].name]
    reference = np.resize(expected, (rows, *expected.shape[1:]))
    tolerance = max(sample.tolerance.values(), default=1e-4)
    return Payload(sample.name, encoding, rows, path, length, reference, tolerance)


def sample_rows(models_dir: Path, sample: SampleModel, rows: int) -> np.ndarray:
    """`rows` FP32 input rows: the sample model's inputs, repeated as needed."""
    inputs = np.load(models_dir / sample.inputs_file)[sample.inputs[0].name].astype("<f4")
    return np.resize(inputs, (rows, *inputs.shape[1:]))


def json_body(name: str, array: np.ndarray) -> tuple[bytes, int | None]:
    """An all-JSON inference request."""
    tensor = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
    return orjson.dumps({"inputs": [{**tensor, "data": array.ravel().tolist()}]}), None


def binary_body(name: str, array: np.ndarray) -> tuple[bytes, int | None]:
    """A request with binary input and binary output, as tritonclient sends by default."""
    data = array.tobytes()
    tensor = {"name": name, "datatype": "FP32", "shape": list(array.shape)}
    header = orjson.dumps(
        {
            "inputs": [{**tensor, "parameters": {"binary_data_size": len(data)}}],
            "parameters": {"binary_data_output": True},
        }
    )
    return header + data, len(header)


def post(port: int, path: str, payload: Payload) -> Reply:
    """POST a payload's body once."""
    return http_request(port, "POST", path, payload.path.read_bytes(), payload.headers())


def check_answer(port: int, payload: Payload) -> None:
    """Send the payload once and compare the answer with the numpy reference."""
    reply = post(port, infer_path(payload.model), payload)
    label = f"{payload.model} {payload.encoding} ({payload.rows} rows)"
    if reply.status != 200:
        raise BenchError(f"{label}: HTTP {reply.status}: {reply.body[:300]!r}")
    actual = decode_output(reply)
    if actual.shape != payload.expected.shape:
        raise BenchError(f"{label}: output shape {actual.shape}, want {payload.expected.shape}")
    diff = float(np.max(np.abs(actual - payload.expected)))
    if not diff <= payload.tolerance:
        raise BenchError(f"{label}: output differs from the reference by {diff:.3g}")


def decode_output(reply: Reply) -> np.ndarray:
    """The first output of an inference answer, JSON or binary."""
    raw = reply.headers.get("inference-header-content-length")
    length = int(raw) if raw else len(reply.body)
    output = orjson.loads(reply.body[:length])["outputs"][0]
    if "data" in output:
        values = np.asarray(output["data"], dtype=np.float32)
    else:
        values = np.frombuffer(reply.body[length:], dtype="<f4")
    return values.reshape(output["shape"])
