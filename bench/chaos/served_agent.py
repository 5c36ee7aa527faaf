"""The agent the load scenarios start: a compute-bound model, its request, its resource use.

The sample MLP costs the agent about 76 µs a request, so its capacity on 2 vCPUs (about 13,000
req/s) is set by the HTTP layer, and ten times it is beyond any client sharing the machine. An
edge device's capacity is set by inference instead; `write_model` builds such a model with
`onnx.helper`: `layers` times `h = tanh(h @ W + x)` with one shared 512x512 `W` (1 MiB file),
a contraction (|W| < 1), so float32 rounding does not grow through the layers and a numpy
reference checks every answer. The agent runs it on onnxruntime with one intra-op thread,
which leaves a core to the event loop and the load generator.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import psutil

from bench.http_client import Reply, http_request, infer_path
from bench.payloads import binary_body, decode_output
from bench.processes import (
    AGENT_READY_PATH,
    READY_DEADLINE_S,
    Server,
    edgefleet_executable,
    running,
)

MODEL = "dense"
WIDTH = 512
GAIN = 0.5  # spectral scale of W: well below 1, so the layers contract
TOLERANCE = 1e-4
MIB = 1024 * 1024


@dataclass(frozen=True)
class ServedModel:
    """A model file, one request body for it and the answer that body must get."""

    path: Path
    body: bytes  # binary tensor protocol: JSON header, then the FP32 row
    header_length: int
    expected: npt.NDArray[np.float32]

    def headers(self) -> dict[str, str]:
        """The headers of one inference request."""
        return {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(self.header_length),
        }

    def raw_request(self) -> bytes:
        """The whole HTTP/1.1 request, as the load generator writes it."""
        lines = [f"POST {infer_path(MODEL)} HTTP/1.1", "Host: 127.0.0.1"]
        lines += [f"{name}: {value}" for name, value in self.headers().items()]
        lines.append(f"Content-Length: {len(self.body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + self.body


def write_model(directory: Path, layers: int) -> ServedModel:
    """Write the compute-bound model with `layers` layers, and one request with its answer."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    # A Gaussian NxN matrix of std 1/sqrt(N) has a spectral norm near 2: scale it to GAIN.
    scale = GAIN / (2 * np.sqrt(WIDTH))
    weight = (rng.standard_normal((WIDTH, WIDTH)) * scale).astype(np.float32)
    nodes, current = [], "x"
    for i in range(layers):
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [current, "w"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", "x"], [f"a{i}"]))
        nodes.append(helper.make_node("Tanh", [f"a{i}"], [out]))
        current = out
    tensor: list[str | int] = ["N", WIDTH]
    graph = helper.make_graph(
        nodes,
        MODEL,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, tensor)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, tensor)],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = directory / f"{MODEL}-{layers}.onnx"
    path.write_bytes(model.SerializeToString())
    row = rng.uniform(-1, 1, (1, WIDTH)).astype(np.float32)
    body, header_length = binary_body("x", row)
    assert header_length is not None
    return ServedModel(path, body, header_length, reference(weight, row, layers))


def reference(
    weight: npt.NDArray[np.float32], row: npt.NDArray[np.float32], layers: int
) -> npt.NDArray[np.float32]:
    """The model's output for `row`, in float64 numpy."""
    w, x = weight.astype(np.float64), row.astype(np.float64)
    h = x
    for _ in range(layers):
        h = np.tanh(h @ w + x)
    return h.astype(np.float32)


@contextlib.contextmanager
def serving(work: Path, model: ServedModel, flags: Sequence[str] = ()) -> Iterator[Server]:
    """An `edgefleet agent serve` of `model` (onnxruntime, one intra-op thread), stopped after."""
    executable = edgefleet_executable()

    def command(port: int) -> list[str]:
        return [
            str(executable),
            "agent",
            "serve",
            "--model",
            f"{MODEL}={model.path}",
            "--pin",
            f"{MODEL}=onnxruntime/CPU",
            "--threads",
            "1",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--state-dir",
            str(work / "state"),
            *flags,
        ]

    with running("agent", command, AGENT_READY_PATH, work, READY_DEADLINE_S) as server:
        yield server


def answer_error(port: int, model: ServedModel) -> str | None:
    """Why one normal inference request failed, or None when it got the right answer."""
    try:
        reply = http_request(port, "POST", infer_path(MODEL), model.body, model.headers())
    except OSError as error:
        return f"no answer: {error}"
    return wrong_answer(reply, model)


def wrong_answer(reply: Reply, model: ServedModel) -> str | None:
    """What is wrong with an inference answer, or None when it matches the reference."""
    if reply.status != 200:
        return f"HTTP {reply.status}: {reply.body[:200]!r}"
    actual = decode_output(reply)
    if actual.shape != model.expected.shape:
        return f"output shape {actual.shape}, want {model.expected.shape}"
    diff = float(np.max(np.abs(actual - model.expected)))
    return None if diff <= TOLERANCE else f"output differs from the reference by {diff:.3g}"


def healthy(port: int) -> bool:
    """Whether liveness and readiness both answer 200."""
    try:
        return all(
            http_request(port, "GET", path, timeout=5.0).status == 200
            for path in ("/v2/health/live", AGENT_READY_PATH)
        )
    except OSError:
        return False


def log_errors(log: Path) -> list[str]:
    """The lines of an agent's log that report an error or start a traceback."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError as error:
        return [f"cannot read {log}: {error}"]
    return [line for line in lines if " ERROR " in line or line.startswith("Traceback")]


def log_errors_figure(log: Path) -> tuple[str, bool]:
    """The value of an "errors in the agent's log" figure, and whether there were none."""
    found = log_errors(log)
    if not found:
        return "0", True
    return f"{len(found)}, first: {found[0][:120]}", False


@dataclass(frozen=True)
class Resources:
    """A process's resident memory and open file descriptors at one moment."""

    rss: int  # bytes
    fds: int

    @property
    def rss_mib(self) -> float:
        """Resident memory in MiB."""
        return self.rss / MIB


def resources(pid: int) -> Resources:
    """The resident memory and open file descriptors of process `pid` now."""
    process = psutil.Process(pid)
    return Resources(process.memory_info().rss, process.num_fds())
