"""Advancing running rollouts, and operators' actions on them.

The `RolloutController` ticks every `rollout_tick_s` (or at once when woken). For each running
rollout, in one transaction locked with `FOR UPDATE SKIP LOCKED` on PostgreSQL (so replicas
never advance the same rollout twice), it

1. starts the current wave and assigns the version to its pending devices (all at once, or
   `rate_per_minute` of them per minute), by changing their desired state;
2. reads each assigned device's activation outcome from ingested status and events;
3. once every device of the wave is active or failed and the wave has been observed for
   `wait_s` (or the activation timeout has passed, or failures already exceed the gate),
   evaluates the gates (`control_plane.rollout_gates`);
4. moves to the next wave (in the same tick), completes the rollout, or, on a failing gate,
   pauses it or rolls it back: every device of the rollout is pointed at the version it ran
   before.

After the transaction commits, the devices whose desired state changed get a new signed
assignment (`AssignmentService.reissue`, which also sends them a `sync` command). A crash
between the two is healed by the assignment service's reconciliation at start.
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

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from control_plane import audit
from control_plane.assignments import AssignmentService, set_desired
from control_plane.db.engine import open_session
from control_plane.db.models import BundleRecord, Rollout, RolloutDevice, utcnow
from control_plane.errors import ControlPlaneError
from control_plane.fleet_stats import ACTIVE as ACTIVE_OUTCOME
from control_plane.fleet_stats import (
    FAILED,
    PENDING,
    VersionHealth,
    activation_outcomes,
    version_health,
)
from control_plane.rollout_gates import TIMED_OUT, Gates, evaluate
from control_plane.rollout_plan import InvalidRollout, Strategy
from control_plane.rollouts import (
    ACTIVE,
    MemberState,
    RolloutConflict,
    RolloutState,
    WaveState,
    describe,
    devices_of,
    get_rollout,
    move,
    roll_back,
    waves_of,
)

log = logging.getLogger(__name__)


@dataclass
class TickResult:
    """What one pass over the running rollouts changed."""

    reassign: set[str] = field(default_factory=set)  # devices whose desired state changed
    advanced: list[int] = field(default_factory=list)  # rollouts that changed state or wave


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
            ids = list(
                await session.scalars(
                    select(Rollout.id).where(Rollout.state == RolloutState.RUNNING)
                )
            )
        for rollout_id in ids:
            async with open_session(self.engine) as session:
                rollout = await session.scalar(
                    select(Rollout)
                    .where(Rollout.id == rollout_id, Rollout.state == RolloutState.RUNNING)
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
            move(rollout, RolloutState.COMPLETED, None)
            return set()
        wave = waves[rollout.current_wave]
        if wave.state == WaveState.PENDING:
            wave.state = WaveState.RUNNING
            wave.started_at = now
            rollout.wave_started_at = now
        assert wave.started_at is not None
        members = await devices_of(session, rollout.id, wave.index)
        changed = await self._assign_pending(session, rollout, strategy, wave.started_at, members)
        if any(m.state == MemberState.PENDING for m in members):
            return changed  # paced: more of this wave next minute
        assigned_at = max(m.assigned_at or wave.started_at for m in members)
        timed_out = now - assigned_at >= timedelta(seconds=strategy.activation_timeout_s)
        outcomes = await activation_outcomes(
            session,
            [m.device_id for m in members],
            rollout.model,
            rollout.version,
            wave.started_at,
            timed_out=timed_out,  # then a device serving the version counts, events lost or not
        )
        for member in members:
            outcome = outcomes.get(member.device_id, PENDING)
            if outcome in (ACTIVE_OUTCOME, FAILED) and member.state != outcome:
                member.state = outcome
                member.updated_at = now
        settled = all(outcomes.get(m.device_id) in (ACTIVE_OUTCOME, FAILED) for m in members)
        observed = now - assigned_at >= timedelta(seconds=strategy.wait_s)
        failed = sum(1 for m in members if outcomes.get(m.device_id) == FAILED)
        hopeless = 100.0 * failed / len(members) > gates.max_failure_pct
        if not hopeless and not timed_out and not (settled and observed):
            return changed
        if timed_out:
            outcomes = {d: TIMED_OUT if o == PENDING else o for d, o in outcomes.items()}
        verdicts = await self._judge(session, rollout, gates, wave.started_at, members, outcomes)
        passed = all(v["passed"] for v in verdicts)
        wave.gate_results = {"passed": passed, "evaluated_at": now.isoformat(), "gates": verdicts}
        wave.finished_at = now
        if passed:
            wave.state = WaveState.PASSED
            rollout.current_wave += 1
            if rollout.current_wave >= len(waves):
                move(rollout, RolloutState.COMPLETED, None)
                log.info(
                    "rollout %d of %s v%d completed", rollout.id, rollout.model, rollout.version
                )
                return changed
            return changed | await self._advance(session, rollout)  # start the next wave now
        wave.state = WaveState.FAILED
        failing = "; ".join(f"{v['gate']}: {v['detail']}" for v in verdicts if not v["passed"])
        reason = f"wave {wave.index} failed its gates ({failing})"
        log.warning("rollout %d of %s v%d: %s", rollout.id, rollout.model, rollout.version, reason)
        if gates.on_failure == "pause":
            move(rollout, RolloutState.PAUSED, reason)
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
        pending = [m for m in members if m.state == MemberState.PENDING]
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
            member.state = MemberState.ASSIGNED
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
        judged = {d: outcomes.get(d, PENDING) for d in ids}
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
        _require(rollout, (RolloutState.RUNNING,), "pause")
        move(rollout, RolloutState.PAUSED, f"paused by {actor}")
        return set()

    async def _resume(self, session: AsyncSession, rollout: Rollout, actor: str) -> set[str]:
        _require(rollout, (RolloutState.PAUSED,), "resume")
        move(rollout, RolloutState.RUNNING, None)
        waves = await waves_of(session, rollout.id)
        if (
            rollout.current_wave < len(waves)
            and waves[rollout.current_wave].state == WaveState.FAILED
        ):
            # Resuming after a failed gate is the operator's override: go on with the next wave.
            rollout.current_wave += 1
        return set()

    async def _promote(self, session: AsyncSession, rollout: Rollout, actor: str) -> set[str]:
        _require(rollout, ACTIVE, "promote")
        now = self.clock()
        pending = [
            m for m in await devices_of(session, rollout.id) if m.state == MemberState.PENDING
        ]
        changed = await set_desired(
            session,
            [m.device_id for m in pending],
            rollout.model,
            rollout.digest,
            f"rollout:{rollout.id}",
        )
        for member in pending:
            member.state = MemberState.ASSIGNED
            member.assigned_at = member.updated_at = now
        for wave in await waves_of(session, rollout.id):
            if wave.state in (WaveState.PENDING, WaveState.RUNNING):
                wave.state = WaveState.PROMOTED
                wave.started_at = wave.started_at or now
                wave.finished_at = now
        move(rollout, RolloutState.COMPLETED, f"promoted by {actor}")
        rollout.current_wave = len(await waves_of(session, rollout.id))
        return set(changed)

    async def _abort(self, session: AsyncSession, rollout: Rollout, actor: str) -> set[str]:
        _require(rollout, ACTIVE, "abort")
        move(rollout, RolloutState.ABORTED, f"aborted by {actor}; devices keep what they have")
        return set()

    async def _rollback(self, session: AsyncSession, rollout: Rollout, actor: str) -> set[str]:
        if rollout.state == RolloutState.ROLLED_BACK:
            raise RolloutConflict(f"rollout {rollout.id} is already rolled back")
        return await roll_back(session, rollout, f"rolled back by {actor}", self.clock())


ACTIONS: dict[str, Callable[[RolloutController, AsyncSession, Rollout, str], Any]] = {
    "pause": RolloutController._pause,
    "resume": RolloutController._resume,
    "promote": RolloutController._promote,
    "abort": RolloutController._abort,
    "rollback": RolloutController._rollback,
}


def _require(rollout: Rollout, states: Sequence[RolloutState], action: str) -> None:
    if rollout.state not in states:
        raise RolloutConflict(
            f"cannot {action} rollout {rollout.id}: it is {rollout.state.replace('_', ' ')}"
        )
