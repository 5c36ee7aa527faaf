"""Benchmark scripts: each prints a table of ratios against baselines measured in the same run.

`python -m bench.serving` loads the agent with wrk and compares it with a trivial aiohttp
endpoint and with onnxruntime called in-process; `python -m bench.bundles` times bundle
verification and activation; `python -m bench.reporting` measures MQTT reporting. Results go to
`docs/benchmarks.md`.

Modules: `plan` (what a serving run measures, its targets and results), `wrk` (the load
generator), `processes` (server subprocesses), `http_client` (single requests and the agent's
statistics), `payloads` (request bodies and answer checks), `raw_runtime` (onnxruntime
in-process), `report` (rows, Markdown table, the docs section writer), `serving_report` (the
serving section's rows and notes) and `serving` (the measurement phases and `main`).
Every failure that stops a run is a `BenchError`.
"""

from __future__ import annotations

import signal


class BenchError(Exception):
    """The benchmark cannot go on: a missing tool, a server that fails or answers wrongly."""


def say(message: str) -> None:
    """Print a progress line at once."""
    print(message, flush=True)


def stop_on_sigterm() -> None:
    """Turn SIGTERM into KeyboardInterrupt, so processes and files are cleaned up on the way out."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
