"""The transport-neutral heart of the inference API.

Each method answers one Open Inference Protocol question (metadata, readiness, configuration,
statistics, inference) with plain data. The REST handlers in `agent.server` only decode,
call one of these and encode, so a gRPC front end could reuse all of it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from agent import __version__
from agent.errors import (
    AgentError,
    BackendError,
    DeadlineExceeded,
    InvalidRequest,
    ModelNotReady,
    QueueFull,
)
from agent.inference import InferenceRequest
from agent.model import ModelState, ServedModel
from agent.repository import ModelRepository
from agent.tensors import triton_config_type

EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "schedule_policy",
    "statistics",
    "parameters",
)


class ModelControl:
    """Explicit load and unload (`/v2/repository/models/{m}/load|unload`) of known models.

    This default serves `agent serve`: it reloads the configured local files. Production mode
    replaces it with `agent.bundles.control.BundleModelControl`, which loads only verified
    bundles from the store.
    """

    def __init__(self, repository: ModelRepository) -> None:
        self.repository = repository

    async def load(self, name: str) -> None:
        """Unload and load every version of the model again (re-measuring the backends)."""
        for model in self.repository.versions(name):
            await model.unload()
            await model.load(self.repository.selector)
        self.repository.require_ready(name, None)

    async def unload(self, name: str) -> None:
        """Unload every version of the model."""
        for model in self.repository.versions(name):
            await model.unload()


class DataPlane:
    """Answers inference-protocol calls against the model repository."""

    def __init__(self, repository: ModelRepository, server_name: str = "edgefleet") -> None:
        self.repository = repository
        self.server_name = server_name
        # Production mode replaces these: ready means the *assigned* models serve, and
        # explicit loads come only from verified bundles.
        self.readiness: Callable[[], bool] = lambda: repository.ready
        self.control = ModelControl(repository)

    def server_metadata(self) -> dict[str, Any]:
        """`GET /v2`."""
        return {"name": self.server_name, "version": __version__, "extensions": list(EXTENSIONS)}

    def ready(self) -> bool:
        """Server readiness: every model this agent must serve is loaded."""
        return self.readiness()

    def model_ready(self, name: str, version: int | None) -> bool:
        """Model readiness; unknown models raise ModelNotFound."""
        return self.repository.resolve(name, version).state is ModelState.READY

    def model_metadata(self, name: str, version: int | None) -> dict[str, Any]:
        """`GET /v2/models/{m}[/versions/{v}]`."""
        if version is None:
            versions = [m for m in self.repository.versions(name) if m.state is ModelState.READY]
        else:
            versions = [self.repository.resolve(name, version)]
        model = self.repository.require_ready(name, version)
        description = model.description
        assert description is not None
        return {
            "name": name,
            "versions": [str(m.version) for m in versions],
            "platform": description.platform,
            "inputs": [spec.as_json() for spec in description.inputs],
            "outputs": [spec.as_json() for spec in description.outputs],
        }

    def model_config(self, name: str, version: int | None) -> dict[str, Any]:
        """`GET .../config`: Triton's ModelConfig, plus the backend the selection chose."""
        model = self.repository.require_ready(name, version)
        description = model.description
        assert description is not None
        batching = model.batching
        batched = batching.max_batch_size > 0

        def tensor(spec_shape: tuple[int, ...], name: str, datatype: str) -> dict[str, Any]:
            dims = list(spec_shape[1:] if batched else spec_shape)
            return {"name": name, "data_type": triton_config_type(datatype), "dims": dims}

        config: dict[str, Any] = {
            "name": name,
            "platform": description.platform,
            "backend": description.runtime,
            "version_policy": {"specific": {"versions": [model.version]}},
            "max_batch_size": batching.max_batch_size,
            "input": [tensor(s.shape, s.name, s.datatype) for s in description.inputs],
            "output": [tensor(s.shape, s.name, s.datatype) for s in description.outputs],
            "instance_group": [
                {
                    "name": f"{name}_0",
                    "kind": "KIND_CPU" if description.device in ("CPU",) else "KIND_GPU",
                    "count": batching.instances,
                }
            ],
            "parameters": {
                "edgefleet.runtime": {"string_value": description.runtime},
                "edgefleet.device": {"string_value": description.device},
            },
        }
        if batched:
            config["dynamic_batching"] = {
                "max_queue_delay_microseconds": batching.max_queue_delay_us,
                "default_queue_policy": {
                    "max_queue_size": batching.max_queue_size,
                    "default_timeout_microseconds": batching.default_timeout_us,
                    "allow_timeout_override": True,
                    "timeout_action": "REJECT",
                },
            }
        config["edgefleet"] = {
            "runtime": description.runtime,
            "runtime_version": description.runtime_version,
            "device": description.device,
            "file": description.path.name,
            "precision": description.precision,
            "selection": model.report.as_json() if model.report else None,
        }
        return config

    def statistics(self, name: str | None, version: int | None) -> dict[str, Any]:
        """`GET /v2/models[/{m}[/versions/{v}]]/stats`."""
        if name is None:
            models = list(self.repository.all())
        elif version is None:
            models = self.repository.versions(name)
        else:
            models = [self.repository.resolve(name, version)]
        return {"model_stats": [m.stats.as_triton() for m in models]}

    def repository_index(self, ready_only: bool) -> list[dict[str, Any]]:
        """`POST /v2/repository/index`."""
        index = []
        for model in self.repository.all():
            if ready_only and model.state is not ModelState.READY:
                continue
            entry = {"name": model.name, "version": str(model.version), "state": model.state.value}
            if model.state is not ModelState.READY:
                entry["reason"] = model.reason
            index.append(entry)
        return index

    async def infer(
        self, name: str, version: int | None, request: InferenceRequest
    ) -> tuple[ServedModel, list[tuple[str, np.ndarray, bool]]]:
        """Run one inference request and record its outcome in the model's statistics."""
        model = self.repository.require_ready(name, version)
        started = time.perf_counter_ns()
        try:
            try:
                outputs = await model.infer(request)
            except ModelNotReady:
                if version is not None or model.state is ModelState.READY:
                    raise
                # The version was swapped out between lookup and queueing: a request that named
                # no version goes to the one serving now instead of failing.
                model = self.repository.require_ready(name, None)
                outputs = await model.infer(request)
        except asyncio.CancelledError:
            model.stats.record_failure("canceled", time.perf_counter_ns() - started)
            raise
        except AgentError as error:
            model.stats.record_failure(_failure_reason(error), time.perf_counter_ns() - started)
            raise
        model.stats.record_success(time.perf_counter_ns() - started)
        return model, outputs


def _failure_reason(error: AgentError) -> str:
    if isinstance(error, DeadlineExceeded | QueueFull | ModelNotReady):
        return "rejected"
    if isinstance(error, BackendError):
        return "backend"
    if isinstance(error, InvalidRequest):
        return "invalid"
    return "other"
