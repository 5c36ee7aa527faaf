"""The in-process baseline: onnxruntime's rows/s on a model file, with no server in between."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from agent.sample_models import SampleModel
from bench.payloads import sample_rows

RAW_LOOPS = 7  # the figure is the median over this many timed loops
RAW_LOOP_S = 0.3
RAW_WARMUP_RUNS = 20


def raw_rows_per_s(model: Path, name: str, rows: np.ndarray) -> float:
    """Median rows/s of onnxruntime running `rows` in-process, over several timed loops."""
    import onnxruntime  # imported here: only this baseline needs it in the benchmark process

    session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    feed = {name: rows}
    for _ in range(RAW_WARMUP_RUNS):
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


def raw_rates(models_dir: Path, sample: SampleModel, batches: Iterable[int]) -> dict[int, float]:
    """Rows/s of the sample's FP32 ONNX file in onnxruntime, per batch size."""
    model, name = models_dir / f"{sample.name}.onnx", sample.inputs[0].name
    return {b: raw_rows_per_s(model, name, sample_rows(models_dir, sample, b)) for b in batches}
