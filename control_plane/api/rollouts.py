"""`/api/v1/rollouts`: start rollouts, watch them, pause, resume, promote, abort, roll back."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.api.auth import actor, caller
from control_plane.api.errors import InvalidRequest
from control_plane.api.routes import PREFIX, Endpoint, iso_time, json_object, parse_int
from control_plane.api.state import ENGINE, ROLLOUTS
from control_plane.db.engine import open_session
from control_plane.db.models import Rollout, fits_integer
from control_plane.errors import KeysNotConfigured
from control_plane.roles import Role
from control_plane.rollout_controller import ACTIONS, RolloutController
from control_plane.rollouts import (
    RolloutState,
    create_rollout,
    device_counts,
    devices_of,
    get_rollout,
    waves_of,
)

STATES = tuple(state.value for state in RolloutState)
MAX_LIST = 500


def rollout_controller(request: web.Request) -> RolloutController:
    """The controller, or a clear 503 when the control plane cannot sign assignments."""
    controller = request.app.get(ROLLOUTS)
    if controller is None:
        raise KeysNotConfigured(
            "rollouts need assignments: start the control plane with --keys pointing at a key "
            "directory that holds assignment.key"
        )
    return controller


async def rollout_json(
    session: AsyncSession, rollout: Rollout, with_devices: bool
) -> dict[str, Any]:
    """A rollout with its waves, its device counts and (on request) each device's state."""
    waves = await waves_of(session, rollout.id)
    body: dict[str, Any] = {
        "id": rollout.id,
        "model": rollout.model,
        "version": rollout.version,
        "digest": rollout.digest,
        "target": rollout.target,
        "strategy": rollout.strategy,
        "gates": rollout.gates,
        "state": rollout.state,
        "reason": rollout.reason,
        "current_wave": rollout.current_wave,
        "created_at": iso_time(rollout.created_at),
        "created_by": rollout.created_by,
        "updated_at": iso_time(rollout.updated_at),
        "waves": [
            {
                "index": wave.index,
                "size": wave.size,
                "state": wave.state,
                "started_at": iso_time(wave.started_at),
                "finished_at": iso_time(wave.finished_at),
                "gate_results": wave.gate_results,
            }
            for wave in waves
        ],
        "devices": await device_counts(session, rollout.id),
    }
    if with_devices:
        body["device_states"] = [
            {
                "device_id": member.device_id,
                "wave": member.wave,
                "state": member.state,
                "previous_digest": member.previous_digest,
                "assigned_at": iso_time(member.assigned_at),
            }
            for member in await devices_of(session, rollout.id)
        ]
    return body


async def create(request: web.Request) -> web.Response:
    """Plan a rollout and start it; the first wave is assigned at once."""
    body = await json_object(request)
    model, version, target = body.get("model"), body.get("version"), body.get("target")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("model is required: the model's name")
    if isinstance(version, bool) or not isinstance(version, int) or not fits_integer(version):
        raise InvalidRequest("version is required: an integer (a stored model version)")
    if not isinstance(target, str) or not target:
        raise InvalidRequest("target is required: group:G, label:k=v, device:ID[,ID] or all")
    for key in ("strategy", "gates"):
        if body.get(key) is not None and not isinstance(body[key], dict):
            raise InvalidRequest(f"{key} must be a JSON object")
    unknown = set(body) - {"model", "version", "target", "strategy", "gates"}
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    controller = rollout_controller(request)
    async with open_session(request.app[ENGINE]) as session:
        rollout = await create_rollout(
            session,
            model=model,
            version=version,
            target=target,
            strategy=body.get("strategy"),
            gates=body.get("gates"),
            actor=actor(caller(request)),
        )
        rollout_id = rollout.id
    await controller.tick()  # start the first wave now rather than at the next tick
    async with open_session(request.app[ENGINE]) as session:
        answer = await rollout_json(session, await get_rollout(session, rollout_id), False)
    return web.json_response(answer, status=201)


async def list_rollouts(request: web.Request) -> web.Response:
    """Rollouts, newest first; `?state=` and `?model=` filter, `?limit=` caps."""
    query = select(Rollout).order_by(Rollout.id.desc())
    state = request.query.get("state")
    if state is not None:
        if state not in STATES:
            raise InvalidRequest(f"state must be one of {', '.join(STATES)}")
        query = query.where(Rollout.state == state)
    if "model" in request.query:
        query = query.where(Rollout.model == request.query["model"])
    limit = parse_int(request.query.get("limit", "100"), "limit")
    if not 1 <= limit <= MAX_LIST:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIST}")
    async with open_session(request.app[ENGINE]) as session:
        rows = list(await session.scalars(query.limit(limit)))
        items = [await rollout_json(session, rollout, False) for rollout in rows]
    return web.json_response({"rollouts": items})


async def show(request: web.Request) -> web.Response:
    """One rollout with its waves, gate results and every device's state."""
    rollout_id = parse_int(request.match_info["id"], "rollout id")
    async with open_session(request.app[ENGINE]) as session:
        rollout = await get_rollout(session, rollout_id)
        answer = await rollout_json(session, rollout, True)
    return web.json_response(answer)


async def act(request: web.Request) -> web.Response:
    """pause, resume, promote, abort or rollback."""
    rollout_id = parse_int(request.match_info["id"], "rollout id")
    action = request.match_info["action"]
    if action not in ACTIONS:
        raise InvalidRequest(f"unknown action {action!r}: use {', '.join(ACTIONS)}")
    await rollout_controller(request).act(rollout_id, action, actor(caller(request)))
    async with open_session(request.app[ENGINE]) as session:
        answer = await rollout_json(session, await get_rollout(session, rollout_id), False)
    return web.json_response(answer)


_ID = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer"}}
_ACTION = {
    "name": "action",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "enum": list(ACTIONS)},
}
_STEP = {
    "oneOf": [
        {"type": "string", "pattern": r"^\d+(\.\d+)?%$|^\d+$"},
        {"type": "integer", "minimum": 1},
        {"type": "object", "properties": {"percent": {"type": "number"}}},
        {"type": "object", "properties": {"count": {"type": "integer"}}},
    ]
}
_GATE_RESULT = {
    "type": "object",
    "properties": {
        "gate": {"type": "string"},
        "value": {"type": ["number", "null"]},
        "threshold": {"type": "number"},
        "passed": {"type": "boolean"},
        "detail": {"type": "string"},
    },
}
SCHEMAS: dict[str, Any] = {
    "RolloutRequest": {
        "type": "object",
        "required": ["model", "version", "target"],
        "properties": {
            "model": {"type": "string"},
            "version": {"type": "integer"},
            "target": {
                "type": "string",
                "description": "group:G, label:k=v[,k=v], device:ID[,ID...] or all",
            },
            "strategy": {
                "type": "object",
                "properties": {
                    "kind": {"enum": ["all", "canary"]},
                    "canary": _STEP,
                    "waves": {"type": "array", "items": _STEP},
                    "rate_per_minute": {"type": ["integer", "null"], "minimum": 1},
                    "wait_s": {"type": "number", "minimum": 0},
                    "activation_timeout_s": {"type": "number", "minimum": 0},
                },
            },
            "gates": {
                "type": "object",
                "properties": {
                    "max_failure_pct": {"type": "number"},
                    "max_error_rate": {"type": "number"},
                    "max_p95_ratio": {"type": "number"},
                    "min_requests": {"type": "integer"},
                    "require_traffic": {"type": "boolean"},
                    "baseline_window_s": {"type": "number"},
                    "on_failure": {"enum": ["rollback", "pause"]},
                },
            },
        },
    },
    "Rollout": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "model": {"type": "string"},
            "version": {"type": "integer"},
            "digest": {"type": "string"},
            "target": {"type": "string"},
            "strategy": {"type": "object"},
            "gates": {"type": "object"},
            "state": {"enum": list(STATES)},
            "reason": {"type": ["string", "null"]},
            "current_wave": {"type": "integer"},
            "waves": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "size": {"type": "integer"},
                        "state": {"type": "string"},
                        "gate_results": {
                            "type": ["object", "null"],
                            "properties": {
                                "passed": {"type": "boolean"},
                                "gates": {"type": "array", "items": _GATE_RESULT},
                            },
                        },
                    },
                },
            },
            "devices": {"type": "object", "additionalProperties": {"type": "integer"}},
            "device_states": {"type": "array", "items": {"type": "object"}},
        },
    },
    "RolloutList": {
        "type": "object",
        "properties": {
            "rollouts": {"type": "array", "items": {"$ref": "#/components/schemas/Rollout"}}
        },
    },
}

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        f"{PREFIX}/rollouts",
        create,
        Role.OPERATOR,
        "Start a rollout of a model version to a target",
        status=201,
        response="Rollout",
        request="RolloutRequest",
        errors=(400, 404, 409),
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/rollouts",
        list_rollouts,
        Role.VIEWER,
        "Rollouts, newest first",
        response="RolloutList",
        parameters=(
            {"name": "state", "in": "query", "schema": {"enum": list(STATES)}},
            {"name": "model", "in": "query", "schema": {"type": "string"}},
            {"name": "limit", "in": "query", "schema": {"type": "integer", "maximum": MAX_LIST}},
        ),
        errors=(400,),
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/rollouts/{{id}}",
        show,
        Role.VIEWER,
        "One rollout with its waves, gate results and devices",
        response="Rollout",
        parameters=(_ID,),
        errors=(400, 404),
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/rollouts/{{id}}/{{action}}",
        act,
        Role.OPERATOR,
        "Pause, resume, promote, abort or roll back a rollout",
        response="Rollout",
        parameters=(_ID, _ACTION),
        errors=(400, 404, 409),
    ),
)
