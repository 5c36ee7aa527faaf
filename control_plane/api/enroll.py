"""`/api/v1/enroll-tokens` and `/api/v1/enroll`: one-time tokens, and devices enrolling with one.

The enrollment answer holds everything a device needs to run: its certificate and the CA's,
the root public key and key list to verify bundles and assignments with, and the URLs of the
broker, its assignment and the API.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from control_plane import audit
from control_plane.api.auth import actor, caller
from control_plane.api.device_auth import DEVICE_IDENTITY
from control_plane.api.errors import InvalidRequest
from control_plane.api.routes import PREFIX, Endpoint, json_object
from control_plane.api.state import ENGINE, SETTINGS
from control_plane.db.engine import open_session
from control_plane.db.models import utcnow
from control_plane.devices import describe_device
from control_plane.enrollment import (
    DevicePreset,
    describe_token,
    enroll_device,
    issue_enrollment_token,
    list_enrollment_tokens,
)
from control_plane.errors import KeysNotConfigured
from control_plane.roles import Role
from shared.key_directory import KEYLIST, ROOT_PUB
from shared.mqtt.errors import TopicError
from shared.mqtt.topics import check_id

MAX_TTL_S = 365 * 24 * 3600.0
MAX_GROUPS = 100
MAX_LABELS = 50
MAX_LABEL_VALUE = 200
MAX_REGION = 100
MAX_CSR_CHARS = 16_384
MAX_HARDWARE_BYTES = 65_536
_LABEL_KEY = re.compile(r"[A-Za-z0-9_.\-/]{1,100}")


def parse_device_id(value: object) -> str:
    """A device id: 1-64 characters of letters, digits and '_.-' (it names MQTT topics)."""
    if not isinstance(value, str):
        raise InvalidRequest("device_id is required: 1-64 characters of letters, digits, '_.-'")
    try:
        return check_id(value)
    except TopicError as error:
        raise InvalidRequest(str(error)) from None


def parse_groups(value: object) -> tuple[str, ...]:
    """A list of group names, each like a device id."""
    if not isinstance(value, list) or len(value) > MAX_GROUPS:
        raise InvalidRequest(f"groups must be a list of at most {MAX_GROUPS} group names")
    groups = []
    for group in value:
        if not isinstance(group, str):
            raise InvalidRequest("groups must hold strings")
        try:
            groups.append(check_id(group, "group"))
        except TopicError as error:
            raise InvalidRequest(str(error)) from None
    return tuple(sorted(set(groups)))


def parse_labels(value: object) -> dict[str, str]:
    """An object of `key: value` strings; keys of letters, digits and '_.-/'."""
    if not isinstance(value, dict) or len(value) > MAX_LABELS:
        raise InvalidRequest(f"labels must be an object of at most {MAX_LABELS} key: value pairs")
    for key, item in value.items():
        if not _LABEL_KEY.fullmatch(key):
            raise InvalidRequest(
                f"label key {key!r} is not 1-100 characters of letters, digits, '_.-/'"
            )
        if not isinstance(item, str) or len(item) > MAX_LABEL_VALUE:
            raise InvalidRequest(
                f"label {key!r}: the value must be a string of at most {MAX_LABEL_VALUE} characters"
            )
    return dict(value)


def parse_region(value: object) -> str | None:
    """A region name, or None."""
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_REGION:
        raise InvalidRequest(f"region must be null or a string of 1-{MAX_REGION} characters")
    return value


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(
            f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(allowed))}"
        )


async def create_enroll_token(request: web.Request) -> web.Response:
    """Issue a one-time enrollment token; the response is the only place its secret appears."""
    body = await json_object(request)
    _only(body, {"groups", "labels", "region", "ttl_s"})
    preset = DevicePreset(
        parse_groups(body.get("groups", [])),
        parse_labels(body.get("labels", {})),
        parse_region(body.get("region")),
    )
    ttl_s = body.get("ttl_s", request.app[SETTINGS].enrollment_token_ttl_s)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float) or not 0 < ttl_s <= MAX_TTL_S:
        raise InvalidRequest(f"ttl_s must be a number of seconds in (0, {MAX_TTL_S:.0f}]")
    who, now = actor(caller(request)), utcnow()
    async with open_session(request.app[ENGINE]) as session:
        token, secret = await issue_enrollment_token(session, who, preset, float(ttl_s), now)
        described = describe_token(token, now)
    return web.json_response({"token": described, "secret": secret}, status=201)


async def list_enroll_tokens(request: web.Request) -> web.Response:
    """Every enrollment token, oldest first, with its state and without its secret."""
    now = utcnow()
    async with open_session(request.app[ENGINE]) as session:
        rows = await list_enrollment_tokens(session)
        return web.json_response({"tokens": [describe_token(t, now) for t in rows]})


async def enroll(request: web.Request) -> web.Response:
    """Enroll a device: the one-time token authenticates, the CSR becomes its certificate."""
    body = await json_object(request)
    _only(body, {"token", "device_id", "csr", "hardware"})
    secret, csr, hardware = body.get("token"), body.get("csr"), body.get("hardware")
    if not isinstance(secret, str) or not secret:
        raise InvalidRequest("token is required: the enrollment token's secret")
    device_id = parse_device_id(body.get("device_id"))
    if not isinstance(csr, str) or not csr or len(csr) > MAX_CSR_CHARS:
        raise InvalidRequest("csr is required: a PEM certificate signing request (CN = device_id)")
    if hardware is not None and not _storable_hardware(hardware):
        raise InvalidRequest(
            f"hardware must be an object of at most {MAX_HARDWARE_BYTES} bytes of JSON "
            "(integers within 64 bits, strings of valid Unicode)"
        )
    settings = request.app[SETTINGS]
    # Read before the token is spent, so a misconfigured control plane burns no tokens.
    root_key, keylist = await asyncio.to_thread(_trust_documents, settings.keys_dir)
    identity = request.app[DEVICE_IDENTITY]
    now = utcnow()
    async with open_session(request.app[ENGINE]) as session:
        enrolled = await enroll_device(
            session,
            identity.ca,
            secret=secret,
            device_id=device_id,
            csr_pem=csr,
            hardware=hardware,
            certificate_days=settings.certificate_days,
            now=now,
        )
        preset = enrolled.preset
        after = describe_device(enrolled.device, list(preset.groups), dict(preset.labels))
        who = f"enroll-token:{enrolled.token.id}"
        await audit.record(session, who, "device.enroll", f"device:{device_id}", None, after)
    identity.forget(device_id)  # a device enrolling again has a new key
    answer = {
        "device_id": device_id,
        "certificate": enrolled.certificate.pem,
        "ca_certificate": identity.ca.certificate_pem,
        "root_key": root_key,
        "keylist": keylist,
        "mqtt_url": settings.devices_mqtt_url or None,
        "assignment_url": f"{settings.base_url}{PREFIX}/devices/{device_id}/assignment",
        "api_url": settings.base_url,
        "groups": list(preset.groups),
        "labels": dict(preset.labels),
        "region": preset.region,
    }
    return web.json_response(answer, status=201)


def _storable_hardware(hardware: object) -> bool:
    """Whether `hardware` is a JSON object small enough to store, and storable everywhere."""
    if not isinstance(hardware, dict):
        return False
    try:
        size = len(orjson.dumps(hardware))
    except orjson.JSONEncodeError:  # integers beyond 64 bits, lone surrogates in strings
        return False
    return size <= MAX_HARDWARE_BYTES


def _trust_documents(keys_dir: Path | None) -> tuple[str, str]:
    """root.pub and keylist.json of the key directory, as text (blocking)."""
    if keys_dir is None:
        raise KeysNotConfigured(
            "no key directory, so enrolling devices cannot be given the root key and key list: "
            "start the control plane with --keys"
        )
    try:
        return (keys_dir / ROOT_PUB).read_text(), (keys_dir / KEYLIST).read_text()
    except OSError as error:
        raise KeysNotConfigured(
            f"cannot read {error.filename}: {error.strerror}; --keys must name a directory "
            "made by `edgefleet keys init`"
        ) from None


_PRESET_PROPERTIES = {
    "groups": {"type": "array", "items": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}},
    "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 200}},
    "region": {"type": ["string", "null"], "maxLength": MAX_REGION},
}
_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}

SCHEMAS: dict[str, Any] = {
    "EnrollTokenRequest": {
        "type": "object",
        "properties": {
            **_PRESET_PROPERTIES,
            "ttl_s": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_TTL_S},
        },
    },
    "EnrollToken": {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "state": {"type": "string", "enum": ["unused", "used", "expired"]},
            "created_at": _TIME,
            "created_by": {"type": "string"},
            "expires_at": _TIME,
            **_PRESET_PROPERTIES,
            "used_at": _NULLABLE_TIME,
            "used_by": {"type": ["string", "null"]},
        },
    },
    "CreatedEnrollToken": {
        "type": "object",
        "required": ["token", "secret"],
        "properties": {
            "token": {"$ref": "#/components/schemas/EnrollToken"},
            "secret": {"type": "string", "description": "shown only in this response"},
        },
    },
    "EnrollTokenList": {
        "type": "object",
        "properties": {
            "tokens": {"type": "array", "items": {"$ref": "#/components/schemas/EnrollToken"}}
        },
    },
    "EnrollRequest": {
        "type": "object",
        "required": ["token", "device_id", "csr"],
        "properties": {
            "token": {"type": "string"},
            "device_id": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"},
            "csr": {"type": "string", "description": "PEM CSR, CN = device_id, P-256 or Ed25519"},
            "hardware": {"type": ["object", "null"]},
        },
    },
    "Enrollment": {
        "type": "object",
        "properties": {
            "device_id": {"type": "string"},
            "certificate": {"type": "string", "description": "PEM"},
            "ca_certificate": {"type": "string", "description": "PEM"},
            "root_key": {"type": "string", "description": "root.pub (PEM)"},
            "keylist": {"type": "string", "description": "keylist.json, as text"},
            "mqtt_url": {"type": ["string", "null"]},
            "assignment_url": {"type": "string"},
            "api_url": {"type": "string"},
            **_PRESET_PROPERTIES,
        },
    },
}

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "POST",
        f"{PREFIX}/enroll-tokens",
        create_enroll_token,
        Role.OPERATOR,
        "Issue a one-time enrollment token (groups, labels and region preset)",
        status=201,
        response="CreatedEnrollToken",
        request="EnrollTokenRequest",
        errors=(400,),
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/enroll-tokens",
        list_enroll_tokens,
        Role.ADMIN,
        "List enrollment tokens (without secrets)",
        response="EnrollTokenList",
    ),
    Endpoint(
        "POST",
        f"{PREFIX}/enroll",
        enroll,
        None,
        "Enroll a device with a one-time token and a CSR",
        status=201,
        response="Enrollment",
        request="EnrollRequest",
        errors=(400, 401, 409),
    ),
)
