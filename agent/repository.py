"""The serving registry: which model versions exist on this agent and which one answers a call.

Local model files (`edgefleet agent serve`) and, with the bundle issue, verified bundles both
become `ServedModel`s here. A request without a version goes to the highest READY version,
as Triton does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from concurrent.futures import Executor

from agent.errors import ModelNotFound, ModelNotReady
from agent.model import ModelSpec, ModelState, ServedModel
from agent.selection import AcceleratorSelector

log = logging.getLogger(__name__)


class ModelRepository:
    """Served model versions by name and version number."""

    def __init__(self, selector: AcceleratorSelector, executor: Executor) -> None:
        self.selector = selector
        self._executor = executor
        self._models: dict[str, dict[int, ServedModel]] = {}
        # Which version answers requests that name none; absent = the highest ready version.
        self._serving: dict[str, int] = {}
        self._loading: set[asyncio.Task[None]] = set()
        # Called with each model version that becomes ready (after selection and load).
        self.on_model_ready: list[Callable[[ServedModel], None]] = []

    def add(self, spec: ModelSpec) -> ServedModel:
        """Register a model version (not loaded yet)."""
        versions = self._models.setdefault(spec.name, {})
        if spec.version in versions:
            raise ValueError(f"model '{spec.name}' version {spec.version} is already registered")
        model = versions[spec.version] = ServedModel(spec, self._executor)
        model.on_ready.append(self._model_ready)
        # Keep versions sorted once here, not on every request.
        self._models[spec.name] = dict(sorted(versions.items()))
        return model

    def _model_ready(self, model: ServedModel) -> None:
        for listener in self.on_model_ready:
            listener(model)

    async def load_all(self) -> None:
        """Load every registered model that is not loaded, one after another.

        Sequential on purpose: selection measures speed, and two measurements running at once
        on a small device would spoil each other's figures.
        """
        for model in list(self.all()):
            if model.state is ModelState.UNAVAILABLE and model.loaded_at is None:
                await model.load(self.selector)

    def start_loading(self) -> asyncio.Task[None]:
        """Load every registered model in the background; the server answers meanwhile."""
        task = asyncio.get_running_loop().create_task(self.load_all(), name="edgefleet-load")
        self._loading.add(task)
        task.add_done_callback(self._loading.discard)
        return task

    async def close(self) -> None:
        """Stop loading and unload every model."""
        for task in list(self._loading):
            task.cancel()
        await asyncio.gather(*self._loading, return_exceptions=True)
        await asyncio.gather(*(model.unload() for model in self.all()))

    def all(self) -> Iterable[ServedModel]:
        """Every registered model version, by name then version."""
        for name in sorted(self._models):
            yield from self._models[name].values()

    def names(self) -> list[str]:
        """Names of the registered models."""
        return sorted(self._models)

    def versions(self, name: str) -> list[ServedModel]:
        """Every registered version of a model, lowest first; ModelNotFound if none."""
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"unknown model '{name}'")
        return list(versions.values())

    def versions_or_none(self, name: str) -> list[ServedModel]:
        """Every registered version of a model, lowest first (empty if none)."""
        return list(self._models.get(name, {}).values())

    def resolve(self, name: str, version: int | None) -> ServedModel:
        """Return the version asked for, or the highest ready version when none is given."""
        versions = self._models.get(name)
        if not versions:
            raise ModelNotFound(f"unknown model '{name}'")
        if version is not None:
            model = versions.get(version)
            if model is None:
                raise ModelNotFound(f"model '{name}' has no version {version}")
            return model
        serving = versions.get(self._serving.get(name, -1))
        if serving is not None and serving.state is ModelState.READY:
            return serving
        for model in reversed(versions.values()):
            if model.state is ModelState.READY:
                return model
        return next(reversed(versions.values()))

    def find(self, name: str, version: int) -> ServedModel | None:
        """The registered model version, or None."""
        return self._models.get(name, {}).get(version)

    def serve(self, name: str, version: int) -> ServedModel | None:
        """Send requests without a version to `version` from now on; return the one replaced.

        A single dictionary assignment on the event loop: requests already queued finish on the
        old version, every later one goes to the new.
        """
        model = self.find(name, version)
        if model is None or model.state is not ModelState.READY:
            raise ModelNotReady(f"model '{name}' version {version} cannot serve: not ready")
        previous = self.resolve(name, None)
        self._serving[name] = version
        return previous if previous is not model and previous.state is ModelState.READY else None

    async def remove(self, name: str, version: int) -> None:
        """Unload a version and forget it."""
        model = self.find(name, version)
        if model is None:
            return
        await model.unload()
        del self._models[name][version]
        if not self._models[name]:
            del self._models[name]
        if self._serving.get(name) == version:
            del self._serving[name]

    def require_ready(self, name: str, version: int | None) -> ServedModel:
        """Like `resolve`, but raise ModelNotReady unless the model can serve."""
        model = self.resolve(name, version)
        if model.state is not ModelState.READY:
            raise ModelNotReady(
                f"model '{name}' version {model.version} is not ready "
                f"({model.state.value.lower()}: {model.reason})",
                retry_after=2.0,
            )
        return model

    @property
    def ready(self) -> bool:
        """True when every registered model has a ready version (the agent's readiness)."""
        return all(
            any(m.state is ModelState.READY for m in versions.values())
            for versions in self._models.values()
        )
