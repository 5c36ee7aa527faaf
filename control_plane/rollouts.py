"""Rollouts: one model version to a target, wave by wave, behind gates, with automatic rollback.

Everything a rollout knows lives in the database (`rollouts`, `rollout_waves`,
`rollout_devices`), so a control plane that restarts picks every running rollout up where it
was. The `RolloutController` advances them: each tick, in one transaction per rollout (locked
with `FOR UPDATE SKIP LOCKED` on PostgreSQL, so replicas never advance the same rollout twice),
it

1. starts the current wave and assigns the version to its pending devices (all at once, or
   `rate_per_minute` of them per minute), by changing their desired state;
2. reads each assigned device's activation outcome from ingested status and events;
3. once every device of the wave is active or failed and the wave has been observed for
   `wait_s` (or the activation timeout has passed, or failures already exceed the gate),
   evaluates the gates (`control_plane.rollout_gates`);
4. moves to the next wave, completes the rollout, or, on a failing gate, pauses it or rolls it
   back: every device of the rollout is pointed at the version it ran before.

After the transaction commits, the devices whose desired state changed get a new signed
assignment (`AssignmentService.reissue`, which also sends them a `sync` command). A crash
between the two is healed by the assignment service's reconciliation at start.

States: running -> completed | paused | aborted | rolled_back; paused -> running (resume);
any state but rolled_back -> rolled_back (an operator's rollback). `promote` assigns every
remaining device at once and completes the rollout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from control_plane import audit
from control_plane.assignments import AssignmentService, desired_digest, set_desired
from control_plane.db.engine import open_session
from control_plane.db.models import (
    BundleRecord,
    Device,
    DeviceGroup,
    DeviceLabel,
    Rollout,
    RolloutDevice,
    RolloutWave,
    utcnow,
)
from control_plane.errors import ControlPlaneError, UnknownModel
from control_plane.fleet_stats import VersionHealth, activation_outcomes, version_health
from control_plane.rollout_gates import Gates, evaluate
from control_plane.rollout_plan import InvalidRollout, Strategy, Target, parse_target, plan_waves

log = logging.getLogger(__name__)

RUNNING, PAUSED, COMPLETED, ABORTED, ROLLED_BACK = (
    "running",
    "paused",
    "completed",
    "aborted",
    "rolled_back",
)
ACTIVE = (RUNNING, PAUSED)
MAX_TARGET_DEVICES = 100_000


class RolloutError(ControlPlaneError):
    """A rollout operation was refused."""


class UnknownRollout(RolloutError):
    """No rollout has that id."""


class RolloutConflict(RolloutError):
    """The change conflicts with the rollout's state or with another active rollout."""


@dataclass
class TickResult:
    """What one pass over the running rollouts changed."""

    reassign: set[str] = field(default_factory=set)  # devices whose desired state changed
    advanced: list[int] = field(default_factory=list)  # rollouts that changed state or wave


async def resolve_target(session: AsyncSession, target: Target) -> list[tuple[str, str]]:
    """The enrolled, not revoked devices a target names, as (device id, backend class)."""
    query = select(Device.id, Device.backend_class).where(Device.revoked_at.is_(None))
    if target.kind == "group":
        members = select(DeviceGroup.device_id).where(DeviceGroup.group == target.group)
        query = query.where(Device.id.in_(members))
    elif target.kind == "label":
        for key, value in target.labels:
            labelled = select(DeviceLabel.device_id).where(
                and_(DeviceLabel.key == key, DeviceLabel.value == value)
            )
            query = query.where(Device.id.in_(labelled))
    elif target.kind == "device":
        query = query.where(Device.id.in_(target.devices))
    rows = (await session.execute(query.order_by(Device.id).limit(MAX_TARGET_DEVICES + 1))).all()
    if len(rows) > MAX_TARGET_DEVICES:
        raise InvalidRollout(f"the target has more than {MAX_TARGET_DEVICES} devices; split it")
    if target.kind == "device":
        missing = sorted(set(target.devices) - {device for device, _ in rows})
        if missing:
            raise InvalidRollout(f"unknown or revoked devices in the target: {', '.join(missing)}")
    return [(device, backend) for device, backend in rows]


async def create_rollout(
    session: AsyncSession,
    *,
    model: str,
    version: int,
    target: str,
    strategy: dict[str, Any] | None,
    gates: dict[str, Any] | None,
    actor: str,
    now: datetime | None = None,
) -> Rollout:
    """Plan and store a running rollout; its first wave starts on the controller's next tick."""
    bundle = await session.scalar(
        select(BundleRecord).where(BundleRecord.name == model, BundleRecord.version == version)
    )
    if bundle is None:
        raise UnknownModel(f"no version {version} of model {model!r}: push it first")
    parsed_target = parse_target(target)
    parsed_strategy = Strategy.parse(strategy)
    parsed_gates = Gates.parse(gates)
    devices = await resolve_target(session, parsed_target)
    if not devices:
        raise InvalidRollout(f"target {parsed_target} matches no enrolled device")
    ids = [device for device, _ in devices]
    busy = await session.execute(
        select(RolloutDevice.rollout_id, RolloutDevice.device_id)
        .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
        .where(Rollout.model == model, Rollout.state.in_(ACTIVE))
        .where(RolloutDevice.device_id.in_(ids))
    )
    clashes = busy.all()
    if clashes:
        rollouts = sorted({str(rollout_id) for rollout_id, _ in clashes})
        raise RolloutConflict(
            f"{len(clashes)} device(s) of this target are in active rollout(s) "
            f"{', '.join(rollouts)} of {model}; finish, abort or roll those back first"
        )
    now = now or utcnow()
    rollout = Rollout(
        model=model,
        version=version,
        digest=bundle.digest,
        target=str(parsed_target),
        strategy=parsed_strategy.as_json(),
        gates=parsed_gates.as_json(),
        state=RUNNING,
        current_wave=0,
        created_by=actor,
        created_at=now,
        updated_at=now,
    )
    session.add(rollout)
    await session.flush()
    waves = plan_waves(devices, parsed_strategy, seed=rollout.id)
    for index, members in enumerate(waves):
        session.add(
            RolloutWave(rollout_id=rollout.id, index=index, size=len(members), state="pending")
        )
        for device in members:
            previous = await desired_digest(session, device, model)
            session.add(
                RolloutDevice(
                    rollout_id=rollout.id,
                    device_id=device,
                    wave=index,
                    previous_digest=previous,
                    state="pending",
                    updated_at=now,
                )
            )
    await session.flush()
    await audit.record(
        session, actor, "rollout.create", f"rollout:{rollout.id}", None, describe(rollout)
    )
    return rollout


def describe(rollout: Rollout) -> dict[str, Any]:
    """The audited summary of a rollout."""
    return {
        "model": rollout.model,
        "version": rollout.version,
        "target": rollout.target,
        "state": rollout.state,
        "current_wave": rollout.current_wave,
        "reason": rollout.reason,
    }


async def get_rollout(session: AsyncSession, rollout_id: int, lock: bool = False) -> Rollout:
    """The rollout, or `UnknownRollout`."""
    query = select(Rollout).where(Rollout.id == rollout_id)
    if lock:
        query = query.with_for_update()
    rollout = await session.scalar(query)
    if rollout is None:
        raise UnknownRollout(f"no rollout {rollout_id}")
    return rollout


async def waves_of(session: AsyncSession, rollout_id: int) -> list[RolloutWave]:
    """The rollout's waves in order."""
    rows = await session.scalars(
        select(RolloutWave).where(RolloutWave.rollout_id == rollout_id).order_by(RolloutWave.index)
    )
    return list(rows)


async def devices_of(
    session: AsyncSession, rollout_id: int, wave: int | None = None
) -> list[RolloutDevice]:
    """The rollout's devices (of one wave), by id."""
    query = select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)
    if wave is not None:
        query = query.where(RolloutDevice.wave == wave)
    return list(await session.scalars(query.order_by(RolloutDevice.device_id)))


async def device_counts(session: AsyncSession, rollout_id: int) -> dict[str, int]:
    """How many of the rollout's devices are in each state (and in total)."""
    rows = await session.execute(
        select(RolloutDevice.state, func.count())
        .where(RolloutDevice.rollout_id == rollout_id)
        .group_by(RolloutDevice.state)
    )
    counts = {state: 0 for state in ("pending", "assigned", "active", "failed", "rolled_back")}
    for state, count in rows.all():
        counts[state] = count
    counts["total"] = sum(counts.values())
    return counts


class RolloutController:
    """Advances running rollouts and carries out operators' actions on them."""

    def __init__(
        self,
        engine: AsyncEngine,
        assignments: AssignmentService,
        tick_s: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.assignments = assignments
        self.tick_s = tick_s
        self.clock = clock
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Tick soon (a rollout was created or changed)."""
        self._wake.set()

    async def run(self) -> None:
        """Tick every `tick_s` or when woken, until cancelled; a failed tick is logged."""
        while True:
            self._wake.clear()
            try:
                await self.tick()
            except ControlPlaneError as error:
                log.warning("rollout tick failed, retrying in %.0f s: %s", self.tick_s, error)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.tick_s)

    async def tick(self) -> TickResult:
        """One pass over every running rollout; reissues the assignments that changed."""
        result = TickResult()
        async with open_session(self.engine) as session:
            ids = list(await session.scalars(select(Rollout.id).where(Rollout.state == RUNNING)))
        for rollout_id in ids:
            async with open_session(self.engine) as session:
                rollout = await session.scalar(
                    select(Rollout)
                    .where(Rollout.id == rollout_id, Rollout.state == RUNNING)
                    .with_for_update(skip_locked=True)
                )
                if rollout is None:
                    continue  # finished meanwhile, or another replica holds it
                before = (rollout.state, rollout.current_wave)
                changed = await self._advance(session, rollout)
                if (rollout.state, rollout.current_wave) != before:
                    rollout.updated_at = self.clock()
                    result.advanced.append(rollout_id)
            await self._reissue(changed)
            result.reassign.update(changed)
        return result

    async def _reissue(self, devices: Iterable[str]) -> None:
        devices = sorted(set(devices))
        if devices:
            await self.assignments.reissue(devices)

    async def _advance(self, session: AsyncSession, rollout: Rollout) -> set[str]:
        now = self.clock()
        strategy = Strategy.parse(rollout.strategy)
        gates = Gates.parse(rollout.gates)
        waves = await waves_of(session, rollout.id)
        if rollout.current_wave >= len(waves):
            rollout.state = COMPLETED
            return set()
        wave = waves[rollout.current_wave]
        if wave.state == "pending":
            wave.state = "running"
            wave.started_at = now
            rollout.wave_started_at = now
        assert wave.started_at is not None
        members = await devices_of(session, rollout.id, wave.index)
        changed = await self._assign_pending(session, rollout, strategy, wave.started_at, members)
        if any(m.state == "pending" for m in members):
            return changed  # paced: more of this wave next minute
        assigned_at = max(m.assigned_at or wave.started_at for m in members)
        outcomes = await activation_outcomes(
            session, [m.device_id for m in members], rollout.model, rollout.version, wave.started_at
        )
        for member in members:
            outcome = outcomes.get(member.device_id, "pending")
            if outcome in ("active", "failed") and member.state != outcome:
                member.state = outcome
                member.updated_at = now
        settled = all(outcomes.get(m.device_id) in ("active", "failed") for m in members)
        observed = now - assigned_at >= timedelta(seconds=strategy.wait_s)
        timed_out = now - assigned_at >= timedelta(seconds=strategy.activation_timeout_s)
        failed = sum(1 for m in members if outcomes.get(m.device_id) == "failed")
        hopeless = 100.0 * failed / len(members) > gates.max_failure_pct
        if not hopeless and not timed_out and not (settled and observed):
            return changed
        if timed_out:
            outcomes = {d: "timed_out" if o == "pending" else o for d, o in outcomes.items()}
        verdicts = await self._judge(session, rollout, gates, wave.started_at, members, outcomes)
        passed = all(v["passed"] for v in verdicts)
        wave.gate_results = {"passed": passed, "evaluated_at": now.isoformat(), "gates": verdicts}
        wave.finished_at = now
        if passed:
            wave.state = "passed"
            rollout.current_wave += 1
            if rollout.current_wave >= len(waves):
                rollout.state = COMPLETED
                rollout.reason = None
                log.info(
                    "rollout %d of %s v%d completed", rollout.id, rollout.model, rollout.version
                )
                return changed
            return changed | await self._advance(session, rollout)  # start the next wave now
        wave.state = "failed"
        failing = "; ".join(f"{v['gate']}: {v['detail']}" for v in verdicts if not v["passed"])
        reason = f"wave {wave.index} failed its gates ({failing})"
        log.warning("rollout %d of %s v%d: %s", rollout.id, rollout.model, rollout.version, reason)
        if gates.on_failure == "pause":
            rollout.state = PAUSED
            rollout.reason = reason
            return changed
        return changed | await roll_back(session, rollout, f"automatic rollback: {reason}", now)

    async def _assign_pending(
        self,
        session: AsyncSession,
        rollout: Rollout,
        strategy: Strategy,
        started: datetime,
        members: Sequence[RolloutDevice],
    ) -> set[str]:
        pending = [m for m in members if m.state == "pending"]
        if not pending:
            return set()
        budget = len(pending)
        if strategy.rate_per_minute is not None:
            minutes = max(0.0, (self.clock() - started).total_seconds() / 60)
            allowed = strategy.rate_per_minute * (1 + math.floor(minutes))
            budget = max(0, min(budget, allowed - (len(members) - len(pending))))
        chosen = pending[:budget]
        if not chosen:
            return set()
        now = self.clock()
        ids = [m.device_id for m in chosen]
        changed = await set_desired(
            session, ids, rollout.model, rollout.digest, f"rollout:{rollout.id}"
        )
        for member in chosen:
            member.state = "assigned"
            member.assigned_at = member.updated_at = now
        return set(changed)

    async def _judge(
        self,
        session: AsyncSession,
        rollout: Rollout,
        gates: Gates,
        since: datetime,
        members: Sequence[RolloutDevice],
        outcomes: dict[str, str],
    ) -> list[dict[str, Any]]:
        ids = [m.device_id for m in members]
        new = await version_health(session, ids, rollout.model, rollout.version, since)
        baseline = await self._baseline(session, rollout, gates, members)
        judged = {d: outcomes.get(d, "pending") for d in ids}
        return [result.as_json() for result in evaluate(gates, judged, new, baseline)]

    async def _baseline(
        self,
        session: AsyncSession,
        rollout: Rollout,
        gates: Gates,
        members: Sequence[RolloutDevice],
    ) -> VersionHealth | None:
        """The previous version's figures on the same devices, before the rollout started."""
        previous = Counter(m.previous_digest for m in members if m.previous_digest)
        if not previous:
            return None
        digest, _ = previous.most_common(1)[0]
        version = await session.scalar(
            select(BundleRecord.version).where(BundleRecord.digest == digest)
        )
        if version is None or version == rollout.version:
            return None
        ids = [m.device_id for m in members if m.previous_digest == digest]
        start = rollout.created_at - timedelta(seconds=gates.baseline_window_s)
        return await version_health(session, ids, rollout.model, version, start, rollout.created_at)

    async def act(self, rollout_id: int, action: str, actor: str) -> Rollout:
        """An operator's pause, resume, promote, abort or rollback, audited."""
        if action not in ACTIONS:
            raise InvalidRollout(f"unknown action {action!r}: use {', '.join(ACTIONS)}")
        async with open_session(self.engine) as session:
            rollout = await get_rollout(session, rollout_id, lock=True)
            before = describe(rollout)
            changed = await ACTIONS[action](self, session, rollout, actor)
            rollout.updated_at = self.clock()
            await audit.record(
                session,
                actor,
                f"rollout.{action}",
                f"rollout:{rollout.id}",
                before,
                describe(rollout),
            )
        await self._reissue(changed)
        self.wake()
        return rollout

    async def _pause(self, session: AsyncSession, rollout: Rollout, actor: str) -> set[str]:
        _require(rollout, (RUNNING,), "pause")
        rollout.state = PAUSED
        rollout.reason = f"paused by {actor}"
        return set()

    async def _resume(self, session: AsyncSession, rollout: Rollout, actor: str) -> set[str]:
        _require(rollout, (PAUSED,), "resume")
        rollout.state = RUNNING
        rollout.reason = None
        waves = await waves_of(session, rollout.id)
        if rollout.current_wave < len(waves) and waves[rollout.current_wave].state == "failed":
            # Resuming after a failed gate is the operator's override: go on with the next wave.
            rollout.current_wave += 1
        return set()

    async def _promote(self, session: AsyncSession, rollout: Rollout, actor: str) -> set[str]:
        _require(rollout, ACTIVE, "promote")
        now = self.clock()
        pending = [m for m in await devices_of(session, rollout.id) if m.state == "pending"]
        changed = await set_desired(
            session,
            [m.device_id for m in pending],
            rollout.model,
            rollout.digest,
            f"rollout:{rollout.id}",
        )
        for member in pending:
            member.state = "assigned"
            member.assigned_at = member.updated_at = now
        for wave in await waves_of(session, rollout.id):
            if wave.state in ("pending", "running"):
                wave.state = "promoted"
                wave.started_at = wave.started_at or now
                wave.finished_at = now
        rollout.state = COMPLETED
        rollout.current_wave = len(await waves_of(session, rollout.id))
        rollout.reason = f"promoted by {actor}"
        return set(changed)

    async def _abort(self, session: AsyncSession, rollout: Rollout, actor: str) -> set[str]:
        _require(rollout, ACTIVE, "abort")
        rollout.state = ABORTED
        rollout.reason = f"aborted by {actor}; devices keep what they were assigned"
        return set()

    async def _rollback(self, session: AsyncSession, rollout: Rollout, actor: str) -> set[str]:
        if rollout.state == ROLLED_BACK:
            raise RolloutConflict(f"rollout {rollout.id} is already rolled back")
        return await roll_back(session, rollout, f"rolled back by {actor}", self.clock())


ACTIONS: dict[str, Callable[[RolloutController, AsyncSession, Rollout, str], Any]] = {
    "pause": RolloutController._pause,
    "resume": RolloutController._resume,
    "promote": RolloutController._promote,
    "abort": RolloutController._abort,
    "rollback": RolloutController._rollback,
}


def _require(rollout: Rollout, states: Sequence[str], action: str) -> None:
    if rollout.state not in states:
        raise RolloutConflict(
            f"cannot {action} rollout {rollout.id}: it is {rollout.state.replace('_', ' ')}"
        )


async def roll_back(
    session: AsyncSession, rollout: Rollout, reason: str, now: datetime
) -> set[str]:
    """Point every device that got this rollout's version back at what it ran before.

    A device whose desired state has moved on since (another rollout, an operator) is left
    alone: the rollback only undoes this rollout's own change.
    """
    changed: set[str] = set()
    by_previous: dict[str | None, list[RolloutDevice]] = {}
    for member in await devices_of(session, rollout.id):
        if member.state in ("assigned", "active", "failed"):
            by_previous.setdefault(member.previous_digest, []).append(member)
    for previous, members in by_previous.items():
        ours = [
            m
            for m in members
            if await desired_digest(session, m.device_id, rollout.model) == rollout.digest
        ]
        ids = [m.device_id for m in ours]
        changed.update(
            await set_desired(session, ids, rollout.model, previous, f"rollback:{rollout.id}")
        )
        for member in members:
            member.state = "rolled_back"
            member.updated_at = now
    rollout.state = ROLLED_BACK
    rollout.reason = reason
    return changed
