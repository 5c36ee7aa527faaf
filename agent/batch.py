"""Batch scoring: run a model over a dataset file in large batches, resumably.

`run_batch` checks the output and opens the inputs first (cheap, and the usual mistakes),
then verifies and extracts a bundle if one is given, chooses the backend with the accelerator
selector, binds the files to the model's inputs, and scores the rows in fixed-size chunks:

    reader thread      reads and converts chunk i+1  (memory-mapped .npy, CSV, Parquet)
    calling thread     runs chunk i through the backend, `batch_size` rows per call
    writer thread      saves chunk i-1 and records it in the journal (fsync)

so reading, computing and writing overlap, and at most three chunks are in memory. A chunk is
the unit of resumption (see `agent.batch_journal`); a batch is the unit of one backend call.
When every chunk is saved the output is assembled atomically and the partial directory
removed. Everything here blocks: it is the whole of a command-line process.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from agent.batch_errors import BatchError
from agent.batch_journal import FileFingerprint, JobKey, Journal
from agent.batch_model import (
    ModelFiles,
    SelectionOptions,
    bundle_model,
    load_trust,
    parse_model_option,
    select_backend,
)
from agent.batch_progress import BatchSummary, Progress
from agent.batch_sinks import assemble, check_format, check_output, remove_stale_temporaries
from agent.batch_sources import Dataset, Source, bind_inputs, open_source
from agent.runtimes.base import Backend, BackendDescription

DEFAULT_BATCH_SIZE = 256  # for models whose batch dimension is variable
CHUNK_BYTES = 16 << 20  # input bytes per chunk by default: large next to a batch, small to redo


@dataclass(frozen=True, slots=True)
class BatchJob:
    """A batch run's options, as the command line gives them."""

    inputs: tuple[tuple[str | None, Path], ...]  # (input name or None, file)
    output: Path
    model: str | None = None  # NAME=PATH[,PATH...]
    bundle: Path | None = None
    keys: Path | None = None
    root_key: Path | None = None
    keylist: Path | None = None
    insecure: bool = False
    outputs: tuple[str, ...] = ()  # empty: every output of the model
    batch_size: int | None = None
    chunk_rows: int | None = None
    selection: SelectionOptions = field(default_factory=SelectionOptions)
    force: bool = False


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the run settled on once the model was loaded."""

    dataset: Dataset
    outputs: tuple[str, ...]
    batch_size: int
    fixed_batch: bool  # the model takes exactly `batch_size` rows: pad the last batch
    chunk_rows: int

    @property
    def chunks(self) -> int:
        return math.ceil(self.dataset.rows / self.chunk_rows)

    def bounds(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_rows
        return start, min(self.dataset.rows, start + self.chunk_rows)


def run_batch(
    job: BatchJob, progress: Progress, clock: Callable[[], float] = time.perf_counter
) -> BatchSummary:
    """Score the dataset and write the output; resume from `OUTPUT.partial/` if it is there."""
    started = clock()
    check_output(job.output, job.force)
    journal = Journal(job.output)
    with journal.locked():
        with ExitStack() as stack:
            sources = [(name, open_source(path)) for name, path in job.inputs]
            for _, source in sources:
                stack.callback(source.close)
            files = stack.enter_context(_model_files(job))
            fingerprints = tuple(FileFingerprint.of(path) for _, path in job.inputs)
            options = job.selection
            recorded = journal.recorded_backend(files.digest, fingerprints)
            if recorded and not options.pin:
                options = replace(options, pin=recorded)  # the same backend gives the same bits
            hint = job.batch_size or files.max_batch or DEFAULT_BATCH_SIZE
            selection = select_backend(files, hint, options)
            backend = selection.backend
            stack.callback(backend.unload)
            plan = _plan(job, files, backend.describe(), sources)
            key = JobKey(
                inputs=fingerprints,
                model_digest=files.digest,
                backend=selection.report.chosen,
                batch_size=plan.batch_size,
                chunk_rows=plan.chunk_rows,
                rows=plan.dataset.rows,
                outputs=plan.outputs,
            )
            done, restarted = journal.open(key)
            if restarted:
                progress.note(restarted)
            if done:
                progress.note(f"resuming: {len(done)} of {plan.chunks} chunks already saved")
            scoring_started = clock()
            resumed_rows = sum(plan.bounds(i)[1] - plan.bounds(i)[0] for i in done)
            _score(plan, backend, journal, done, progress, resumed_rows)
            scoring_s = clock() - scoring_started
        remove_stale_temporaries(job.output)
        assemble(job.output, plan.outputs, plan.chunks, plan.dataset.rows, journal.load_output)
        journal.remove()
    return BatchSummary(
        output=str(job.output),
        rows=plan.dataset.rows,
        rows_resumed=resumed_rows,
        scoring_s=scoring_s,
        total_s=clock() - started,
        backend=selection.report.chosen,
        selection="resumed" if recorded and options.pin == recorded else selection.report.source,
        batch_size=plan.batch_size,
        chunk_rows=plan.chunk_rows,
        chunks=plan.chunks,
        chunks_resumed=len(done),
    )


def _model_files(job: BatchJob) -> AbstractContextManager[ModelFiles]:
    if (job.model is None) == (job.bundle is None):
        raise BatchError("give one model: --model NAME=PATH[,PATH...] or --bundle FILE")
    if job.model is not None:
        return _nothing_to_clean(parse_model_option(job.model))
    assert job.bundle is not None
    trust = None if job.insecure else load_trust(job.keys, job.root_key, job.keylist)
    return bundle_model(job.bundle, trust)


@contextmanager
def _nothing_to_clean(files: ModelFiles) -> Iterator[ModelFiles]:
    yield files


def _plan(
    job: BatchJob,
    files: ModelFiles,
    description: BackendDescription,
    sources: Sequence[tuple[str | None, Source]],
) -> _Plan:
    dataset = bind_inputs(sources, description.inputs)
    outputs = _outputs(description, job.outputs)
    check_format(job.output, outputs)
    if description.batchable:
        batch, fixed = job.batch_size or files.max_batch or DEFAULT_BATCH_SIZE, False
    else:
        batch, fixed = _fixed_batch(description, job.batch_size), True
    if batch < 1:
        raise BatchError(f"--batch-size must be at least 1, got {batch}")
    row_bytes = sum(array.nbytes for array in dataset.read(0, 1).values())
    wanted = job.chunk_rows or max(1, CHUNK_BYTES // max(1, row_bytes))
    chunk_rows = max(1, round(wanted / batch)) * batch  # whole batches only
    return _Plan(dataset, outputs, batch, fixed, chunk_rows)


def _outputs(description: BackendDescription, wanted: Sequence[str]) -> tuple[str, ...]:
    available = {spec.name: spec for spec in description.outputs}
    names = tuple(wanted) or tuple(available)
    for name in names:
        if name not in available:
            raise BatchError(
                f"--outputs names {name!r}; the model's outputs are {', '.join(available)}"
            )
        if available[name].datatype == "BYTES":
            raise BatchError(f"output {name!r} is BYTES: batch scoring writes numeric outputs")
    return names


def _fixed_batch(description: BackendDescription, requested: int | None) -> int:
    """The batch size of a model whose inputs all have the same fixed first dimension."""
    leading = {spec.shape[0] if spec.shape else 0 for spec in description.inputs}
    size = leading.pop() if len(leading) == 1 else 0
    if size < 1:
        raise BatchError(
            "the model has no common batch dimension (input shapes "
            + ", ".join(f"{s.name} {list(s.shape)}" for s in description.inputs)
            + ")"
        )
    if requested not in (None, size):
        raise BatchError(f"the model takes batches of exactly {size} rows; --batch-size {size}")
    return size


def _score(
    plan: _Plan,
    backend: Backend,
    journal: Journal,
    done: set[int],
    progress: Progress,
    resumed_rows: int,
) -> None:
    """Score the chunks not yet done: read ahead on one thread, save behind on another."""
    todo = [i for i in range(plan.chunks) if i not in done]
    progress.start(plan.dataset.rows, resumed_rows)
    reader = ThreadPoolExecutor(1, "batch-read")
    writer = ThreadPoolExecutor(1, "batch-write")
    ahead: Future[dict[str, np.ndarray]] | None = None
    behind: Future[None] | None = None
    try:
        if todo:
            ahead = reader.submit(plan.dataset.read, *plan.bounds(todo[0]))
        for position, index in enumerate(todo):
            assert ahead is not None
            inputs = ahead.result()
            following = todo[position + 1] if position + 1 < len(todo) else None
            ahead = (
                None
                if following is None
                else reader.submit(plan.dataset.read, *plan.bounds(following))
            )
            outputs = _infer_chunk(backend, inputs, plan)
            if behind is not None:
                behind.result()
            behind = writer.submit(journal.save_chunk, index, outputs)
            progress.advance(len(outputs[0]))
        if behind is not None:
            behind.result()
    finally:
        if ahead is not None:
            ahead.cancel()
        # Waiting lets a chunk being saved finish: an interrupted run keeps every chunk it did.
        reader.shutdown(wait=True, cancel_futures=True)
        writer.shutdown(wait=True)
        progress.finish()


def _infer_chunk(backend: Backend, inputs: dict[str, np.ndarray], plan: _Plan) -> list[np.ndarray]:
    """Run one chunk through the backend in batches; return the kept outputs, in order."""
    rows = len(next(iter(inputs.values())))
    results: list[np.ndarray] = []
    for start in range(0, rows, plan.batch_size):
        stop = min(rows, start + plan.batch_size)
        feed = {name: array[start:stop] for name, array in inputs.items()}
        if plan.fixed_batch and stop - start < plan.batch_size:
            feed = {name: _pad(array, plan.batch_size) for name, array in feed.items()}
        produced = backend.infer(feed)
        for position, name in enumerate(plan.outputs):
            array = produced[name]
            if array.ndim == 0 or array.shape[0] != len(next(iter(feed.values()))):
                raise BatchError(
                    f"output {name!r} has shape {list(array.shape)} for a batch of "
                    f"{stop - start} rows: batch scoring needs one output row per input row"
                )
            if len(results) <= position:
                results.append(np.empty((rows, *array.shape[1:]), dtype=array.dtype))
            try:
                results[position][start:stop] = array[: stop - start]
            except ValueError as exc:
                raise BatchError(f"output {name!r} changes shape between batches: {exc}") from exc
    return results


def _pad(array: np.ndarray, size: int) -> np.ndarray:
    filler = np.zeros((size - len(array), *array.shape[1:]), dtype=array.dtype)
    return np.concatenate([array, filler])
