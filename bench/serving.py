"""Serving benchmark: the agent under wrk, against baselines measured in the same run.

    .venv/bin/python -m bench.serving [--duration S] [--quick] [--output docs/benchmarks.md]

Baselines: a trivial aiohttp endpoint (`bench.trivial_server`, the agent's server settings)
under the same wrk load, and onnxruntime called in-process on the same model files. The agent
runs as `edgefleet agent serve` in a subprocess on 127.0.0.1. Targets are reported as met or
missed, never asserted: timings on a shared machine are noisy, so compare the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import importlib.metadata
import os
import platform
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path

import numpy as np
import orjson
import psutil

from agent.sample_models import SampleIndex, SampleModel, write_sample_models

REPO = Path(__file__).resolve().parents[1]
LUA_SCRIPT = Path(__file__).with_name("wrk_post.lua")
DEFAULT_OUTPUT = REPO / "docs" / "benchmarks.md"
START_MARK = "<!-- bench:serving:start -->"
END_MARK = "<!-- bench:serving:end -->"
MODELS = ("mlp", "cnn")
ENCODINGS = ("json", "binary")
CONCURRENCY = (1, 32)
READY_PATH = "/v2/health/ready"
WARMUP_S = 1  # a discarded wrk run before each measured one
FIRST_READY_DEADLINE_S = 180.0  # a first start measures every variant of every model
READY_DEADLINE_S = 60.0
STARTS = 3  # start-to-ready and RSS are medians over this many starts
WARM_REQUESTS = 20
IDLE_S = 0.5
RAW_LOOPS = 7
RAW_LOOP_S = 0.3
MB = 1e6

# Targets from the issue; each is reported as met or missed against the binary rows.
MLP_TARGET_RATIO = 0.8
CNN_TARGET_RATIO = 0.7
RSS_TARGET_MB = 100.0
READY_TARGET_S = 1.5

Command = Callable[[int], list[str]]


class BenchError(Exception):
    """The benchmark cannot go on: a missing tool, a server that fails or answers wrongly."""


def say(message: str) -> None:
    """Print a progress line at once."""
    print(message, flush=True)


# --- wrk -------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    """Return the path of `wrk`, installing it with apt-get when it is missing."""
    found = shutil.which("wrk")
    if found:
        return found
    say("wrk is not installed: installing it with `apt-get update && apt-get install -y wrk`")
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise BenchError("wrk is missing and apt-get cannot run here (needs root): install wrk")
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "wrk"]):
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise BenchError(f"`{shlex.join(command)}` failed:\n{done.stderr[-2000:]}")
    found = shutil.which("wrk")
    if not found:
        raise BenchError("apt-get installed wrk but it is not on PATH")
    return found


@dataclass(frozen=True)
class WrkResult:
    """What one wrk run measured."""

    requests: int
    duration_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    rows_per_batch: float | None = None  # from the agent's statistics, when it was the target

    @property
    def rate(self) -> float:
        """Completed requests per second."""
        return self.requests / self.duration_s

    @property
    def errors(self) -> int:
        """Responses that were not 2xx/3xx, plus connect, read, write and timeout errors."""
        return self.non_2xx + self.socket_errors


@dataclass(frozen=True)
class Payload:
    """One prebuilt request body for a model, and the answer it must get."""

    model: str
    encoding: str
    path: Path
    header_length: int | None  # Inference-Header-Content-Length; None for plain JSON
    expected: np.ndarray  # the reference output of the request's one row
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


def run_wrk(wrk: str, url: str, payload: Payload, connections: int, duration_s: int) -> WrkResult:
    """Run wrk with `wrk_post.lua` against `url` and read the summary line it prints."""
    length = "" if payload.header_length is None else str(payload.header_length)
    command = [wrk, "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency"]
    command += ["-s", str(LUA_SCRIPT), url, "--", str(payload.path), payload.content_type, length]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-1000:]}")
    return parse_wrk(done.stdout)


def parse_wrk(stdout: str) -> WrkResult:
    """Read the `BENCH_JSON` line that `wrk_post.lua`'s `done` hook prints."""
    for line in stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            data = orjson.loads(line.removeprefix("BENCH_JSON "))
            return WrkResult(
                requests=int(data["requests"]),
                duration_s=data["duration_us"] / 1e6,
                p50_ms=data["p50_us"] / 1e3,
                p99_ms=data["p99_us"] / 1e3,
                non_2xx=int(data["non_2xx"]),
                socket_errors=sum(int(data[k]) for k in ("connect", "read", "write", "timeout")),
            )
    raise BenchError(f"wrk printed no BENCH_JSON summary:\n{stdout[-1000:]}")


# --- processes and HTTP ----------------------------------------------------------------------


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


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Server:
    """A server process started by the benchmark."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    ready_s: float = 0.0  # from Popen to the first 200 on the ready path


@contextlib.contextmanager
def running(
    name: str, command: Command, ready_path: str, log_dir: Path, deadline_s: float
) -> Iterator[Server]:
    """Start a server on a free port, wait until it is ready, and always stop it afterwards."""
    port = free_port()
    log = log_dir / f"{name}-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    with log.open("wb") as sink:
        started = time.perf_counter()
        process = subprocess.Popen(
            command(port),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only us; `finally` stops the server
        )
    server = Server(name, process, port, log)
    try:
        server.ready_s = wait_ready(server, ready_path, started, deadline_s)
        yield server
    finally:
        stop(process)


def wait_ready(server: Server, path: str, started: float, deadline_s: float) -> float:
    """Poll `path` until it answers 200; return the seconds since `started`."""
    while True:
        code = server.process.poll()
        if code is not None:
            raise BenchError(f"{server.name} exited ({code}) before ready:\n{tail(server.log)}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            if http_request(server.port, "GET", path, timeout=1.0).status == 200:
                return time.perf_counter() - started
        if time.perf_counter() - started > deadline_s:
            raise BenchError(
                f"{server.name} not ready after {deadline_s:.0f} s:\n{tail(server.log)}"
            )
        time.sleep(0.01)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Terminate a process, killing it if it has not exited after 10 s."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def tail(log: Path, lines: int = 20) -> str:
    """The last lines of a server's log."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError as error:
        return f"(cannot read {log}: {error})"


def trivial_command(port: int) -> list[str]:
    """The command line of the trivial aiohttp endpoint."""
    return [sys.executable, "-m", "bench.trivial_server", "--port", str(port)]


@dataclass(frozen=True)
class AgentLaunch:
    """How to start one `edgefleet agent serve`."""

    executable: Path
    models: dict[str, list[Path]]
    state_dir: Path
    policy: str
    queue_delay_us: int

    def command(self, port: int) -> list[str]:
        """The command line for `port`."""
        command = [str(self.executable), "agent", "serve"]
        for name, paths in self.models.items():
            command += ["--model", f"{name}={','.join(str(p) for p in paths)}"]
        command += ["--host", "127.0.0.1", "--port", str(port), "--state-dir", str(self.state_dir)]
        command += ["--policy", self.policy, "--max-queue-delay-us", str(self.queue_delay_us)]
        return command


def edgefleet_executable() -> Path:
    """The `edgefleet` console script next to this interpreter."""
    path = Path(sys.executable).with_name("edgefleet")
    if not path.exists():
        raise BenchError(f"{path} does not exist: install the project (pip install -e .)")
    return path


# --- payloads and answers --------------------------------------------------------------------


def infer_path(model: str) -> str:
    """The OIP inference route of `model`."""
    return f"/v2/models/{model}/infer"


def build_payloads(index: SampleIndex, models_dir: Path) -> dict[tuple[str, str], Payload]:
    """Write a batch-1 JSON body and a binary body per model, from its sample inputs."""
    payloads: dict[tuple[str, str], Payload] = {}
    for sample in index.models:
        name, output = sample.inputs[0].name, sample.outputs[0].name
        row = np.load(models_dir / sample.inputs_file)[name][:1].astype("<f4")
        expected = np.load(models_dir / sample.expected_file)[output][:1]
        tolerance = max(sample.tolerance.values(), default=1e-4)
        for encoding in ENCODINGS:
            body, length = (json_body if encoding == "json" else binary_body)(name, row)
            path = models_dir / f"{sample.name}.{encoding}.body"
            path.write_bytes(body)
            payloads[sample.name, encoding] = Payload(
                sample.name, encoding, path, length, expected, tolerance
            )
    return payloads


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
    label = f"{payload.model} {payload.encoding}"
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


# --- measurements ----------------------------------------------------------------------------


@dataclass
class Results:
    """Every figure of one run, keyed by short labels such as "mlp binary c=32"."""

    load: dict[str, WrkResult] = field(default_factory=dict)
    raw_rows_s: dict[str, float] = field(default_factory=dict)  # "cnn b32"
    rss_mb: dict[str, float] = field(default_factory=dict)  # "agent", "trivial"
    ready_s: dict[str, float] = field(default_factory=dict)
    chosen: dict[str, str] = field(default_factory=dict)  # model -> candidate the agent serves
    versions: str = ""  # of the packages and tools measured


@dataclass(frozen=True)
class Bench:
    """What every phase of one run shares."""

    wrk: str
    work: Path  # temporary: models, bodies, state directories, server logs
    models_dir: Path
    index: SampleIndex
    payloads: dict[tuple[str, str], Payload]
    duration_s: int
    policy: str
    batch_delay_us: int

    def agent(self, models: dict[str, list[Path]], state: str, delay_us: int) -> AgentLaunch:
        """An agent launch with this run's policy."""
        executable = edgefleet_executable()
        return AgentLaunch(executable, models, self.work / state, self.policy, delay_us)

    def sample(self, name: str) -> SampleModel:
        """The sample model called `name`."""
        return next(m for m in self.index.models if m.name == name)

    def files(self, name: str) -> list[Path]:
        """Every variant of a sample model that was written."""
        return [self.models_dir / f.model.file for f in self.sample(name).files]


def load(bench: Bench, port: int, path: str, payload: Payload, label: str, c: int) -> WrkResult:
    """A discarded warm-up run, then the measured wrk run (with the agent's mean batch size)."""
    url = f"http://127.0.0.1:{port}{path}"
    run_wrk(bench.wrk, url, payload, c, WARMUP_S)
    before = batch_counts(port, payload.model)
    result = run_wrk(bench.wrk, url, payload, c, bench.duration_s)
    after = batch_counts(port, payload.model)
    if before is not None and after is not None and after[1] > before[1]:
        mean = (after[0] - before[0]) / (after[1] - before[1])
        result = replace(result, rows_per_batch=mean)
    say(
        f"  {label:<24} {result.rate:>9,.0f} req/s  p50 {result.p50_ms:6.2f} ms  "
        f"p99 {result.p99_ms:6.2f} ms  errors {result.errors}"
    )
    if result.errors:
        say(f"  !!! {label}: {result.errors} requests FAILED (non-2xx or socket errors)")
    return result


def raw_rows_per_s(model: Path, name: str, rows: np.ndarray) -> float:
    """Median rows/s of onnxruntime running `rows` in-process, over several timed loops."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = {name: rows}
    for _ in range(20):
        session.run(None, feed)
    rates = []
    for _ in range(RAW_LOOPS):
        runs, started, elapsed = 0, time.perf_counter(), 0.0
        while elapsed < RAW_LOOP_S:
            session.run(None, feed)
            runs += 1
            elapsed = time.perf_counter() - started
        rates.append(runs * len(rows) / elapsed)
    return statistics.median(rates)


def measure_raw(bench: Bench, results: Results) -> None:
    """onnxruntime in-process on each model's FP32 ONNX file, batch 1 and batch 32."""
    say("onnxruntime in-process (CPUExecutionProvider)")
    for model in MODELS:
        sample = bench.sample(model)
        name = sample.inputs[0].name
        inputs = np.load(bench.models_dir / sample.inputs_file)[name].astype(np.float32)
        for batch in (1, 32):
            rows = np.resize(inputs, (batch, *inputs.shape[1:]))
            rate = raw_rows_per_s(bench.models_dir / f"{model}.onnx", name, rows)
            results.raw_rows_s[f"{model} b{batch}"] = rate
            say(f"  {model} batch {batch:<2} {rate:>12,.0f} rows/s")


def start_figures(
    bench: Bench, name: str, command: Command, ready_path: str, path: str, payload: Payload
) -> tuple[float, float]:
    """Median start-to-ready seconds and idle RSS (MB, after a few requests) over a few starts."""
    ready, rss = [], []
    for _ in range(STARTS):
        with running(name, command, ready_path, bench.work, READY_DEADLINE_S) as server:
            ready.append(server.ready_s)
            for _ in range(WARM_REQUESTS):
                reply = post(server.port, path, payload)
                if reply.status != 200:
                    raise BenchError(f"{name}: HTTP {reply.status} to {path}")
            time.sleep(IDLE_S)  # let the server go idle before reading its memory
            rss.append(psutil.Process(server.process.pid).memory_info().rss / MB)
    return statistics.median(ready), statistics.median(rss)


def bench_trivial(bench: Bench, results: Results) -> None:
    """The trivial aiohttp endpoint: throughput, start-to-ready and idle RSS."""
    say("trivial aiohttp endpoint (bench/trivial_server.py), MLP binary body")
    payload = bench.payloads["mlp", "binary"]
    with running("trivial", trivial_command, "/ready", bench.work, READY_DEADLINE_S) as server:
        for c in CONCURRENCY:
            label = f"trivial c={c}"
            results.load[label] = load(bench, server.port, "/infer", payload, label, c)
    figures = start_figures(bench, "trivial", trivial_command, "/ready", "/infer", payload)
    results.ready_s["trivial"], results.rss_mb["trivial"] = figures


def bench_agent(bench: Bench, results: Results) -> None:
    """The agent serving every variant of both models, without a queue delay."""
    launch = bench.agent({m: bench.files(m) for m in MODELS}, "state", 0)
    say("agent, --max-queue-delay-us 0 (first start measures every variant)")
    with running("agent", launch.command, READY_PATH, bench.work, FIRST_READY_DEADLINE_S) as srv:
        say(f"  ready after {srv.ready_s:.1f} s")
        for model in MODELS:
            results.chosen[model] = chosen_backend(srv.port, model)
            say(f"  {model} served by {results.chosen[model]}")
        for payload in bench.payloads.values():
            check_answer(srv.port, payload)
        for model in MODELS:
            for encoding in ENCODINGS:
                for c in CONCURRENCY:
                    label = f"{model} {encoding} c={c}"
                    payload = bench.payloads[model, encoding]
                    results.load[label] = load(
                        bench, srv.port, infer_path(model), payload, label, c
                    )


def bench_batching(bench: Bench, results: Results) -> None:
    """The same agent (selection cached) with a queue delay, CNN at c=32."""
    delay = bench.batch_delay_us
    launch = bench.agent({m: bench.files(m) for m in MODELS}, "state", delay)
    say(f"agent, --max-queue-delay-us {delay}")
    with running("agent-batching", launch.command, READY_PATH, bench.work, READY_DEADLINE_S) as srv:
        for encoding in ENCODINGS:
            payload = bench.payloads["cnn", encoding]
            check_answer(srv.port, payload)
            label = f"cnn {encoding} c=32 +delay"
            results.load[label] = load(bench, srv.port, infer_path("cnn"), payload, label, 32)


def bench_resources(bench: Bench, results: Results) -> None:
    """An agent serving only mlp.onnx: start-to-ready and idle RSS once its selection is cached."""
    launch = bench.agent({"mlp": [bench.models_dir / "mlp.onnx"]}, "state-mlp", 0)
    say("agent serving only mlp.onnx: a first start caches the selection, then timed starts")
    with running(
        "agent-mlp", launch.command, READY_PATH, bench.work, FIRST_READY_DEADLINE_S
    ) as srv:
        results.chosen["mlp.onnx alone"] = chosen_backend(srv.port, "mlp")
    payload = bench.payloads["mlp", "binary"]
    figures = start_figures(
        bench, "agent-mlp", launch.command, READY_PATH, "/v2/models/mlp/infer", payload
    )
    results.ready_s["agent"], results.rss_mb["agent"] = figures
    say(f"  start to ready {figures[0]:.2f} s, idle RSS {figures[1]:.0f} MB")


def collect(duration_s: int, policy: str, batch_delay_us: int) -> Results:
    """Run every phase in a temporary directory and return the figures."""
    wrk = ensure_wrk()
    edgefleet_executable()
    with tempfile.TemporaryDirectory(prefix="edgefleet-bench-") as tmp:
        work = Path(tmp)
        models_dir = work / "models"
        say(f"writing the sample models to {models_dir}")
        index = write_sample_models(models_dir)
        payloads = build_payloads(index, models_dir)
        bench = Bench(wrk, work, models_dir, index, payloads, duration_s, policy, batch_delay_us)
        results = Results(versions=versions(wrk))
        measure_raw(bench, results)
        bench_trivial(bench, results)
        bench_agent(bench, results)
        bench_batching(bench, results)
        bench_resources(bench, results)
        return results


# --- report ----------------------------------------------------------------------------------

HEADERS = (
    "figure",
    "value",
    "p50 ms",
    "p99 ms",
    "errors",
    "rows/batch",
    "baseline",
    "ratio",
    "target",
    "",
)


@dataclass(frozen=True)
class Row:
    """One line of the results table."""

    figure: str
    value: str
    p50: str = ""
    p99: str = ""
    errors: str = ""
    batch: str = ""  # mean rows per executed batch, from the agent's statistics
    baseline: str = ""
    ratio: str = ""
    target: str = ""
    verdict: str = ""

    def cells(self) -> list[str]:
        """The row's cells in `HEADERS` order."""
        return [str(cell) for cell in astuple(self)]


def verdict(met: bool, errors: int = 0) -> str:
    """`met` / `MISSED`; a run with failed requests never meets its target."""
    if errors:
        return "INVALID: errors"
    return "met" if met else "MISSED"


def load_row(figure: str, result: WrkResult) -> Row:
    """A wrk result without a baseline."""
    batch = result.rows_per_batch
    return Row(
        figure,
        f"{result.rate:,.0f} req/s",
        f"{result.p50_ms:.2f}",
        f"{result.p99_ms:.2f}",
        str(result.errors) if result.errors == 0 else f"**{result.errors} FAILED**",
        "" if batch is None else f"{batch:.1f}",
    )


def compare_row(
    figure: str, result: WrkResult, baseline: str, base: float, minimum: float | None = None
) -> Row:
    """A wrk result, its ratio to a baseline and, with `minimum`, the ratio target."""
    ratio = result.rate / base
    return replace(
        load_row(figure, result),
        baseline=f"{baseline} {base:,.0f}",
        ratio=f"{ratio:.2f}x",
        target="" if minimum is None else f">= {minimum:g}x",
        verdict="" if minimum is None else verdict(ratio >= minimum, result.errors),
    )


def baseline_rows(results: Results) -> list[Row]:
    """The baselines themselves."""
    rows = [
        load_row(f"trivial aiohttp, c={c}", results.load[f"trivial c={c}"]) for c in CONCURRENCY
    ]
    for key, rate in results.raw_rows_s.items():
        model, batch = key.split(" b")
        rows.append(Row(f"onnxruntime in-process, {model} batch {batch}", f"{rate:,.0f} rows/s"))
    rows.append(Row("trivial aiohttp, idle RSS", f"{results.rss_mb['trivial']:.0f} MB"))
    rows.append(Row("trivial aiohttp, start to ready", f"{results.ready_s['trivial']:.2f} s"))
    return rows


def agent_rows(results: Results) -> list[Row]:
    """The agent under load, each against its baseline."""
    rows = []
    for encoding in ENCODINGS:
        for c in CONCURRENCY:
            target = MLP_TARGET_RATIO if (encoding, c) == ("binary", 32) else None
            base = results.load[f"trivial c={c}"].rate
            result = results.load[f"mlp {encoding} c={c}"]
            rows.append(
                compare_row(f"agent mlp {encoding}, c={c}", result, "trivial", base, target)
            )
    for encoding in ENCODINGS:
        for c, suffix in ((1, ""), (32, ""), (32, " +delay")):
            batching = suffix == " +delay"
            target = CNN_TARGET_RATIO if batching and encoding == "binary" else None
            batch = 1 if c == 1 else 32
            base = results.raw_rows_s[f"cnn b{batch}"]
            result = results.load[f"cnn {encoding} c={c}{suffix}"]
            figure = f"agent cnn {encoding}, c={c}" + (" + queue delay" if batching else "")
            rows.append(compare_row(figure, result, f"ort b{batch}", base, target))
    return rows


def resource_rows(results: Results) -> list[Row]:
    """Idle RSS and start-to-ready of the agent serving only mlp.onnx."""
    rss, base_rss = results.rss_mb["agent"], results.rss_mb["trivial"]
    ready, base_ready = results.ready_s["agent"], results.ready_s["trivial"]
    runtime = results.chosen["mlp.onnx alone"].rsplit("/", 1)[0]  # e.g. onnxruntime/CPU
    return [
        Row(
            f"agent idle RSS, mlp.onnx on {runtime}",
            f"{rss:.0f} MB",
            baseline=f"trivial {base_rss:.0f} MB",
            ratio=f"{rss / base_rss:.2f}x",
            target=f"<= {RSS_TARGET_MB:.0f} MB",
            verdict=verdict(rss <= RSS_TARGET_MB),
        ),
        Row(
            "agent start to ready, selection cached",
            f"{ready:.2f} s",
            baseline=f"trivial {base_ready:.2f} s",
            ratio=f"{ready / base_ready:.2f}x",
            target=f"<= {READY_TARGET_S:g} s",
            verdict=verdict(ready <= READY_TARGET_S),
        ),
    ]


def markdown_table(rows: Sequence[Row]) -> str:
    """An aligned Markdown table (readable in a terminal too)."""
    cells = [list(HEADERS), *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in cells) for i in range(len(HEADERS))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |"
        for line in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def observations(results: Results) -> list[str]:
    """Figures derived from the table that say where the time goes."""
    trivial, mlp = results.load["trivial c=32"], results.load["mlp binary c=32"]
    plain, delayed = results.load["cnn binary c=32"], results.load["cnn binary c=32 +delay"]
    needed = CNN_TARGET_RATIO * results.raw_rows_s["cnn b32"]
    reachable = "within" if needed <= trivial.rate else "beyond"
    return [
        f"- Per request at c=32 the trivial endpoint costs {1e6 / trivial.rate:.0f} µs, the agent "
        f"{1e6 / mlp.rate:.0f} µs (MLP binary) and {1e6 / plain.rate:.0f} µs (CNN binary).",
        f"- The CNN target needs {needed:,.0f} req/s of batch-1 requests; the trivial endpoint "
        f"reached {trivial.rate:,.0f} req/s, so the target is {reachable} what aiohttp alone "
        "serves here.",
        f"- The queue delay changed CNN binary c=32 throughput by "
        f"{100 * (delayed.rate / plain.rate - 1):+.0f}% (mean batch "
        f"{plain.rows_per_batch or 0:.1f} -> {delayed.rows_per_batch or 0:.1f} rows).",
    ]


def failed_runs(results: Results) -> list[str]:
    """Labels of wrk runs with failed requests."""
    return [label for label, result in results.load.items() if result.errors]


def machine() -> str:
    """CPU model, logical CPUs, memory, kernel and Python of this machine."""
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    memory = psutil.virtual_memory().total / 2**30
    return (
        f"{cpu}, {os.cpu_count()} logical CPUs, {memory:.1f} GiB RAM, "
        f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    )


def versions(wrk: str) -> str:
    """Versions of the packages and tools measured."""
    names = ("aiohttp", "onnxruntime", "openvino", "ai-edge-litert")
    found = []
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found.append(f"{name} {importlib.metadata.version(name)}")
    banner = subprocess.run([wrk, "-v"], capture_output=True, text=True, check=False).stdout
    found.append(banner.split("Copyright")[0].strip() or "wrk")
    return ", ".join(found)


def render_section(results: Results, command: str, duration_s: int, policy: str) -> str:
    """The generated part of the Serving section, between its markers."""
    chosen = ", ".join(f"{model} -> `{name}`" for model, name in results.chosen.items())
    rows = [*baseline_rows(results), *agent_rows(results), *resource_rows(results)]
    lines = [
        START_MARK,
        "## Serving (issue: agent serving)",
        "",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {machine()}",
        f"- Versions: {results.versions}",
        f"- Command: `{command}`",
        f"- Load: `wrk -t1 -c{{1,32}} -d{duration_s}s --latency` with `bench/wrk_post.lua` after "
        f"a {WARMUP_S} s warm-up; batch-1 requests; wrk, the server and the noise share the CPUs.",
        f"- Agent: `--policy {policy}`; it chose {chosen}.",
        "",
        markdown_table(rows),
        "",
        *NOTES,
        "",
        "Derived from this run:",
        "",
        *observations(results),
    ]
    failed = failed_runs(results)
    if failed:
        lines += [
            "",
            f"**WARNING: requests failed in {', '.join(failed)}; those rows are invalid.**",
        ]
    return "\n".join([*lines, END_MARK])


NOTES = (
    "Baselines: *trivial* is `bench/trivial_server.py` (aiohttp with the agent's server settings, "
    "reading the MLP binary body and answering a fixed JSON document) under the same wrk load; "
    "*ort bN* is onnxruntime `InferenceSession` (CPUExecutionProvider, default threads) on "
    "`cnn.onnx` in-process, rows/s at batch N, median of 7 loops of 0.3 s. Agent rows are "
    "req/s of batch-1 requests, so req/s = rows/s. *json* sends and receives JSON tensors; "
    "*binary* sends the tensor after an `Inference-Header-Content-Length` JSON header and asks "
    "for binary outputs (tritonclient's default), and the targets apply to the binary rows. "
    "*+ queue delay* is a second agent with `--max-queue-delay-us` set; the other agent rows use "
    "0. RSS (MB = 10^6 bytes) and start to ready (Popen to the first 200 on `/v2/health/ready`) "
    f"are medians of {STARTS} starts; RSS is read after {WARM_REQUESTS} requests and "
    f"{IDLE_S} s idle. Errors are non-2xx answers plus socket errors counted by wrk.",
)

INTRO = """# Benchmarks

Each section below is written by a script that measures its baselines in the same run and
prints ratios against them. The numbers come from a shared machine and are noisy: compare the
ratios, and rerun before drawing conclusions from a small difference.

To reproduce, from the repository root (`make bench` will run these later):

    .venv/bin/python -m bench.serving            # 2-3 minutes on 2 vCPUs; --quick: 1 minute
"""


def write_section(path: Path, section: str) -> None:
    """Replace the text between the markers in `path`, or append the section; keep the rest."""
    text = path.read_text() if path.exists() else INTRO
    start, end = text.find(START_MARK), text.find(END_MARK)
    if start != -1 and end > start:
        text = text[:start] + section + text[end + len(END_MARK) :]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.serving",
        description="Load the agent with wrk and compare it with baselines from the same run.",
    )
    parser.add_argument("--duration", type=int, default=8, metavar="S", help="seconds per run")
    parser.add_argument("--quick", action="store_true", help="3 s per run")
    parser.add_argument(
        "--output",
        default=str(DEFAULT_OUTPUT),
        metavar="FILE",
        help="Markdown file to update ('-' to only print; default docs/benchmarks.md)",
    )
    parser.add_argument("--policy", choices=["latency", "throughput"], default="throughput")
    parser.add_argument("--batch-delay-us", type=int, default=500, metavar="US")
    return parser.parse_args(argv)


def interrupt(signum: int, frame: object) -> None:
    """Turn SIGTERM into KeyboardInterrupt, so that every server is stopped on the way out."""
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark, print the table, and update the Markdown file."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, interrupt)
    duration = 3 if args.quick else max(1, args.duration)
    given = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join([".venv/bin/python", "-m", "bench.serving", *given])
    try:
        results = collect(duration, args.policy, args.batch_delay_us)
        section = render_section(results, command, duration, args.policy)
    except BenchError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: every server was stopped", file=sys.stderr)
        return 130
    say("\n" + section.split("\n", 2)[2].rsplit("\n", 1)[0])
    if args.output != "-":
        write_section(Path(args.output), section)
        say(f"\nwrote {args.output}")
    failed = failed_runs(results)
    if failed:
        say(f"\n!!! REQUESTS FAILED in {', '.join(failed)}: those figures are invalid !!!")
    return 0


if __name__ == "__main__":
    sys.exit(main())
