"""`/api/v1/devices` and `/api/v1/groups`: the fleet's inventory, and revoking a device.

`ENDPOINTS` and `SCHEMAS` here also carry the enrollment routes of `control_plane.api.enroll`,
so the route table and the OpenAPI document take the whole device surface from this module.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane import audit
from control_plane.api import enroll
from control_plane.api.auth import actor, caller
from control_plane.api.device_auth import DEVICE_IDENTITY
from control_plane.api.enroll import parse_groups, parse_labels, parse_region
from control_plane.api.errors import InvalidRequest
from control_plane.api.routes import (
    DEVICE_ID_PARAMETER,
    PREFIX,
    Endpoint,
    iso_time,
    json_object,
    parse_int,
    query_parameter,
)
from control_plane.api.state import ENGINE
from control_plane.db.engine import open_session
from control_plane.db.models import Device, utcnow
from control_plane.devices import (
    DeviceFilter,
    certificates_of,
    describe_device,
    get_device,
    group_counts,
    groups_of,
    labels_of,
    list_devices,
    revoke_device,
    set_groups,
    set_labels,
)
from control_plane.roles import Role

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_QUERY_CHARS = 200
STATUSES = {"online": True, "offline": False}


def device_summary(device: Device, groups: list[str], labels: dict[str, str]) -> dict[str, Any]:
    """A device as the list shows it."""
    return {
        "id": device.id,
        "region": device.region,
        "groups": groups,
        "labels": labels,
        "online": device.online,
        "last_seen_at": iso_time(device.last_seen_at),
        "agent_version": device.agent_version,
        "backend_class": device.backend_class,
        "enrolled_at": iso_time(device.enrolled_at),
        "revoked_at": iso_time(device.revoked_at),
        # What it reported serving, without the selection details the detail view shows.
        "models": [
            {key: m.get(key) for key in ("model", "version", "state", "backend", "serving")}
            for m in device.models or []
            if isinstance(m, dict)
        ],
    }


async def device_detail(session: AsyncSession, device: Device) -> dict[str, Any]:
    """A device's whole inventory: the summary, hardware, models and certificates."""
    groups = (await groups_of(session, [device.id]))[device.id]
    labels = (await labels_of(session, [device.id]))[device.id]
    certificates = [
        {
            "serial": c.serial,
            "issued_at": iso_time(c.issued_at),
            "not_after": iso_time(c.not_after),
            "revoked": c.revoked_at is not None,
            "revoked_at": iso_time(c.revoked_at),
        }
        for c in await certificates_of(session, device.id)
    ]
    return {
        **device_summary(device, groups, labels),
        "hardware": device.hardware,
        "models": device.models,  # in full, with each model's selection
        "certificates": certificates,
    }


def _filters(query: Any) -> DeviceFilter:
    labels = []
    for raw in query.getall("label", []):
        key, sep, value = raw.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"label must be KEY=VALUE, not {raw!r}")
        labels.append((key, value))
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise InvalidRequest("status must be online or offline")
    for name in ("group", "backend", "region", "model", "q"):
        if len(query.get(name, "")) > MAX_QUERY_CHARS:
            raise InvalidRequest(f"{name} is longer than {MAX_QUERY_CHARS} characters")
    return DeviceFilter(
        group=query.get("group"),
        labels=tuple(labels),
        online=None if status is None else STATUSES[status],
        backend=query.get("backend"),
        region=query.get("region"),
        model=query.get("model"),
        search=query.get("q") or None,
    )


async def list_devices_route(request: web.Request) -> web.Response:
    """Devices by id, filtered and paged (`limit` + `offset`, or `after` = the last id seen)."""
    query = request.query
    limit = parse_int(query.get("limit", str(DEFAULT_LIMIT)), "limit")
    offset = parse_int(query.get("offset", "0"), "offset")
    if not 1 <= limit <= MAX_LIMIT or offset < 0:
        raise InvalidRequest(f"limit must be 1-{MAX_LIMIT} and offset at least 0")
    after = query.get("after")
    async with open_session(request.app[ENGINE]) as session:
        page = await list_devices(session, _filters(query), limit, offset, after)
    devices = [device_summary(d, page.groups[d.id], page.labels[d.id]) for d in page.devices]
    full = len(devices) == limit
    return web.json_response(
        {
            "devices": devices,
            "total": page.total,
            "limit": limit,
            "offset": offset,
            "next_cursor": devices[-1]["id"] if full else None,
        }
    )


async def show_device(request: web.Request) -> web.Response:
    """One device's inventory (an operator token, or the device itself)."""
    async with open_session(request.app[ENGINE]) as session:
        device = await get_device(session, request.match_info["device_id"])
        return web.json_response(await device_detail(session, device))


async def update_device(request: web.Request) -> web.Response:
    """Set a device's groups, labels or region (each one given replaces the old value)."""
    body = await json_object(request)
    unknown = sorted(set(body) - {"groups", "labels", "region"})
    if unknown or not body:
        raise InvalidRequest("give one or more of groups, labels, region (and nothing else)")
    device_id = request.match_info["device_id"]
    async with open_session(request.app[ENGINE]) as session:
        device = await get_device(session, device_id)
        groups = (await groups_of(session, [device_id]))[device_id]
        labels = (await labels_of(session, [device_id]))[device_id]
        before = describe_device(device, groups, labels)
        if "groups" in body:
            groups = list(parse_groups(body["groups"]))
            await set_groups(session, device_id, groups)
        if "labels" in body:
            labels = parse_labels(body["labels"])
            await set_labels(session, device_id, labels)
        if "region" in body:
            device.region = parse_region(body["region"])
        after = describe_device(device, sorted(groups), labels)
        if after != before:
            who = actor(caller(request))
            await audit.record(session, who, "device.update", f"device:{device_id}", before, after)
        return web.json_response(await device_detail(session, device))


async def revoke_device_route(request: web.Request) -> web.Response:
    """Revoke a device and its certificates, and rewrite the CRL; revoking twice is harmless."""
    device_id = request.match_info["device_id"]
    identity = request.app[DEVICE_IDENTITY]
    async with open_session(request.app[ENGINE]) as session:
        device = await get_device(session, device_id)
        groups = (await groups_of(session, [device_id]))[device_id]
        labels = (await labels_of(session, [device_id]))[device_id]
        before = describe_device(device, groups, labels)
        certificates = await revoke_device(session, device, utcnow())
        after = describe_device(device, groups, labels)
        if after != before or certificates:
            after["certificates_revoked"] = certificates
            who = actor(caller(request))
            await audit.record(session, who, "device.revoke", f"device:{device_id}", before, after)
        body = await device_detail(session, device)
    identity.forget(device_id)
    if certificates:
        await identity.rewrite_crl(request.app[ENGINE])
    return web.json_response(body)


async def list_groups(request: web.Request) -> web.Response:
    """Every group with how many of its devices are online and offline."""
    async with open_session(request.app[ENGINE]) as session:
        counts = await group_counts(session)
    groups = [
        {"name": c.name, "devices": c.online + c.offline, "online": c.online, "offline": c.offline}
        for c in counts
    ]
    return web.json_response({"groups": groups})


_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_SUMMARY_PROPERTIES: dict[str, Any] = {
    "id": {"type": "string"},
    "region": {"type": ["string", "null"]},
    "groups": {"type": "array", "items": {"type": "string"}},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "online": {"type": "boolean"},
    "last_seen_at": _NULLABLE_TIME,
    "agent_version": {"type": ["string", "null"]},
    "backend_class": {"type": "string"},
    "enrolled_at": _TIME,
    "revoked_at": _NULLABLE_TIME,
    "models": {"type": "array", "items": {"type": "object"}},
}

SCHEMAS: dict[str, Any] = {
    **enroll.SCHEMAS,
    "DeviceSummary": {"type": "object", "properties": _SUMMARY_PROPERTIES},
    "Device": {
        "type": "object",
        "properties": {
            **_SUMMARY_PROPERTIES,
            "hardware": {"type": ["object", "null"]},
            "models": {"type": "array", "items": {"type": "object"}},
            "certificates": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "serial": {"type": "string", "description": "hex"},
                        "issued_at": _TIME,
                        "not_after": _TIME,
                        "revoked": {"type": "boolean"},
                        "revoked_at": _NULLABLE_TIME,
                    },
                },
            },
        },
    },
    "DeviceList": {
        "type": "object",
        "properties": {
            "devices": {"type": "array", "items": {"$ref": "#/components/schemas/DeviceSummary"}},
            "total": {"type": "integer", "description": "devices matching the filters"},
            "limit": {"type": "integer"},
            "offset": {"type": "integer"},
            "next_cursor": {
                "type": ["string", "null"],
                "description": "pass as `after` for the next page; null on the last page",
            },
        },
    },
    "DevicePatch": {
        "type": "object",
        "minProperties": 1,
        "properties": {
            key: enroll.SCHEMAS["EnrollTokenRequest"]["properties"][key]
            for key in ("groups", "labels", "region")
        },
    },
    "GroupList": {
        "type": "object",
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "devices": {"type": "integer"},
                        "online": {"type": "integer"},
                        "offline": {"type": "integer"},
                    },
                },
            }
        },
    },
}


_STRING = {"type": "string"}
_LIST_PARAMETERS = (
    query_parameter(
        "limit", {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}, "page size (100)"
    ),
    query_parameter("offset", {"type": "integer", "minimum": 0}, "devices to skip"),
    query_parameter("after", _STRING, "cursor: only ids after this one (next_cursor)"),
    query_parameter("group", _STRING, "member of this group"),
    query_parameter("label", _STRING, "KEY=VALUE; repeat to require several"),
    query_parameter("status", {"type": "string", "enum": list(STATUSES)}, "online or offline"),
    query_parameter("backend", _STRING, "backend class: gpu, openvino, arm-cpu, x86-cpu, unknown"),
    query_parameter("region", _STRING, "in this region"),
    query_parameter("model", _STRING, "reported serving this model"),
    query_parameter("q", _STRING, "substring of the device id"),
)

ENDPOINTS: tuple[Endpoint, ...] = (
    *enroll.ENDPOINTS,
    Endpoint(
        "GET",
        f"{PREFIX}/devices",
        list_devices_route,
        Role.VIEWER,
        "List devices, filtered and paged, ordered by id",
        response="DeviceList",
        parameters=_LIST_PARAMETERS,
        errors=(400,),
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/devices/{{device_id}}",
        show_device,
        Role.VIEWER,
        "One device's inventory (also readable by the device itself)",
        response="Device",
        parameters=(DEVICE_ID_PARAMETER,),
        errors=(404,),
        device=True,
    ),
    Endpoint(
        "PATCH",
        f"{PREFIX}/devices/{{device_id}}",
        update_device,
        Role.OPERATOR,
        "Set a device's groups, labels or region",
        response="Device",
        request="DevicePatch",
        parameters=(DEVICE_ID_PARAMETER,),
        errors=(400, 404),
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/devices/{{device_id}}/revoke",
        revoke_device_route,
        Role.ADMIN,
        "Revoke a device and all its certificates (rewrites the CRL)",
        response="Device",
        parameters=(DEVICE_ID_PARAMETER,),
        errors=(404,),
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/groups",
        list_groups,
        Role.VIEWER,
        "Groups with their online and offline device counts",
        response="GroupList",
    ),
)
