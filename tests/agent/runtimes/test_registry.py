"""The runtime registry: candidates per file type, fakes, missing and broken runtimes."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

from agent.errors import RuntimeUnavailable
from agent.runtimes.base import Backend, BackendDescription, Candidate, RuntimeOptions
from agent.runtimes.onnx import OnnxRuntimeBackend
from agent.runtimes.registry import (
    PackageRuntimeAdapter,
    RuntimeAdapter,
    RuntimeRegistry,
    RuntimeStatus,
    guess_precision,
)


class FakeBackend(Backend):
    """A backend that doubles its input; enough to prove `create` hands it out."""

    def load(self) -> None:
        """Nothing to load."""

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Double `x`."""
        return {"y": inputs["x"] * 2}

    def describe(self) -> BackendDescription:
        """Not needed here."""
        raise NotImplementedError

    def unload(self) -> None:
        """Nothing to unload."""


class FakeAdapter(RuntimeAdapter):
    """An installed runtime with a GPU that reads `.fake` files."""

    name = "fake"

    def status(self) -> RuntimeStatus:
        """Always installed."""
        return RuntimeStatus("fake", True, "9.9", ("GPU",))

    def candidates_for(self, path: Path) -> list[Candidate]:
        """One GPU candidate per `.fake` file."""
        return [Candidate("fake", "GPU", path)] if path.suffix == ".fake" else []

    def create(self, candidate: Candidate, options: RuntimeOptions) -> Backend:
        """A `FakeBackend`."""
        return FakeBackend(candidate, options)


class MissingAdapter(PackageRuntimeAdapter):
    """A runtime whose package is not installed; listing devices must never happen."""

    name = "missing"
    packages = (("edgefleet_no_such_runtime", ("edgefleet-no-such-runtime",)),)
    suffixes = frozenset({".onnx"})

    def devices(self) -> tuple[str, ...]:
        """Must not be called for a missing package."""
        raise AssertionError("devices() called for a missing runtime")

    def create(self, candidate: Candidate, options: RuntimeOptions) -> Backend:
        """Unreachable."""
        raise AssertionError("create() called for a missing runtime")


class BrokenAdapter(PackageRuntimeAdapter):
    """An installed package (numpy stands in) that fails when asked for its devices."""

    name = "broken"
    packages = (("numpy", ("numpy",)),)
    suffixes = frozenset({".onnx"})

    def __init__(self) -> None:
        super().__init__()
        self.device_calls = 0

    def devices(self) -> tuple[str, ...]:
        """Fail like a runtime whose shared library is missing."""
        self.device_calls += 1
        raise OSError("libbroken.so: cannot open shared object file")

    def create(self, candidate: Candidate, options: RuntimeOptions) -> Backend:
        """Unreachable."""
        raise AssertionError("create() called for a broken runtime")


@pytest.fixture(scope="module")
def registry() -> RuntimeRegistry:
    return RuntimeRegistry.default()


def _keys(candidates: list[Candidate]) -> list[str]:
    return [c.key for c in candidates]


def test_candidates_per_file_type(registry: RuntimeRegistry) -> None:
    assert _keys(registry.candidates([Path("m.onnx")])) == [
        "onnxruntime/CPU/m.onnx",
        "openvino/CPU/m.onnx",
    ]
    assert _keys(registry.candidates([Path("m.xml")])) == ["openvino/CPU/m.xml"]
    assert _keys(registry.candidates([Path("m.tflite")])) == ["tflite/CPU/m.tflite"]
    assert registry.candidates([Path("m.bin"), Path("README.txt")]) == []


def test_azure_and_auto_are_never_listed(registry: RuntimeRegistry) -> None:
    assert "AzureExecutionProvider" in onnxruntime.get_available_providers()  # the trap exists
    devices = {c.device for c in registry.candidates([Path("m.onnx"), Path("m.xml")])}
    assert not any("Azure" in d for d in devices)
    assert "AUTO" not in devices
    statuses = {s.name: s for s in registry.statuses()}
    assert "Azure" not in statuses["onnxruntime"].devices


def test_precision_comes_from_name_tokens() -> None:
    assert guess_precision(Path("mlp.int8.onnx")) == "int8"
    assert guess_precision(Path("mlp_fp16.xml")) == "fp16"
    assert guess_precision(Path("mlp-BF16.tflite")) == "bf16"
    assert guess_precision(Path("mint8er.onnx")) == "fp32"
    assert guess_precision(Path("mlp.onnx")) == "fp32"
    registry = RuntimeRegistry.default()
    assert {c.precision for c in registry.candidates([Path("m.int8.onnx")])} == {"int8"}


def test_fake_runtime_appears_first_as_an_accelerator() -> None:
    registry = RuntimeRegistry([*RuntimeRegistry.default().adapters, FakeAdapter()])
    candidates = registry.candidates([Path("m.onnx"), Path("m.fake")])
    assert _keys(candidates) == [
        "fake/GPU/m.fake",
        "onnxruntime/CPU/m.onnx",
        "openvino/CPU/m.onnx",
    ]
    backend = registry.create(candidates[0], RuntimeOptions())
    assert isinstance(backend, FakeBackend)
    assert backend.infer({"x": np.ones(2)})["y"].tolist() == [2.0, 2.0]
    assert registry.versions()["fake"] == "9.9"


def test_missing_runtime_lists_nothing_and_says_why() -> None:
    adapter = MissingAdapter()
    registry = RuntimeRegistry([adapter])
    (status,) = registry.statuses()
    assert not status.installed
    assert status.version is None
    assert status.reason is not None
    assert "edgefleet-no-such-runtime" in status.reason
    assert registry.candidates([Path("m.onnx")]) == []
    assert registry.versions() == {}
    with pytest.raises(RuntimeUnavailable, match="not installed"):
        registry.create(Candidate("missing", "CPU", Path("m.onnx")), RuntimeOptions())


def test_broken_runtime_is_reported_not_raised_and_probed_once() -> None:
    adapter = BrokenAdapter()
    registry = RuntimeRegistry([adapter])
    (status,) = registry.statuses()
    assert not status.installed
    assert status.reason is not None
    assert "libbroken.so" in status.reason
    assert registry.candidates([Path("m.onnx")]) == []
    registry.statuses()
    assert adapter.device_calls == 1


def test_unknown_runtime_cannot_be_created(registry: RuntimeRegistry) -> None:
    with pytest.raises(RuntimeUnavailable, match="nope"):
        registry.create(Candidate("nope", "CPU", Path("m.onnx")), RuntimeOptions())


def test_create_returns_an_unloaded_real_backend(registry: RuntimeRegistry) -> None:
    candidate = Candidate("onnxruntime", "CPU", Path("m.onnx"))
    backend = registry.create(candidate, RuntimeOptions())
    assert isinstance(backend, OnnxRuntimeBackend)
    assert backend.candidate == candidate


def test_versions_of_installed_runtimes(registry: RuntimeRegistry) -> None:
    versions = registry.versions()
    assert versions["onnxruntime"] == f"onnxruntime=={onnxruntime.__version__}"
    assert set(versions) <= {"onnxruntime", "openvino", "tflite"}
