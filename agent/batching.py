"""The per-model dynamic batcher.

Requests wait in one bounded FIFO queue per model. A dispatcher task forms batches in arrival
order: it takes the oldest request, adds every later request with the same non-batch shapes up to
`max_batch_size` rows, and, if the batch is not full, waits at most `max_queue_delay_us` from the
moment the oldest request arrived for more to come. Batches run in a thread pool (never on the
event loop), at most `instances` at a time, and the outputs are split back per request.

Deadlines (`timeout` in microseconds, as Triton's clients send) are checked when a request is
queued, while it waits (a timer rejects it promptly rather than when a slot frees), and when it is
taken from the queue. A request whose caller went away (its future was cancelled) is dropped
without running.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from agent.errors import DeadlineExceeded, ModelNotReady, QueueFull
from agent.stats import ModelStatistics

Tensors = dict[str, np.ndarray]
RunBatch = Callable[[Mapping[str, np.ndarray]], Tensors]


@dataclass(frozen=True, slots=True)
class BatchingConfig:
    """How a model's requests are queued and merged (Triton's `dynamic_batching` knobs)."""

    max_batch_size: int = 32  # 0 disables merging: each request runs alone
    max_queue_delay_us: int = 0  # as Triton: under load, batches form while the model is busy
    max_queue_size: int = 256
    instances: int = 1  # executions of this model allowed to run at the same time
    default_timeout_us: int = 0  # 0 = no deadline unless the request sets one


@dataclass(eq=False, slots=True)
class _Pending:
    """One queued request."""

    inputs: Mapping[str, np.ndarray]
    rows: int
    shape_key: tuple[tuple[str, tuple[int, ...], str], ...]
    future: asyncio.Future[Tensors]
    enqueued_at: float  # loop time
    deadline: float | None  # loop time
    expiry: asyncio.TimerHandle | None = field(default=None)


class DynamicBatcher:
    """Merges concurrent requests for one model into batches and runs them off the loop."""

    def __init__(
        self,
        run: RunBatch,
        executor: Executor,
        config: BatchingConfig,
        stats: ModelStatistics,
    ) -> None:
        self._run = run
        self._executor = executor
        self.config = config
        self._stats = stats
        self._queue: collections.deque[_Pending] = collections.deque()
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(max(1, config.instances))
        self._running: set[asyncio.Task[None]] = set()
        self._dispatcher: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Requests waiting in the queue (not yet executing)."""
        return len(self._queue)

    def start(self) -> None:
        """Start the dispatcher task on the running loop."""
        if self._dispatcher is None:
            self._dispatcher = asyncio.get_running_loop().create_task(
                self._dispatch(), name="edgefleet-batcher"
            )

    async def close(self, drain_s: float = 30.0) -> None:
        """Stop taking requests, run what is queued (for up to `drain_s`), then stop.

        Requests already queued are answered, not failed: an unload or a version swap must not
        drop work that was accepted. What is still queued after `drain_s` is failed with 503.
        """
        self._closed = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_s
        while (self._queue or self._running) and loop.time() < deadline:
            self._wakeup.set()
            await asyncio.sleep(0.005)
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        while self._queue:
            item = self._queue.popleft()
            self._fail(item, QueueFull("the model is being unloaded", retry_after=1.0))
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def submit(self, inputs: Mapping[str, np.ndarray], timeout_us: int = 0) -> Tensors:
        """Queue one request and return its outputs once its batch has run."""
        if self._closed:
            raise ModelNotReady("the model version is being unloaded", retry_after=1.0)
        if len(self._queue) >= self.config.max_queue_size:
            raise QueueFull(
                f"the queue of this model is full ({self.config.max_queue_size} requests)",
                retry_after=max(0.05, self.config.max_queue_delay_us / 1e6),
            )
        loop = asyncio.get_running_loop()
        timeout_us = timeout_us or self.config.default_timeout_us
        deadline = loop.time() + timeout_us / 1e6 if timeout_us > 0 else None
        item = _Pending(
            inputs=inputs,
            rows=_rows(inputs) if self.config.max_batch_size > 0 else 1,
            shape_key=_shape_key(inputs),
            future=loop.create_future(),
            enqueued_at=loop.time(),
            deadline=deadline,
        )
        if deadline is not None:
            item.expiry = loop.call_at(deadline, self._expire, item)
        self._queue.append(item)
        self._stats.set_pending(len(self._queue))
        self._wakeup.set()
        try:
            return await item.future
        except asyncio.CancelledError:
            # The caller went away: drop the work if it has not started yet.
            if not item.future.done():
                item.future.cancel()
            self._forget(item)
            raise

    def _expire(self, item: _Pending) -> None:
        if not item.future.done():
            item.future.set_exception(
                DeadlineExceeded("the request's timeout expired while it was queued")
            )
        self._forget(item)

    def _forget(self, item: _Pending) -> None:
        """Take an abandoned or expired request out of the queue, so it no longer counts."""
        if item.expiry is not None:
            item.expiry.cancel()
        try:
            self._queue.remove(item)  # O(queue), and the queue is bounded
        except ValueError:
            return  # already taken by the dispatcher
        self._stats.set_pending(len(self._queue))

    def _fail(self, item: _Pending, error: Exception) -> None:
        if item.expiry is not None:
            item.expiry.cancel()
        if not item.future.done():
            item.future.set_exception(error)

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            try:
                batch = await self._form_batch(loop)
            except BaseException:
                self._slots.release()
                raise
            self._stats.set_pending(len(self._queue))
            task = loop.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _form_batch(self, loop: asyncio.AbstractEventLoop) -> list[_Pending]:
        """Wait for work, then gather one batch according to the batching config."""
        while True:
            first = await self._next_live()
            batch = [first]
            if self.config.max_batch_size > 0:
                await self._fill(first, batch, loop)
            live = [item for item in batch if not item.future.done()]
            if live:
                return live

    async def _next_live(self) -> _Pending:
        """Wait until a request that is still wanted is at the head of the queue, and pop it."""
        while True:
            while self._queue:
                item = self._queue.popleft()
                if not item.future.done():
                    return item
            self._wakeup.clear()
            await self._wakeup.wait()

    async def _fill(
        self, first: _Pending, batch: list[_Pending], loop: asyncio.AbstractEventLoop
    ) -> None:
        """Add requests shaped like `first` until the batch is full or the delay is spent."""
        limit = self.config.max_batch_size
        rows = first.rows
        # Triton's rule: keep waiting while the oldest request has waited less than the delay.
        delay_end = first.enqueued_at + self.config.max_queue_delay_us / 1e6
        while True:
            rows = self._take_matching(first, batch, rows)
            remaining = delay_end - loop.time()
            if rows >= limit or remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._wakeup.wait()

    def _take_matching(self, first: _Pending, batch: list[_Pending], rows: int) -> int:
        """Move queued requests shaped like `first` into `batch` while they fit; return rows."""
        limit = self.config.max_batch_size
        queue = self._queue
        index = 0
        while index < len(queue) and rows < limit:
            item = queue[index]
            if item.future.done():  # cancelled by its caller or expired: forget it
                del queue[index]
            elif item.shape_key == first.shape_key and rows + item.rows <= limit:
                del queue[index]
                batch.append(item)
                rows += item.rows
            else:  # a different shape waits for a batch of its own
                index += 1
        return rows

    async def _execute(self, batch: list[_Pending]) -> None:
        loop = asyncio.get_running_loop()
        try:
            now = loop.time()
            live: list[_Pending] = []
            for item in batch:
                if item.expiry is not None:
                    item.expiry.cancel()
                if item.deadline is not None and now >= item.deadline:
                    self._expire(item)
                elif not item.future.done():
                    live.append(item)
            if not live:
                return
            for item in live:
                self._stats.record_queue(int((now - item.enqueued_at) * 1e9))
            try:
                results = await loop.run_in_executor(
                    self._executor,
                    _run_batch,
                    self._run,
                    [i.inputs for i in live],
                    self.config.max_batch_size > 0,
                )
            except Exception as error:  # delivered to every caller of the batch
                for item in live:
                    self._fail(item, error)
                return
            outputs, timings = results
            self._stats.record_execution(len(live), sum(i.rows for i in live), timings)
            for item, result in zip(live, outputs, strict=True):
                if not item.future.done():
                    item.future.set_result(result)
        finally:
            self._slots.release()


@dataclass(frozen=True, slots=True)
class ExecutionTimings:
    """Nanoseconds spent merging inputs, running the model and splitting outputs."""

    input_ns: int
    infer_ns: int
    output_ns: int


def _run_batch(
    run: RunBatch, requests: list[Mapping[str, np.ndarray]], merge: bool
) -> tuple[list[Tensors], ExecutionTimings]:
    """Merge requests along dim 0, run the model once, and split the outputs (worker thread)."""
    t0 = time.perf_counter_ns()
    if len(requests) == 1 or not merge:
        merged: Mapping[str, np.ndarray] = requests[0]
    else:
        merged = {name: np.concatenate([r[name] for r in requests], axis=0) for name in requests[0]}
    t1 = time.perf_counter_ns()
    outputs = run(merged)
    t2 = time.perf_counter_ns()
    if len(requests) == 1:
        split = [outputs]
    else:
        split = []
        offset = 0
        for request in requests:
            rows = _rows(request)
            split.append({name: value[offset : offset + rows] for name, value in outputs.items()})
            offset += rows
    t3 = time.perf_counter_ns()
    return split, ExecutionTimings(t1 - t0, t2 - t1, t3 - t2)


def _rows(inputs: Mapping[str, np.ndarray]) -> int:
    """Batch rows of a request: the leading dimension of its inputs."""
    for value in inputs.values():
        return int(value.shape[0]) if value.ndim else 1
    return 1


def _shape_key(inputs: Mapping[str, np.ndarray]) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    """What must match for two requests to share a batch: names, non-batch shapes, dtypes."""
    return tuple(
        (name, tuple(value.shape[1:]), value.dtype.str) for name, value in sorted(inputs.items())
    )
