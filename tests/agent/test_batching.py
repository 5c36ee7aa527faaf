"""The dynamic batcher, driven with a fake model so every decision can be observed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Mapping
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from agent.batching import BatchingConfig, DynamicBatcher
from agent.errors import DeadlineExceeded, ModelNotReady, QueueFull
from agent.stats import ModelStatistics


class FakeModel:
    """Doubles its input; records the batch sizes it saw; can be held to build a queue."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Event()

    def __call__(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.entered.set()
        self.release.wait(30)
        x = inputs["x"]
        self.batches.append(int(x.shape[0]))
        return {"y": x * 2}


@pytest.fixture
async def executor() -> AsyncIterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(max_workers=2)
    yield pool
    pool.shutdown(wait=True)


def make(
    model: FakeModel, executor: ThreadPoolExecutor, **config: int
) -> tuple[DynamicBatcher, ModelStatistics]:
    stats = ModelStatistics(name="fake", version="1")
    batcher = DynamicBatcher(model, executor, BatchingConfig(**config), stats)
    batcher.start()
    return batcher, stats


async def wait_entered(model: FakeModel) -> None:
    await asyncio.get_running_loop().run_in_executor(None, model.entered.wait, 30)


async def test_each_response_matches_its_own_request(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    model.release.clear()
    batcher, stats = make(model, executor, max_batch_size=8, max_queue_delay_us=0)
    first = asyncio.ensure_future(batcher.submit({"x": np.full((1, 3), -1.0)}))
    await wait_entered(model)  # the first request runs alone and holds the model
    rows = [np.full((1 + i % 3, 3), float(i)) for i in range(20)]
    tasks = [asyncio.ensure_future(batcher.submit({"x": r})) for r in rows]
    await asyncio.sleep(0)
    model.release.set()
    results = await asyncio.gather(*tasks)
    for sent, got in zip(rows, results, strict=True):
        np.testing.assert_array_equal(got["y"], sent * 2)
    np.testing.assert_array_equal((await first)["y"], np.full((1, 3), -2.0))
    assert max(model.batches) > 1, "queued requests were never merged"
    assert all(b <= 8 for b in model.batches)
    assert sum(model.batches) == 1 + sum(r.shape[0] for r in rows)
    assert stats.inference_count == sum(model.batches)
    assert stats.execution_count == len(model.batches)
    await batcher.close()


async def test_requests_with_different_shapes_are_never_merged(
    executor: ThreadPoolExecutor,
) -> None:
    model = FakeModel()
    model.release.clear()
    batcher, _ = make(model, executor, max_batch_size=16)
    blocker = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 2))}))
    await wait_entered(model)
    narrow = [asyncio.ensure_future(batcher.submit({"x": np.ones((1, 2))})) for _ in range(3)]
    wide = [asyncio.ensure_future(batcher.submit({"x": np.ones((1, 5))})) for _ in range(3)]
    await asyncio.sleep(0)
    model.release.set()
    for task in narrow:
        assert (await task)["y"].shape == (1, 2)
    for task in wide:
        assert (await task)["y"].shape == (1, 5)
    await blocker
    assert model.batches == [1, 3, 3]
    await batcher.close()


async def test_full_queue_rejects_at_once(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    model.release.clear()
    batcher, _ = make(model, executor, max_batch_size=1, max_queue_size=2)
    running = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))}))
    await wait_entered(model)
    queued = [asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))})) for _ in range(2)]
    await asyncio.sleep(0)
    assert batcher.pending == 2
    with pytest.raises(QueueFull, match="queue of this model is full"):
        await batcher.submit({"x": np.zeros((1, 1))})
    model.release.set()
    await asyncio.gather(running, *queued)
    await batcher.close()


async def test_timeout_expires_while_queued(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    model.release.clear()
    batcher, _ = make(model, executor, max_batch_size=1)
    running = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))}))
    await wait_entered(model)
    # The model stays busy, so a 1 ms deadline must fire while the request waits,
    # not when the slot frees (Triton issue 7512).
    with pytest.raises(DeadlineExceeded):
        await batcher.submit({"x": np.zeros((1, 1))}, timeout_us=1000)
    assert model.batches == []
    model.release.set()
    await running
    assert model.batches == [1], "the expired request must never run"
    await batcher.close()


async def test_cancelled_request_is_dropped_before_running(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    model.release.clear()
    batcher, _ = make(model, executor, max_batch_size=4)
    running = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))}))
    await wait_entered(model)
    abandoned = asyncio.ensure_future(batcher.submit({"x": np.ones((3, 1))}))
    kept = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))}))
    await asyncio.sleep(0)
    abandoned.cancel()  # what aiohttp does to a handler whose client disconnected
    model.release.set()
    await running
    await kept
    assert model.batches == [1, 1], "the cancelled request's 3 rows must not run"
    await batcher.close()


async def test_queue_delay_waits_for_a_fuller_batch(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    batcher, _ = make(model, executor, max_batch_size=4, max_queue_delay_us=5_000_000)
    tasks = [asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))})) for _ in range(4)]
    await asyncio.gather(*tasks)
    # The delay is long, so only a full batch could have made the dispatcher go early.
    assert model.batches == [4]
    await batcher.close()


async def test_backend_error_reaches_every_caller(executor: ThreadPoolExecutor) -> None:
    def broken(inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise RuntimeError("device lost")

    stats = ModelStatistics(name="fake", version="1")
    batcher = DynamicBatcher(broken, executor, BatchingConfig(max_batch_size=4), stats)
    batcher.start()
    results = await asyncio.gather(
        *(batcher.submit({"x": np.ones((1, 1))}) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, RuntimeError) for r in results)
    await batcher.close()


async def test_close_answers_what_is_queued(executor: ThreadPoolExecutor) -> None:
    model = FakeModel()
    model.release.clear()
    batcher, _ = make(model, executor, max_batch_size=1)
    running = asyncio.ensure_future(batcher.submit({"x": np.ones((1, 1))}))
    await wait_entered(model)
    queued = [asyncio.ensure_future(batcher.submit({"x": np.full((1, 1), 2.0)})) for _ in range(3)]
    await asyncio.sleep(0)
    closing = asyncio.ensure_future(batcher.close())
    await asyncio.sleep(0)
    with pytest.raises(ModelNotReady, match="being unloaded"):
        await batcher.submit({"x": np.ones((1, 1))})  # nothing new once closing
    model.release.set()
    await closing
    assert [(await t)["y"].tolist() for t in queued] == [[[4.0]]] * 3
    assert (await running)["y"].tolist() == [[2.0]]
