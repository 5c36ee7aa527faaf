"""Installing an assigned bundle: download, verify, load, validate, warm, swap, probation, commit.

`BundleActivator.activate` takes one model of a verified assignment through the states of
`agent.bundles.lifecycle`, persisting the phase before each step so a restart knows what was under
way. The previous version keeps serving until the new one passes validation and warm-up; the swap
is one pointer change in the repository; a new version that fails probation is reverted by the
agent itself. `recover` runs at start: it serves the last committed version of every model (or an
earlier one if that fails verification), and counts the interrupted activation as an attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from agent.batching import BatchingConfig
from agent.bundles.compatibility import DeviceProfile, usable_variants
from agent.bundles.download import BundleDownloader
from agent.bundles.lifecycle import TERMINAL, EventLog, LifecycleEvent, VersionState, make_event
from agent.bundles.pause import PausePoints
from agent.bundles.probation import ProbationGate, ProbationPolicy
from agent.bundles.space import disk_full, no_space_reason
from agent.bundles.staging import StagedBundle, stage_bundle
from agent.bundles.state import Activation, AgentState, InstalledVersion, StateFile
from agent.errors import ActivationFailed, AgentError, DownloadFailed
from agent.hardware import CPUINFO, probe_hardware
from agent.model import ModelSpec, ModelState, ServedModel
from agent.repository import ModelRepository
from shared.assignment import ModelAssignment
from shared.errors import EdgeFleetError
from shared.keylist import TrustStore

log = logging.getLogger(__name__)
S = VersionState


@dataclass(frozen=True, slots=True)
class ActivationSettings:
    """How bundles are installed and judged."""

    keep_versions: int = 3  # committed versions kept in the store for instant revert
    max_attempts: int = 3  # interrupted or crashed attempts before a bundle is given up
    probation: ProbationPolicy = field(default_factory=ProbationPolicy)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    selection_budget_s: float = 3.0
    pins: dict[str, str] = field(default_factory=dict)


class StateKeeper:
    """The in-memory `AgentState` and its file; changes are saved one at a time, in order."""

    def __init__(self, file: StateFile, state: AgentState, executor: Executor) -> None:
        self.file = file
        self.state = state
        self._executor = executor
        self._lock = asyncio.Lock()

    async def update(self, change: Callable[[AgentState], AgentState]) -> AgentState:
        """Apply `change` and persist the result before returning it."""
        async with self._lock:
            new = change(self.state)
            await asyncio.get_running_loop().run_in_executor(self._executor, self.file.save, new)
            self.state = new
            return new


class _Attempt:
    """One pass of one bundle through the lifecycle, logging each transition."""

    def __init__(self, activator: BundleActivator, model: ModelAssignment, start: S | None):
        self.activator = activator
        self.model = model
        self.state = start

    async def to(self, state: S, reason: str = "", details: dict[str, Any] | None = None) -> None:
        m = self.model
        event = make_event(m.name, m.version, m.digest, self.state, state, reason, details)
        await self.activator.record(event)
        self.state = state
        self.activator.last_state[m.digest] = state
        log.info(
            "%s v%d (%s): %s%s",
            m.name,
            m.version,
            m.digest[:12],
            state.value,
            f": {reason}" if reason else "",
        )


class BundleActivator:
    """Moves models from one verified bundle to another, safely."""

    def __init__(
        self,
        *,
        repository: ModelRepository,
        downloader: BundleDownloader,
        trust: Callable[[], TrustStore],
        keeper: StateKeeper,
        events: EventLog,
        executor: Executor,
        settings: ActivationSettings,
        pauses: PausePoints,
    ) -> None:
        self.repository = repository
        self.downloader = downloader
        self.store = downloader.store
        self.trust = trust
        self.keeper = keeper
        self.events = events
        self.executor = executor
        self.settings = settings
        self.pauses = pauses
        self.last_state: dict[str, S] = {}
        self.held: set[str] = set()  # models an operator unloaded; the sync leaves them alone
        self.listeners: list[Callable[[LifecycleEvent], None]] = []
        self._lock = asyncio.Lock()  # one activation at a time: they measure and they swap
        self._profile: DeviceProfile | None = None

    async def record(self, event: LifecycleEvent) -> None:
        """Append an event to the log and tell listeners (the MQTT reporter, later)."""
        await self._run(self.events.append, event)
        for listener in self.listeners:
            listener(event)

    async def _run(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    async def activate(self, model: ModelAssignment) -> None:
        """Bring `model` to the assigned bundle; the previous version serves until it is proven."""
        async with self._lock:
            if model.name in self.held:
                return
            record = self.keeper.state.model(model.name)
            serving = self._serving_version(model.name)
            if record.active and record.active.digest == model.digest and serving == model.version:
                return
            if model.digest in record.failed:
                log.debug(
                    "%s: bundle %s failed before; waiting for another",
                    model.name,
                    model.digest[:12],
                )
                return
            attempts = 1
            if record.activation is not None and record.activation.digest == model.digest:
                attempts = record.activation.attempts + 1
            attempt = _Attempt(self, model, self.last_state.get(model.digest))
            if attempts > self.settings.max_attempts:
                await attempt.to(S.DOWNLOADING, details={"attempt": attempts})
                await attempt.to(S.FAILED, f"gave up after {attempts - 1} interrupted attempts")
                await self._forget_activation(model, failed=True)
                return
            try:
                await self._step(attempt, S.DOWNLOADING, attempts, {"attempt": attempts})
                await self._install(attempt, attempts)
            except (EdgeFleetError, OSError) as error:
                await self._fail(attempt, error)

    async def _install(self, attempt: _Attempt, attempts: int) -> None:
        model = attempt.model
        committed = self.keeper.state.model(model.name).active
        archive = await self.downloader.fetch(model.url, model.digest, model.size)
        await self._step(attempt, S.VERIFYING, attempts)
        staged = await self._run(stage_bundle, archive, self.store, self.trust(), model)
        await self._step(attempt, S.STAGED, attempts, {"signer": staged.signer})
        await self._step(attempt, S.VALIDATING, attempts)
        served = await self._load(model, staged)
        await self._step(attempt, S.WARMING, attempts)
        await self._warm(served, staged)
        previous = self.repository.serve(model.name, model.version)
        await self._step(
            attempt,
            S.PROBATION,
            attempts,
            {"previous": previous.version if previous else None, "backend": served.stats.backend},
        )
        gate = ProbationGate(
            self.settings.probation, served.stats, previous.stats if previous else None
        )
        verdict = await gate.watch()
        if not verdict.passed:
            await self._revert(attempt, previous, verdict.reason, verdict.figures)
            return
        installed = InstalledVersion(model.version, model.digest)
        keep = self.settings.keep_versions
        await self.keeper.update(
            lambda s: s.with_model(model.name, s.model(model.name).committed(installed, keep))
        )
        await self.pauses.reach("committed")
        await attempt.to(S.ACTIVE, details=verdict.figures)
        if committed is not None and committed != installed:
            old = ModelAssignment(model.name, committed.version, committed.digest, "", 0)
            await _Attempt(self, old, S.ACTIVE).to(S.RETIRED, f"replaced by v{model.version}")
        # The previous version stays loaded for an instant revert; older ones are unloaded.
        resident = {model.version} | ({previous.version} if previous else set())
        for other in self.repository.versions_or_none(model.name):
            if other.version not in resident:
                await self.repository.remove(model.name, other.version)
        await self._run(self.store.collect, self.keeper.state.referenced_digests())

    async def _step(
        self, attempt: _Attempt, state: S, attempts: int, details: dict[str, Any] | None = None
    ) -> None:
        """Persist the phase, log the transition, and stop there if a test asked to."""
        await self._persist_phase(attempt.model, state, attempts)
        await attempt.to(state, details=details)
        await self.pauses.reach(state.value)

    async def rollback(self, name: str) -> str:
        """Go back to the previous committed version (a local revert, even offline).

        The version given up is marked failed, so the assignment that named it does not bring it
        back; a new assignment naming it again does.
        """
        record = self.keeper.state.model(name)
        if record.active is None or not record.history:
            raise ActivationFailed(f"model '{name}' has no earlier committed version")
        current, target = record.active, record.history[0]
        await self._forget_activation(
            ModelAssignment(name, current.version, current.digest, "", 0), failed=True
        )
        await self.activate(ModelAssignment(name, target.version, target.digest, "", 0))
        now = self.keeper.state.model(name).active
        if now != target:
            raise ActivationFailed(f"model '{name}': v{target.version} did not come back")
        return f"{name} rolled back from v{current.version} to v{target.version}"

    async def restore(self, name: str, installed: InstalledVersion) -> None:
        """Serve a committed version again after a restart: verify, load, check, warm, serve."""
        model = ModelAssignment(name, installed.version, installed.digest, "", 0)
        archive = self.store.blob(installed.digest)
        if not archive.is_file():
            raise ActivationFailed(f"bundle {installed.digest[:12]} is missing from the store")
        staged = await self._run(stage_bundle, archive, self.store, self.trust(), model)
        served = await self._load(model, staged)
        await self._warm(served, staged)
        self.repository.serve(name, installed.version)

    async def _load(self, model: ModelAssignment, staged: StagedBundle) -> ServedModel:
        """Load the staged bundle (or reuse it if resident) and check its golden vectors."""
        usable = usable_variants(
            staged.manifest.compatibility, staged.manifest.variants, await self._device()
        )
        paths = tuple(staged.directory / variant.file for variant in usable)
        existing = self.repository.find(model.name, model.version)
        if existing is not None and existing.spec.paths != paths:
            await self.repository.remove(model.name, model.version)
            existing = None
        served = existing or self.repository.add(self._spec(model, staged, paths))
        if served.state is not ModelState.READY:
            await served.load(self.repository.selector)
        if served.state is not ModelState.READY:
            raise ActivationFailed(f"the bundle does not load: {served.reason}")
        outputs = await served.run_direct(staged.golden_inputs)
        for name, expected in staged.golden_expected.items():
            got = outputs.get(name)
            if got is None or got.shape != expected.shape:
                raise ActivationFailed(f"golden output '{name}' is missing or has the wrong shape")
            worst = float(np.max(np.abs(got.astype(np.float64) - expected))) if got.size else 0.0
            if worst > staged.tolerance:
                raise ActivationFailed(
                    f"golden output '{name}' differs by {worst:.3g} (tolerance "
                    f"{staged.tolerance:.3g}) on {served.stats.backend}"
                )
        return served

    async def _warm(self, served: ServedModel, staged: StagedBundle) -> None:
        """Run every batch size the manifest declares, so no real request pays for first use."""
        rows = next(iter(staged.golden_inputs.values())).shape[0]
        for size in staged.warm_batch_sizes:
            if served.batching.max_batch_size == 0 and size != rows:
                continue
            repeats = -(-size // rows)
            batch = {
                name: np.concatenate([value] * repeats)[:size]
                for name, value in staged.golden_inputs.items()
            }
            await served.run_direct(batch)

    async def _device(self) -> DeviceProfile:
        """This device's runtimes, CPU features and memory (probed once)."""
        if self._profile is None:
            registry = self.repository.selector.registry
            hardware = await self._run(probe_hardware, registry, CPUINFO, False)
            runtimes = {name: v.rpartition("==")[2] for name, v in registry.versions().items()}
            self._profile = DeviceProfile(
                runtimes, frozenset(hardware.cpu_features), hardware.memory_bytes
            )
        return self._profile

    def _spec(
        self, model: ModelAssignment, staged: StagedBundle, paths: tuple[Path, ...]
    ) -> ModelSpec:
        hints = staged.max_batch_size
        batching = self.settings.batching
        if hints:
            batching = replace(
                batching, max_batch_size=min(hints, batching.max_batch_size or hints)
            )
        return ModelSpec(
            name=model.name,
            version=model.version,
            paths=paths,
            policy=staged.policy,
            pin=self.settings.pins.get(model.name),
            batching=batching,
            selection_budget_s=self.settings.selection_budget_s,
        )

    async def _revert(
        self,
        attempt: _Attempt,
        previous: ServedModel | None,
        reason: str,
        figures: dict[str, Any],
    ) -> None:
        model = attempt.model
        if previous is not None and previous.state is ModelState.READY:
            self.repository.serve(model.name, previous.version)
        await self.repository.remove(model.name, model.version)
        await self._forget_activation(model, failed=True)
        await attempt.to(S.REVERTED, reason, details=figures)

    async def _fail(self, attempt: _Attempt, error: BaseException) -> None:
        model = attempt.model
        retry = isinstance(error, OSError) or (
            isinstance(error, DownloadFailed) and error.retryable
        )
        found = self.repository.find(model.name, model.version)
        if found is not None and self._serving_version(model.name) != model.version:
            await self.repository.remove(model.name, model.version)
        reason = str(error)
        if disk_full(error):
            # Free what this attempt wrote (partial download, archive, extraction) first: the
            # state file and the event log need room to say what happened.
            keep = _kept_after_failure(self.keeper.state, model.digest)
            await self._run(self.store.collect, keep)
            reason = await self._run(no_space_reason, self.store.root, model.digest, model.size)
        await self._forget_activation(model, failed=not retry)
        if attempt.state is None or attempt.state in TERMINAL:
            # The attempt failed before it could log its start (its first state write).
            await attempt.to(S.DOWNLOADING)
        note = " (will retry at the next sync)" if retry else ""
        await attempt.to(S.FAILED, f"{reason}{note}")

    async def _persist_phase(self, model: ModelAssignment, phase: S, attempts: int) -> None:
        activation = Activation(model.version, model.digest, phase.value, attempts)
        await self.keeper.update(
            lambda s: s.with_model(model.name, replace(s.model(model.name), activation=activation))
        )

    async def _forget_activation(self, model: ModelAssignment, failed: bool) -> None:
        def change(state: AgentState) -> AgentState:
            record = state.model(model.name)
            given_up = (*record.failed, model.digest) if failed else record.failed
            return state.with_model(
                model.name, replace(record, activation=None, failed=given_up[-16:])
            )

        await self.keeper.update(change)

    def _serving_version(self, name: str) -> int | None:
        try:
            served = self.repository.resolve(name, None)
        except AgentError:
            return None
        return served.version if served.state is ModelState.READY else None


def _kept_after_failure(state: AgentState, failed: str) -> set[str]:
    """The bundles the store must keep once the attempt at `failed` is given up for now."""
    keep = state.referenced_digests()
    installed = {
        version.digest
        for record in state.models.values()
        for version in (record.active, *record.history)
        if version is not None
    }
    return keep if failed in installed else keep - {failed}
