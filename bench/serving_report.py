"""The Serving section of docs/benchmarks.md: its rows, notes and figures derived from a run."""

from __future__ import annotations

import datetime

from bench.plan import (
    BATCHED_C,
    CNN_TARGET_RATIO,
    CONCURRENCY,
    ENCODINGS,
    IDLE_S,
    MAX_BATCH_ROWS,
    MLP_TARGET_RATIO,
    MULTI_ROW,
    RAW_BATCHES,
    READY_TARGET_S,
    ROWS_PER_REQUEST,
    RSS_TARGET_MB,
    STARTS,
    WARM_REQUESTS,
    WARMUP_S,
    Results,
)
from bench.raw_runtime import RAW_LOOP_S, RAW_LOOPS
from bench.report import Row, ceiling_row, compare_row, load_row, machine, markdown_table, markers

SECTION = "serving"


def baseline_rows(results: Results) -> list[Row]:
    """The baselines themselves."""
    rows = [load_row(f"trivial aiohttp, c={c}", results.trivial(c)) for c in CONCURRENCY]
    for model, batches in RAW_BATCHES.items():
        for batch in batches:
            figure, rate = (
                f"onnxruntime in-process, {model} batch {batch}",
                results.raw(model, batch),
            )
            rows.append(Row(figure, f"{rate:,.0f} rows/s"))
    rows.append(Row("trivial aiohttp, idle RSS", f"{results.rss_mb['trivial']:.0f} MB"))
    rows.append(Row("trivial aiohttp, start to ready", f"{results.ready_s['trivial']:.2f} s"))
    return rows


def agent_rows(results: Results) -> list[Row]:
    """The agent under load, each against its baseline."""
    rows = []
    for encoding in ENCODINGS:
        for c in CONCURRENCY:
            target = MLP_TARGET_RATIO if (encoding, c) == ("binary", BATCHED_C) else None
            result = results.agent(("mlp", encoding, 1), c)
            figure = f"agent mlp {encoding}, c={c}"
            rows.append(compare_row(figure, result, "trivial", results.trivial(c).rate, target))
    for encoding in ENCODINGS:
        for c, delayed in ((1, False), (BATCHED_C, False), (BATCHED_C, True)):
            batch = 1 if c == 1 else MAX_BATCH_ROWS
            result = results.agent(("cnn", encoding, 1), c, delayed)
            figure = f"agent cnn {encoding}, c={c}" + (" + queue delay" if delayed else "")
            rows.append(compare_row(figure, result, f"ort b{batch}", results.raw("cnn", batch)))
    for delayed in (False, True):
        result = results.agent(MULTI_ROW, BATCHED_C, delayed)
        figure = f"agent cnn binary, {ROWS_PER_REQUEST} rows/request, c={BATCHED_C}"
        figure += " + queue delay" if delayed else ""
        target = CNN_TARGET_RATIO if delayed else None
        for batch, minimum in ((MAX_BATCH_ROWS, target), (ROWS_PER_REQUEST, None)):
            base = results.raw("cnn", batch)
            rows.append(compare_row(figure, result, f"ort b{batch}", base, minimum))
    return rows


def resource_rows(results: Results) -> list[Row]:
    """Idle RSS and start-to-ready of the agent serving only mlp.onnx."""
    runtime = results.chosen["mlp.onnx alone"].rsplit("/", 1)[0]  # e.g. onnxruntime/CPU
    rss, ready = results.rss_mb, results.ready_s
    return [
        ceiling_row(
            f"agent idle RSS, mlp.onnx on {runtime}",
            rss["agent"],
            "trivial",
            rss["trivial"],
            RSS_TARGET_MB,
            unit="MB",
            digits=0,
        ),
        ceiling_row(
            "agent start to ready, selection cached",
            ready["agent"],
            "trivial",
            ready["trivial"],
            READY_TARGET_S,
            unit="s",
            digits=2,
        ),
    ]


def observations(results: Results) -> list[str]:
    """Figures derived from the table that say where the time goes."""
    trivial = results.trivial(BATCHED_C)
    mlp = results.agent(("mlp", "binary", 1), BATCHED_C)
    plain = results.agent(("cnn", "binary", 1), BATCHED_C)
    delayed = results.agent(("cnn", "binary", 1), BATCHED_C, delayed=True)
    multi = results.agent(MULTI_ROW, BATCHED_C)
    multi_delayed = results.agent(MULTI_ROW, BATCHED_C, delayed=True)
    needed = CNN_TARGET_RATIO * results.raw("cnn", MAX_BATCH_ROWS)
    n = ROWS_PER_REQUEST
    lines = [
        f"- Per request at c={BATCHED_C} the trivial endpoint costs {1e6 / trivial.rate:.0f} µs, "
        f"the agent {1e6 / mlp.rate:.0f} µs (MLP binary), {1e6 / plain.rate:.0f} µs (CNN "
        f"binary) and {1e6 / multi.rate:.0f} µs (CNN binary, {n} rows).",
        f"- The CNN target needs {needed:,.0f} rows/s: {needed:,.0f} req/s of one-row requests, "
        f"{needed / trivial.rate:.1f}x what the trivial endpoint served ({trivial.rate:,.0f} "
        f"req/s), or {needed / n:,.0f} req/s of {n}-row requests.",
        f"- With {n}-row requests and the queue delay the agent served "
        f"{multi_delayed.rows_rate:,.0f} rows/s ({multi_delayed.rate:,.0f} req/s x {n}), "
        f"{multi_delayed.rows_rate / delayed.rows_rate:.1f}x the rows/s of one-row requests on "
        f"the same agent and {multi_delayed.rows_rate / results.raw('cnn', n):.2f}x onnxruntime "
        f"called in-process with the same {n}-row batches.",
        f"- The queue delay changed CNN binary c={BATCHED_C} throughput by "
        f"{percent(delayed.rate, plain.rate)} with one-row requests (mean batch "
        f"{plain.rows_per_batch or 0:.1f} -> {delayed.rows_per_batch or 0:.1f} rows) and by "
        f"{percent(multi_delayed.rate, multi.rate)} with {n}-row requests "
        f"({multi.rows_per_batch or 0:.1f} -> {multi_delayed.rows_per_batch or 0:.1f} rows).",
    ]
    cnn = results.chosen.get("cnn", "unknown")
    if not cnn.startswith("onnxruntime/"):
        lines.append(
            f"- The agent served the CNN with `{cnn}`, the ort baselines run `cnn.onnx` in "
            "onnxruntime: the CNN ratios compare the agent as deployed, backend choice "
            "included, with the runtime the target names."
        )
    return lines


def percent(new: float, old: float) -> str:
    """The change from `old` to `new`, e.g. `+35%`."""
    return f"{100 * (new / old - 1):+.0f}%"


def render_section(results: Results, command: str, duration_s: int, policy: str) -> str:
    """The generated part of the Serving section, with its markers."""
    start_mark, end_mark = markers(SECTION)
    chosen = ", ".join(f"{model} -> `{name}`" for model, name in results.chosen.items())
    rows = [*baseline_rows(results), *agent_rows(results), *resource_rows(results)]
    lines = [
        start_mark,
        "## Serving (issue: agent serving)",
        "",
        f"- Date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {machine()}",
        f"- Versions: {results.versions}",
        f"- Command: `{command}`",
        f"- Load: `wrk -t1 -c{{1,32}} -d{duration_s}s --latency` with `bench/wrk_post.lua` after "
        f"a {WARMUP_S} s warm-up; one-row requests except the {ROWS_PER_REQUEST} rows/request "
        "rows; wrk, the server and the noise share the CPUs.",
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
    failed = results.failed_runs()
    if failed:
        lines += [
            "",
            f"**WARNING: requests failed in {', '.join(failed)}; those rows are invalid.**",
        ]
    return "\n".join([*lines, end_mark])


NOTES = (
    "Baselines: *trivial* is `bench/trivial_server.py` (aiohttp with the agent's server settings, "
    "reading the MLP binary body and answering a fixed JSON document) under the same wrk load; "
    "*ort bN* is onnxruntime `InferenceSession` (CPUExecutionProvider, default threads) on the "
    "model's FP32 `.onnx` file in-process, rows/s at batch N, median of "
    f"{RAW_LOOPS} loops of {RAW_LOOP_S:g} s. One-row agent rows are req/s, and req/s = rows/s. "
    f"*{ROWS_PER_REQUEST} rows/request* rows send {ROWS_PER_REQUEST} CNN rows in each request "
    f"and report rows/s (req/s x {ROWS_PER_REQUEST}); each appears twice, against *ort "
    f"b{MAX_BATCH_ROWS}* (the target's baseline) and against *ort b{ROWS_PER_REQUEST}* (a client "
    f"running its own {ROWS_PER_REQUEST}-row batches in-process). *json* sends and receives "
    "JSON tensors; *binary* sends the tensor after an `Inference-Header-Content-Length` JSON "
    "header and asks for binary outputs (tritonclient's default), and the targets apply to the "
    "binary rows. *+ queue delay* is a second agent with `--max-queue-delay-us` set; the other "
    f"agent rows use 0. Both agents merge requests into batches of up to {MAX_BATCH_ROWS} rows "
    "(`--max-batch-size` default); *rows/batch* is the mean over the run from the agent's "
    "statistics. RSS (MB = 10^6 bytes) and start to ready (Popen to the first 200 on "
    f"`/v2/health/ready`) are medians of {STARTS} starts; RSS is read after {WARM_REQUESTS} "
    f"requests and {IDLE_S} s idle. Errors are non-2xx answers plus socket errors counted by wrk.",
    "",
    f"The CNN target (>= {CNN_TARGET_RATIO:g}x onnxruntime's batch-{MAX_BATCH_ROWS} rows/s at "
    f"c={BATCHED_C} with batching) is judged on the {ROWS_PER_REQUEST} rows/request, "
    f"c={BATCHED_C} + queue delay row against *ort b{MAX_BATCH_ROWS}*. With one-row requests "
    "the target asks for more requests per second than the trivial aiohttp endpoint serves "
    "here, so those rows measure the HTTP layer rather than batching; "
    f"{ROWS_PER_REQUEST}-row requests need {ROWS_PER_REQUEST}x fewer, and with the queue delay "
    f"the agent can merge {MAX_BATCH_ROWS // ROWS_PER_REQUEST} of them into the "
    f"{MAX_BATCH_ROWS}-row batch the baseline runs. The one-row CNN rows stay for comparison "
    "with earlier runs.",
)
