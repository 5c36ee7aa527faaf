"""Rollouts: the list, the new-rollout form, one rollout watched live, and operators' actions.

A rollout's page shows each wave with its gate results against the thresholds; while a wave
runs, the failure and error-rate gates are also shown as they stand so far (the same
`control_plane.rollout_gates.evaluate` the controller judges with, on the figures so far). The
buttons offered are the actions the rollout's state allows (`control_plane.rollouts.ALLOWED`),
and only to operators; each asks for confirmation, and the server checks role and state again.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from aiohttp import web
from sqlalchemy import Row, select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.api.auth import actor, caller
from control_plane.api.middleware import status_for
from control_plane.api.rollouts import rollout_controller, rollout_json
from control_plane.api.state import ENGINE
from control_plane.dashboard.access import Page
from control_plane.dashboard.live import Topic
from control_plane.dashboard.render import live_part, redirect, render
from control_plane.dashboard.state import LIVE
from control_plane.dashboard.views import rollout_form
from control_plane.db.engine import open_session
from control_plane.db.models import BundleRecord, Device, Rollout, RolloutDevice
from control_plane.errors import ControlPlaneError
from control_plane.fleet_stats import version_health
from control_plane.rollout_controller import ACTIONS
from control_plane.rollout_gates import Gates, evaluate
from control_plane.rollouts import (
    ACTIVE,
    ALLOWED,
    RolloutState,
    UnknownRollout,
    create_rollout,
    get_rollout,
)

PAGE_SIZE = 25
WAVE_DEVICES_SHOWN = 50  # of the wave on screen; the device list has them all
# What each action makes of the rollout: an action is offered when its state may follow.
ACTION_RESULT = {
    "pause": RolloutState.PAUSED,
    "resume": RolloutState.RUNNING,
    "promote": RolloutState.COMPLETED,
    "abort": RolloutState.ABORTED,
    "rollback": RolloutState.ROLLED_BACK,
}
ACTION_TEXT = {  # (button, what it does: the confirmation asks this)
    "pause": ("Pause", "Stop at the current wave; devices keep what they have."),
    "resume": ("Resume", "Continue from the current wave."),
    "promote": ("Promote", "Assign the version to every remaining device now and complete."),
    "abort": ("Abort", "Stop the rollout; devices keep what they were assigned."),
    "rollback": ("Roll back", "Point every device of this rollout back at its previous version."),
}


def available_actions(state: str) -> list[str]:
    """The actions the rollout's state allows, in the order they are offered."""
    allowed = ALLOWED.get(RolloutState(state), frozenset())
    return [action for action in ACTIONS if ACTION_RESULT[action] in allowed]


async def rollouts_in(
    session: AsyncSession, states: tuple[str, ...], limit: int, before: int | None = None
) -> list[dict[str, Any]]:
    """Rollouts in any of `states` (all when empty), newest first, as the API shows them."""
    query = select(Rollout).order_by(Rollout.id.desc()).limit(limit)
    if states:
        query = query.where(Rollout.state.in_(states))
    if before is not None:
        query = query.where(Rollout.id < before)
    return [await rollout_json(session, r, False) for r in await session.scalars(query)]


async def active_rollouts(session: AsyncSession) -> list[dict[str, Any]]:
    """Running and paused rollouts with their progress."""
    return await rollouts_in(session, tuple(ACTIVE), 50)


async def load_rollout(session: AsyncSession, argument: str) -> dict[str, Any]:
    """One rollout, its shown wave's devices (with what they report) and the gates so far."""
    rollout = await get_rollout(session, int(argument) if argument.isdigit() else -1)
    body = await rollout_json(session, rollout, False)
    waves = body["waves"]
    shown = min(rollout.current_wave, len(waves) - 1) if waves else 0
    # Every device of the wave counts in its gates; the first few are listed.
    members = (
        await session.execute(
            select(RolloutDevice.device_id, RolloutDevice.state, RolloutDevice.assigned_at)
            .where(RolloutDevice.rollout_id == rollout.id, RolloutDevice.wave == shown)
            .order_by(RolloutDevice.device_id)
        )
    ).all()
    listed = members[:WAVE_DEVICES_SHOWN]
    reported = await _reported_versions(session, rollout.model, [m.device_id for m in listed])
    interim = None
    if waves and rollout.state in ACTIVE and waves[shown]["state"] == "running":
        interim = await _gates_so_far(session, rollout, members)
    return {
        "rollout": body,
        "shown_wave": shown,
        "members": listed,
        "reported": reported,
        "interim": interim,
        "actions": available_actions(rollout.state),
        "action_text": ACTION_TEXT,
    }


async def _reported_versions(
    session: AsyncSession, model: str, ids: list[str]
) -> dict[str, int | None]:
    found: dict[str, int | None] = dict.fromkeys(ids)
    if ids:
        for device_id, models in await session.execute(
            select(Device.id, Device.models).where(Device.id.in_(ids))
        ):
            for entry in models or []:
                if isinstance(entry, dict) and entry.get("model") == model:
                    found[device_id] = entry.get("version")
    return found


async def _gates_so_far(
    session: AsyncSession, rollout: Rollout, members: Sequence[Row[str, str, datetime | None]]
) -> dict[str, Any]:
    """The failure and error-rate gates on the figures so far (latency is judged at the end)."""
    since = rollout.wave_started_at or rollout.created_at
    ids = [m.device_id for m in members]
    health = await version_health(session, ids, rollout.model, rollout.version, since)
    outcomes = {m.device_id: m.state for m in members}
    results = evaluate(Gates.parse(rollout.gates), outcomes, health, None)
    return {
        "gates": [r.as_json() for r in results if r.gate != "p95_ratio"],
        "requests": health.requests,
        "p95_s": health.latency_quantile(0.95),
    }


ROLLOUT_TOPIC = Topic("rollout", "rollouts/_live.html", load_rollout, argument=True)


async def rollout_list(request: web.Request) -> web.Response:
    """Rollouts, newest first, filtered by state, 25 a page."""
    state = request.query.get("state", "")
    states = (state,) if state in {s.value for s in RolloutState} else ()
    raw_before = request.query.get("before", "")
    before = int(raw_before) if raw_before.isdigit() else None
    async with open_session(request.app[ENGINE]) as session:
        rows = await rollouts_in(session, states, PAGE_SIZE, before)
    return render(
        request,
        "rollouts/list.html",
        {
            "rollouts": rows,
            "state": state if states else "",
            "states": [s.value for s in RolloutState],
            "next_before": rows[-1]["id"] if len(rows) == PAGE_SIZE else None,
        },
    )


async def _form_page(
    request: web.Request, values: dict[str, str], error: str = "", status: int = 200
) -> web.Response:
    async with open_session(request.app[ENGINE]) as session:
        releases = (
            await session.execute(
                select(BundleRecord.name, BundleRecord.version).order_by(
                    BundleRecord.name, BundleRecord.version.desc()
                )
            )
        ).all()
    return render(
        request,
        "rollouts/new.html",
        {
            "values": values,
            "fields": rollout_form.FIELDS,
            "releases": [f"{name}:{version}" for name, version in releases],
            "error": error,
        },
        status,
    )


async def new_rollout(request: web.Request) -> web.Response:
    """The form that starts a rollout (a version can be preselected with `?release=m:v`)."""
    values = rollout_form.defaults()
    values["release"] = request.query.get("release", "")[: rollout_form.MAX_FIELD_CHARS]
    return await _form_page(request, values)


async def create(request: web.Request) -> web.Response:
    """Start the rollout the form describes and go to its page; errors show the form again."""
    values = rollout_form.field_values(await request.post())
    try:
        asked = rollout_form.parse(values)
        controller = rollout_controller(request)
        async with open_session(request.app[ENGINE]) as session:
            rollout = await create_rollout(
                session,
                model=asked.model,
                version=asked.version,
                target=asked.target,
                strategy=asked.strategy,
                gates=asked.gates,
                actor=actor(caller(request)),
            )
            rollout_id = rollout.id
    except ControlPlaneError as error:
        return await _form_page(request, values, str(error), status_for(error))
    await controller.tick()  # assign the first wave now, as the API does
    return redirect(request, f"/rollouts/{rollout_id}", f"Rollout {rollout_id} started.")


async def rollout_page(request: web.Request) -> web.Response:
    """One rollout, updated live."""
    key = f"rollout:{request.match_info['id']}"
    async with open_session(request.app[ENGINE]) as session:
        context = await load_rollout(session, request.match_info["id"])
    part = live_part(request, ROLLOUT_TOPIC, key, context)
    return render(request, "rollouts/detail.html", {**context, "live": part})


async def act(request: web.Request) -> web.Response:
    """Pause, resume, promote, abort or roll back, as confirmed on the rollout's page."""
    raw_id, action = request.match_info["id"], request.match_info["action"]
    if action not in ACTIONS or not raw_id.isdigit():
        raise UnknownRollout(f"no action {action!r} on rollout {raw_id!r}")
    await rollout_controller(request).act(int(raw_id), action, actor(caller(request)))
    request.app[LIVE].wake()
    label = ACTION_TEXT[action][0].lower()
    return redirect(request, f"/rollouts/{raw_id}", f"Rollout {raw_id}: {label} done.")


PAGES = (
    Page("GET", "/rollouts", rollout_list),
    Page("GET", "/rollouts/new", new_rollout, api="POST /api/v1/rollouts"),
    Page("POST", "/rollouts", create, api="POST /api/v1/rollouts"),
    Page("GET", r"/rollouts/{id:\d+}", rollout_page),
    Page("POST", r"/rollouts/{id:\d+}/{action}", act, api="POST /api/v1/rollouts/{id}/{action}"),
)
