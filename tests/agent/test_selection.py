"""Accelerator selection: measuring, choosing by policy, caching, pinning and falling back."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from agent.errors import BackendError, ModelLoadError
from agent.inference import InferenceRequest
from agent.model import ModelSpec, ModelState, ServedModel
from agent.runtimes.base import RuntimeOptions
from agent.runtimes.registry import RuntimeRegistry
from agent.selection import AcceleratorSelector, SelectionRequest
from agent.selection_cache import SelectionCache
from tests.agent.fakes import fake_registry, write_fake_model


def selector_for(registry: RuntimeRegistry, cache_path: Path | None = None) -> AcceleratorSelector:
    return AcceleratorSelector(
        registry, RuntimeOptions(max_batch_size=8), SelectionCache(cache_path), "test-hardware"
    )


def test_broken_candidate_is_skipped_with_its_error(tmp_path: Path) -> None:
    registry, _ = fake_registry()
    broken = write_fake_model(tmp_path / "a.fake", fail_load=True)
    crashing = write_fake_model(tmp_path / "b.fake", fail_infer=True)
    good = write_fake_model(tmp_path / "c.fake")
    selection = selector_for(registry).select(
        SelectionRequest("m", (broken, crashing, good), max_batch=8, budget_s=0.05)
    )
    assert selection.report.chosen == "fake/CPU/c.fake"
    assert selection.report.ranking == ("fake/CPU/c.fake",)
    by_file = {m.file: m for m in selection.report.measurements}
    assert not by_file["a.fake"].ok
    assert "refuses to load" in (by_file["a.fake"].error or "")
    assert not by_file["b.fake"].ok
    assert "failed running" in (by_file["b.fake"].error or "")
    assert by_file["c.fake"].ok
    assert by_file["c.fake"].latency_ms_p50 is not None
    assert by_file["c.fake"].throughput_rows_s is not None


@pytest.mark.parametrize("policy", ["latency", "throughput"])
def test_policy_picks_the_faster_candidate(tmp_path: Path, policy: str) -> None:
    registry, _ = fake_registry()
    slow = write_fake_model(tmp_path / "slow.fake", latency_ms=20)
    fast = write_fake_model(tmp_path / "fast.fake", latency_ms=0)
    selection = selector_for(registry).select(
        SelectionRequest("m", (slow, fast), policy=policy, max_batch=8, budget_s=0.2)
    )
    assert selection.report.chosen == "fake/CPU/fast.fake"
    assert selection.report.ranking == ("fake/CPU/fast.fake", "fake/CPU/slow.fake")
    assert [c.path.name for c in selection.fallbacks] == ["slow.fake"]


def test_every_candidate_failing_is_a_load_error(tmp_path: Path) -> None:
    registry, _ = fake_registry()
    paths = (write_fake_model(tmp_path / "a.fake", fail_load=True),)
    with pytest.raises(ModelLoadError, match="every candidate failed"):
        selector_for(registry).select(SelectionRequest("m", paths, budget_s=0.05))


def test_no_runtime_for_the_file(tmp_path: Path) -> None:
    registry, _ = fake_registry()
    path = tmp_path / "model.unknown"
    path.write_bytes(b"?")
    with pytest.raises(ModelLoadError, match=r"no installed runtime can run model\.unknown"):
        selector_for(registry).select(SelectionRequest("m", (path,)))


def test_cached_choice_is_loaded_without_measuring(tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    paths = (write_fake_model(tmp_path / "a.fake"), write_fake_model(tmp_path / "b.fake"))
    registry, runtime = fake_registry()
    first = selector_for(registry, cache).select(SelectionRequest("m", paths, budget_s=0.05))
    assert first.report.source == "measured"
    assert runtime.calls, "measuring runs the model"

    registry, runtime = fake_registry()  # a restart
    second = selector_for(registry, cache).select(SelectionRequest("m", paths, budget_s=0.05))
    assert second.report.source == "cache"
    assert second.report.chosen == first.report.chosen
    assert runtime.calls == [], "a cached decision must not measure again"
    assert runtime.loads == [first.report.chosen]
    assert [c.key for c in second.fallbacks] == list(first.report.ranking[1:])


def test_cache_is_keyed_by_file_contents(tmp_path: Path) -> None:
    cache = tmp_path / "cache.json"
    path = write_fake_model(tmp_path / "a.fake")
    registry, _ = fake_registry()
    selector_for(registry, cache).select(SelectionRequest("m", (path,), budget_s=0.05))
    write_fake_model(path, scale=3.0)  # a new model in the same file
    again = selector_for(registry, cache).select(SelectionRequest("m", (path,), budget_s=0.05))
    assert again.report.source == "measured"


def test_pin_skips_measuring(tmp_path: Path) -> None:
    registry, runtime = fake_registry()
    slow = write_fake_model(tmp_path / "slow.fake", latency_ms=20)
    fast = write_fake_model(tmp_path / "fast.fake")
    selection = selector_for(registry).select(
        SelectionRequest("m", (fast, slow), pin="fake/CPU/slow")
    )
    assert selection.report.source == "pinned"
    assert selection.report.chosen == "fake/CPU/slow.fake"
    assert runtime.calls == []
    with pytest.raises(ModelLoadError, match="matches no candidate"):
        selector_for(registry).select(SelectionRequest("m", (fast,), pin="openvino/GPU"))


def test_real_runtimes_choose_a_working_variant(sample_models: Path, tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a model")
    paths = (
        corrupt,
        sample_models / "mlp.onnx",
        sample_models / "mlp.xml",
        sample_models / "mlp.tflite",
    )
    selection = selector_for(RuntimeRegistry.default()).select(
        SelectionRequest("mlp", paths, max_batch=8, budget_s=0.5)
    )
    measurements = {m.candidate: m for m in selection.report.measurements}
    assert not measurements["onnxruntime/CPU/corrupt.onnx"].ok
    assert "corrupt.onnx" in (measurements["onnxruntime/CPU/corrupt.onnx"].error or "")
    for key in ("onnxruntime/CPU/mlp.onnx", "openvino/CPU/mlp.xml", "tflite/CPU/mlp.tflite"):
        assert measurements[key].ok, measurements[key].error
    assert "corrupt" not in selection.report.chosen
    outputs = selection.backend.infer({"input": np.zeros((2, 64), dtype=np.float32)})
    np.testing.assert_allclose(outputs["probabilities"].sum(axis=1), [1.0, 1.0], rtol=1e-5)
    selection.backend.unload()


async def test_serving_falls_back_when_the_chosen_backend_keeps_failing(tmp_path: Path) -> None:
    registry, runtime = fake_registry()
    failing = write_fake_model(tmp_path / "a.fake", fail_infer=True, scale=2.0)
    healthy = write_fake_model(tmp_path / "b.fake", scale=3.0)
    spec = ModelSpec("m", 1, (failing, healthy), pin="fake/CPU/a", failures_before_fallback=2)
    with ThreadPoolExecutor(2) as executor:
        model = ServedModel(spec, executor)
        await model.load(selector_for(registry))
        assert model.state is ModelState.READY
        assert model.stats.backend == "fake/CPU"
        request = InferenceRequest(
            inputs={"x": np.ones((1, 4), dtype=np.float32)}, datatypes={"x": "FP32"}
        )
        with pytest.raises(BackendError, match=r"failed running fake/CPU/a\.fake"):
            await model.infer(request)
        # The second failure in a row crosses the threshold: b takes over and answers.
        outputs = await model.infer(request)
        np.testing.assert_array_equal(outputs[0][1], np.full((1, 4), 3.0))
        assert model.description is not None
        assert model.description.path.name == "b.fake"
        assert "fake/CPU/a.fake" in runtime.unloads
        await model.unload()


async def test_a_model_that_cannot_load_is_unavailable(tmp_path: Path) -> None:
    registry, _ = fake_registry()
    spec = ModelSpec("m", 1, (write_fake_model(tmp_path / "a.fake", fail_load=True),))
    with ThreadPoolExecutor(1) as executor:
        model = ServedModel(spec, executor)
        await model.load(selector_for(registry))
    assert model.state is ModelState.UNAVAILABLE
    assert "refuses to load" in model.reason
