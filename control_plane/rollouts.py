"""Rollouts: one model version to a target, wave by wave, behind gates, with automatic rollback.

This module holds what a rollout is: its states and their transitions, its rows
(`rollouts`, `rollout_waves`, `rollout_devices`), creating one, reading it, and rolling it
back. `control_plane.rollout_controller` advances running rollouts and carries out operators'
actions; `rollout_plan` decides the waves and `rollout_gates` judges them.

Everything a rollout knows lives in the database, so a control plane that restarts picks every
running rollout up where it was.

    RUNNING -> COMPLETED | PAUSED | ABORTED | ROLLED_BACK
    PAUSED  -> RUNNING | COMPLETED (promote) | ABORTED | ROLLED_BACK
    COMPLETED, ABORTED -> ROLLED_BACK (an operator's rollback)

A device of a rollout goes PENDING -> ASSIGNED -> ACTIVE or FAILED, and ASSIGNED, ACTIVE or
FAILED -> ROLLED_BACK.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane import audit
from control_plane.assignments import desired_digest, set_desired
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
from control_plane.rollout_gates import Gates
from control_plane.rollout_plan import InvalidRollout, Strategy, Target, parse_target, plan_waves

MAX_TARGET_DEVICES = 100_000


class RolloutState(enum.StrEnum):
    """Where a rollout stands (stored as its value)."""

    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    ABORTED = "aborted"
    ROLLED_BACK = "rolled_back"


S = RolloutState
ALLOWED: dict[RolloutState, frozenset[RolloutState]] = {
    S.RUNNING: frozenset({S.COMPLETED, S.PAUSED, S.ABORTED, S.ROLLED_BACK}),
    S.PAUSED: frozenset({S.RUNNING, S.COMPLETED, S.ABORTED, S.ROLLED_BACK}),
    S.COMPLETED: frozenset({S.ROLLED_BACK}),
    S.ABORTED: frozenset({S.ROLLED_BACK}),
    S.ROLLED_BACK: frozenset(),
}
ACTIVE = (S.RUNNING, S.PAUSED)


class MemberState(enum.StrEnum):
    """How far one device of a rollout got."""

    PENDING = "pending"
    ASSIGNED = "assigned"
    ACTIVE = "active"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"


class WaveState(enum.StrEnum):
    """Where one wave stands: PENDING -> RUNNING -> PASSED, FAILED or PROMOTED."""

    PENDING = "pending"
    RUNNING = "running"
    PASSED = "passed"
    FAILED = "failed"
    PROMOTED = "promoted"  # an operator promoted the rollout before its gates ran


class RolloutError(ControlPlaneError):
    """A rollout operation was refused."""


class UnknownRollout(RolloutError):
    """No rollout has that id."""


class RolloutConflict(RolloutError):
    """The change conflicts with the rollout's state or with another active rollout."""


def move(rollout: Rollout, state: RolloutState, reason: str | None) -> None:
    """Change a rollout's state along an allowed transition; `RolloutConflict` otherwise."""
    current = RolloutState(rollout.state)
    if state not in ALLOWED[current]:
        raise RolloutConflict(
            f"rollout {rollout.id} is {current.value.replace('_', ' ')}: "
            f"it cannot become {state.value.replace('_', ' ')}"
        )
    rollout.state = state
    rollout.reason = reason


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
        state=RolloutState.RUNNING,
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
            RolloutWave(
                rollout_id=rollout.id, index=index, size=len(members), state=WaveState.PENDING
            )
        )
        for device in members:
            previous = await desired_digest(session, device, model)
            session.add(
                RolloutDevice(
                    rollout_id=rollout.id,
                    device_id=device,
                    wave=index,
                    previous_digest=previous,
                    state=MemberState.PENDING,
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
    counts: dict[str, int] = {state.value: 0 for state in MemberState}
    for state, count in rows.all():
        counts[state] = count
    counts["total"] = sum(counts.values())
    return counts


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
        if member.state in (MemberState.ASSIGNED, MemberState.ACTIVE, MemberState.FAILED):
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
            member.state = MemberState.ROLLED_BACK
            member.updated_at = now
    move(rollout, RolloutState.ROLLED_BACK, reason)
    return changed
