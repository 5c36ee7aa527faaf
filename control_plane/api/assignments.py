"""Assignment routes: a device's signed document (with long polling) and its desired models.

    GET    /api/v1/devices/{device_id}/assignment        the signed document; ETag, 304, ?wait=
    GET    /api/v1/devices/{device_id}/models            desired models and the current serial
    PUT    /api/v1/devices/{device_id}/models/{model}    {"version": N}: assign that bundle
    DELETE /api/v1/devices/{device_id}/models/{model}    stop assigning the model

A device without any document yet gets its first (empty) one on its first GET, so a freshly
enrolled agent becomes "assigned" at once (see `control_plane.assignments`).
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import hdrs, web
from aiohttp.helpers import ETAG_ANY
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane import audit
from control_plane.api.auth import actor, caller
from control_plane.api.errors import InvalidRequest
from control_plane.api.routes import DEVICE_ID_PARAMETER, DEVICE_PATH, Endpoint, json_object
from control_plane.api.state import ASSIGNMENTS, ENGINE, SETTINGS
from control_plane.assignments import AssignmentsDisabled, AssignmentService, set_desired
from control_plane.db.engine import open_session
from control_plane.db.models import (
    INTEGER_MAX,
    AssignmentRecord,
    BundleRecord,
    DesiredModel,
    Device,
)
from control_plane.errors import UnknownDevice, UnknownModel
from control_plane.roles import Role
from shared.key_directory import KeyDirectory

WAIT_PARAMETER = "wait"


def assignment_service(request: web.Request) -> AssignmentService:
    """The app's assignment service; `AssignmentsDisabled` (503) when it has no key."""
    service = request.app.get(ASSIGNMENTS)
    if service is not None:
        return service
    keys_dir = request.app[SETTINGS].keys_dir
    if keys_dir is None:
        raise AssignmentsDisabled(
            "assignments are disabled: start the control plane with --keys (a key directory "
            "holding assignment.key)"
        )
    raise AssignmentsDisabled(
        f"assignments are disabled: {KeyDirectory(keys_dir).key_file('assignment')} does not "
        "exist; put the assignment key there (see `edgefleet keys init`) and restart"
    )


async def get_assignment(request: web.Request) -> web.StreamResponse:
    """The device's signed document; 304 while `If-None-Match` matches, held up to `?wait=`."""
    service = assignment_service(request)
    device_id = request.match_info["device_id"]
    wait = _wait_seconds(request, service.settings.long_poll_max_s)
    record = await service.ensure_issued(device_id)
    tags = request.if_none_match
    if tags is not None and any(tag.value in (_unquoted(record.etag), ETAG_ANY) for tag in tags):
        changed = await service.wait_for_change(device_id, record.etag, wait) if wait else None
        if changed is None:
            return web.Response(status=304, headers=_cache_headers(record))
        record = changed
    return web.Response(
        body=record.document, content_type="application/json", headers=_cache_headers(record)
    )


async def list_device_models(request: web.Request) -> web.Response:
    """What the device should run, and the document that says so."""
    device_id = request.match_info["device_id"]
    async with open_session(request.app[ENGINE]) as session:
        body = await _device_models(session, device_id)
    return web.json_response(body)


async def set_device_model(request: web.Request) -> web.Response:
    """Assign a model version to the device (body `{"version": N}`), then reissue."""
    service = assignment_service(request)
    device_id, model = request.match_info["device_id"], request.match_info["model"]
    version = _version(await json_object(request))
    who = actor(caller(request))
    async with open_session(request.app[ENGINE]) as session:
        await _require_device(session, device_id)
        bundle = await session.scalar(
            select(BundleRecord).where(BundleRecord.name == model, BundleRecord.version == version)
        )
        if bundle is None:
            raise UnknownModel(f"no model {model!r} version {version}")
        before = await _desired_json(session, device_id, model)
        changed = await set_desired(session, [device_id], model, bundle.digest, who)
        if changed:
            after = {"model": model, "version": version, "digest": bundle.digest}
            await audit.record(
                session, who, "device.model.set", f"device:{device_id}", before, after
            )
    if changed:
        await service.reissue(changed)
    async with open_session(request.app[ENGINE]) as session:
        body = await _device_models(session, device_id)
    return web.json_response(body)


async def remove_device_model(request: web.Request) -> web.Response:
    """Stop assigning a model to the device, then reissue; removing an absent one is a no-op."""
    service = assignment_service(request)
    device_id, model = request.match_info["device_id"], request.match_info["model"]
    who = actor(caller(request))
    async with open_session(request.app[ENGINE]) as session:
        await _require_device(session, device_id)
        before = await _desired_json(session, device_id, model)
        changed = await set_desired(session, [device_id], model, None, who)
        if changed:
            await audit.record(
                session, who, "device.model.remove", f"device:{device_id}", before, None
            )
    if changed:
        await service.reissue(changed)
    async with open_session(request.app[ENGINE]) as session:
        body = await _device_models(session, device_id)
    return web.json_response(body)


async def _require_device(session: AsyncSession, device_id: str) -> Device:
    device = await session.get(Device, device_id)
    if device is None:
        raise UnknownDevice(f"no enrolled device {device_id!r}")
    return device


async def _desired_json(session: AsyncSession, device_id: str, model: str) -> dict[str, Any] | None:
    """One desired model as the audit log records it, or None."""
    row = await session.execute(
        select(BundleRecord.version, BundleRecord.digest)
        .join(DesiredModel, DesiredModel.digest == BundleRecord.digest)
        .where(DesiredModel.device_id == device_id, DesiredModel.model == model)
    )
    found = row.first()
    if found is None:
        return None
    return {"model": model, "version": found.version, "digest": found.digest}


async def _device_models(session: AsyncSession, device_id: str) -> dict[str, Any]:
    """The `DeviceModels` body."""
    await _require_device(session, device_id)
    rows = await session.execute(
        select(DesiredModel, BundleRecord)
        .join(BundleRecord, BundleRecord.digest == DesiredModel.digest)
        .where(DesiredModel.device_id == device_id)
        .order_by(DesiredModel.model)
    )
    models = [
        {
            "name": desired.model,
            "version": bundle.version,
            "digest": bundle.digest,
            "size": bundle.size,
            "set_by": desired.set_by,
            "updated_at": desired.updated_at.isoformat(),
        }
        for desired, bundle in rows
    ]
    record = await session.get(AssignmentRecord, device_id)
    return {"device_id": device_id, "models": models, "assignment": _record_json(record)}


def _record_json(record: AssignmentRecord | None) -> dict[str, Any] | None:
    if record is None:
        return None
    return {
        "serial": record.serial,
        "etag": record.etag,
        "issued_at": record.issued_at.isoformat(),
        "expires_at": record.expires_at.isoformat(),
    }


def _cache_headers(record: AssignmentRecord) -> dict[str, str]:
    # no-cache: a proxy may keep the document but must revalidate, or a device could be fed
    # an old one until its expiry.
    return {hdrs.ETAG: record.etag, hdrs.CACHE_CONTROL: "no-cache"}


def _unquoted(etag: str) -> str:
    return etag.strip('"')


def _wait_seconds(request: web.Request, maximum: float) -> float:
    """`?wait=` in seconds, capped at `long_poll_max_s`; 0 when absent."""
    raw = request.query.get(WAIT_PARAMETER)
    if raw is None:
        return 0.0
    try:
        wait = float(raw)
    except ValueError:
        wait = math.nan
    if not math.isfinite(wait) or wait < 0:
        raise InvalidRequest(f"wait must be a number of seconds >= 0, not {raw!r}")
    return min(wait, maximum)


def _version(body: dict[str, Any]) -> int:
    version = body.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= INTEGER_MAX:
        raise InvalidRequest(
            f'the body must be {{"version": N}} with N an integer from 1 to {INTEGER_MAX}'
        )
    extra = sorted(set(body) - {"version"})
    if extra:
        raise InvalidRequest(f"unknown field {extra[0]!r}; the body is {{'version': N}}")
    return version


_MODEL = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"}}
_WAIT = {
    "name": WAIT_PARAMETER,
    "in": "query",
    "required": False,
    "description": "with If-None-Match: hold the request up to this many seconds (capped by "
    "long_poll_max_s) until the assignment changes; 304 if it does not",
    "schema": {"type": "number", "minimum": 0},
}
_TIME = {"type": "string", "format": "date-time"}

SCHEMAS: dict[str, Any] = {
    "SignedAssignment": {
        "type": "object",
        "description": "The signed assignment document (shared.assignment), served byte-exact",
        "required": ["signed", "signatures"],
        "properties": {
            "signed": {"type": "object"},
            "signatures": {"type": "array", "items": {"type": "object"}},
        },
    },
    "DesiredVersion": {
        "type": "object",
        "required": ["version"],
        "additionalProperties": False,
        "properties": {"version": {"type": "integer", "minimum": 1}},
    },
    "DeviceModels": {
        "type": "object",
        "required": ["device_id", "models", "assignment"],
        "properties": {
            "device_id": {"type": "string"},
            "models": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "version": {"type": "integer"},
                        "digest": {"type": "string"},
                        "size": {"type": "integer"},
                        "set_by": {"type": "string"},
                        "updated_at": _TIME,
                    },
                },
            },
            "assignment": {
                "type": ["object", "null"],
                "properties": {
                    "serial": {"type": "integer"},
                    "etag": {"type": "string"},
                    "issued_at": _TIME,
                    "expires_at": _TIME,
                },
            },
        },
    },
}


ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        f"{DEVICE_PATH}/assignment",
        get_assignment,
        Role.VIEWER,
        "The device's signed assignment (ETag; 304 on If-None-Match; ?wait= long-polls)",
        response="SignedAssignment",
        parameters=(DEVICE_ID_PARAMETER, _WAIT),
        errors=(304, 400, 404),
        device=True,
    ),
    Endpoint(
        "GET",
        f"{DEVICE_PATH}/models",
        list_device_models,
        Role.VIEWER,
        "The device's desired models and its current assignment serial",
        response="DeviceModels",
        parameters=(DEVICE_ID_PARAMETER,),
        errors=(404,),
    ),
    Endpoint(
        "PUT",
        f"{DEVICE_PATH}/models/{{model}}",
        set_device_model,
        Role.OPERATOR,
        "Assign a model version to the device and reissue its assignment",
        response="DeviceModels",
        request="DesiredVersion",
        parameters=(DEVICE_ID_PARAMETER, _MODEL),
        errors=(400, 404),
    ),
    Endpoint(
        "DELETE",
        f"{DEVICE_PATH}/models/{{model}}",
        remove_device_model,
        Role.OPERATOR,
        "Stop assigning a model to the device and reissue its assignment",
        response="DeviceModels",
        parameters=(DEVICE_ID_PARAMETER, _MODEL),
        errors=(404,),
    ),
)
