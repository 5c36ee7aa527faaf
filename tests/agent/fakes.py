"""A fake runtime whose behaviour each test controls: slow, broken at load, broken at run.

Model files have the suffix `.fake` and hold JSON such as `{"latency_ms": 2, "fail_load": false,
"fail_infer": false, "fail_after": 10, "fail_on": 4.0, "scale": 2}`. Every fake model takes `x`
FP32 [N, 4] and returns `y = x * scale`.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agent.errors import BackendError, ModelLoadError
from agent.runtimes.base import (
    Backend,
    BackendDescription,
    Candidate,
    RuntimeOptions,
    batchable,
)
from agent.runtimes.registry import RuntimeAdapter, RuntimeRegistry, RuntimeStatus
from agent.tensors import TensorSpec

INPUTS = (TensorSpec("x", "FP32", (-1, 4)),)
OUTPUTS = (TensorSpec("y", "FP32", (-1, 4)),)


def write_fake_model(path: Path, **behaviour: Any) -> Path:
    """Write a `.fake` model file with the given behaviour."""
    path.write_text(json.dumps(behaviour))
    return path


class FakeBackend(Backend):
    """Runs the behaviour its file describes; waits on the runtime's gate before each run."""

    def __init__(self, candidate: Candidate, options: RuntimeOptions, runtime: FakeRuntime) -> None:
        super().__init__(candidate, options)
        self.runtime = runtime
        self.behaviour: dict[str, Any] = {}
        self.runs = 0

    def load(self) -> None:
        """Read the behaviour; fail if it says so."""
        try:
            self.behaviour = json.loads(self.candidate.path.read_text())
        except (OSError, ValueError) as error:
            raise ModelLoadError(f"fake cannot read {self.candidate.path}: {error}") from None
        if self.behaviour.get("fail_load"):
            raise ModelLoadError(f"fake refuses to load {self.candidate.path.name}")
        self.runtime.loads.append(self.candidate.key)

    def infer(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return `x * scale` after the configured latency."""
        with self.runtime.lock:
            self.runtime.waiting += 1
        self.runtime.gate.wait(30)
        with self.runtime.lock:
            self.runtime.waiting -= 1
        self.runtime.calls.append((self.candidate.key, int(inputs["x"].shape[0])))
        self.runs += 1
        fail_after = self.behaviour.get("fail_after")
        fail_on = self.behaviour.get("fail_on")  # fail only on inputs holding this value
        if (
            self.behaviour.get("fail_infer")
            or (fail_after is not None and self.runs > fail_after)
            or (fail_on is not None and bool(np.any(inputs["x"] == fail_on)))
        ):
            raise BackendError(f"fake failed running {self.candidate.key}")
        latency = float(self.behaviour.get("latency_ms", 0)) / 1000
        if latency:
            time.sleep(latency)
        return {"y": inputs["x"] * float(self.behaviour.get("scale", 2.0))}

    def describe(self) -> BackendDescription:
        """Fixed signature: x [N,4] -> y [N,4]."""
        return BackendDescription(
            runtime="fake",
            runtime_version="0",
            device=self.candidate.device,
            path=self.candidate.path,
            precision=self.candidate.precision,
            inputs=INPUTS,
            outputs=OUTPUTS,
            batchable=batchable(INPUTS, OUTPUTS),
        )

    def unload(self) -> None:
        """Record the unload."""
        self.runtime.unloads.append(self.candidate.key)


class FakeRuntime(RuntimeAdapter):
    """A runtime named `fake` with one device, `CPU`, for `.fake` files."""

    name = "fake"

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.lock = threading.Lock()
        self.waiting = 0  # runs currently held at the gate
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.calls: list[tuple[str, int]] = []

    def status(self) -> RuntimeStatus:
        """Always installed."""
        return RuntimeStatus("fake", True, "0", ("CPU",))

    def candidates_for(self, path: Path) -> list[Candidate]:
        """One candidate per `.fake` file."""
        return [Candidate("fake", "CPU", path)] if path.suffix == ".fake" else []

    def create(self, candidate: Candidate, options: RuntimeOptions) -> Backend:
        """A new fake backend."""
        return FakeBackend(candidate, options, self)


def fake_registry() -> tuple[RuntimeRegistry, FakeRuntime]:
    """A registry holding only the fake runtime, and that runtime for the test to steer."""
    runtime = FakeRuntime()
    return RuntimeRegistry([runtime]), runtime
