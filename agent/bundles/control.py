"""Explicit load and unload in production mode: only verified bundles from the store.

`POST /v2/repository/models/{m}/load` serves the model's committed version again after checking
its archive and files against the signed manifest (the same path as a restart), never a file a
caller names. `unload` unloads every version and holds the model unloaded, so the assignment sync
does not bring it straight back; a later `load` (or a new assignment for it) lifts the hold.
"""

from __future__ import annotations

from agent.bundles.activation import BundleActivator
from agent.dataplane import ModelControl
from agent.errors import ActivationFailed, ModelNotFound
from shared.errors import EdgeFleetError


class BundleModelControl(ModelControl):
    """Load and unload through the bundle activator."""

    def __init__(self, activator: BundleActivator) -> None:
        super().__init__(activator.repository)
        self.activator = activator

    async def load(self, name: str) -> None:
        """Verify the committed bundle again and serve it."""
        installed = self.activator.keeper.state.model(name).active
        if installed is None:
            raise ModelNotFound(f"model '{name}' has no committed bundle on this device")
        self.activator.held.discard(name)
        try:
            await self.activator.restore(name, installed)
        except ActivationFailed:
            raise
        except EdgeFleetError as error:  # the store no longer verifies: say so, serve nothing
            raise ActivationFailed(f"model '{name}' v{installed.version}: {error}") from None

    async def unload(self, name: str) -> None:
        """Unload every version and keep the model unloaded until the next load."""
        versions = self.repository.versions(name)  # ModelNotFound for unknown models
        self.activator.held.add(name)
        for model in versions:
            await model.unload()
