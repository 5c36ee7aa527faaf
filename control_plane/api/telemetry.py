"""What devices reported, read back: telemetry series, events, presence, and the ingest's counters.

    GET /api/v1/devices/{device_id}/telemetry?model=&since=&bucket=   per-bucket figures (charts)
    GET /api/v1/devices/{device_id}/events?limit=&before=             newest first
    GET /api/v1/devices/{device_id}/presence?limit=                   online/offline changes
    GET /api/v1/ingest/stats                                          this replica's counters

All need the viewer role. The ingest and the retention task are started here too, as
`cleanup_ctx` services of the application (`ingest_context`, `retention_context`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane import device_history
from control_plane.api.errors import InvalidRequest
from control_plane.api.routes import (
    DEVICE_ID_PARAMETER,
    DEVICE_PATH,
    PREFIX,
    Endpoint,
    parse_int,
    query_parameter,
)
from control_plane.api.state import ENGINE, INGEST, MQTT, SETTINGS
from control_plane.db.engine import open_session
from control_plane.db.models import Device, DeviceEvent
from control_plane.errors import UnknownDevice
from control_plane.fleet_stats import device_series
from control_plane.ingest import IngestService, IngestSettings
from control_plane.ingest_store import IngestStore
from control_plane.retention import RetentionPolicy, RetentionService
from control_plane.roles import Role

DEFAULT_WINDOW = timedelta(hours=24)
DEFAULT_BUCKET_S = 300
MIN_BUCKET_S = 10
MAX_BUCKET_S = 7 * 86400
MAX_BUCKETS = 2000
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_MODEL_CHARS = 200


async def ingest_context(app: web.Application) -> AsyncIterator[None]:
    """The ingest, on the control plane's broker connection; None without a broker."""
    client = app[MQTT]
    if client is None:
        app[INGEST] = None
        yield
        return
    service = IngestService(client, IngestStore(app[ENGINE]), IngestSettings.of(app[SETTINGS]))
    await service.start()
    app[INGEST] = service
    try:
        yield
    finally:
        await service.stop()


async def retention_context(app: web.Application) -> AsyncIterator[None]:
    """The retention task: once at start, then hourly."""
    service = RetentionService(app[ENGINE], RetentionPolicy.of(app[SETTINGS]))
    service.start()
    try:
        yield
    finally:
        await service.stop()


async def device_telemetry(request: web.Request) -> web.Response:
    """One device's telemetry per time bucket, oldest first."""
    device_id = request.match_info["device_id"]
    model = request.query.get("model") or None
    if model is not None and len(model) > MAX_MODEL_CHARS:
        raise InvalidRequest(f"model must be at most {MAX_MODEL_CHARS} characters")
    now = datetime.now(UTC)
    since = _time(request.query.get("since"), "since") or now - DEFAULT_WINDOW
    raw_bucket = request.query.get("bucket")
    bucket_s = DEFAULT_BUCKET_S if raw_bucket is None else parse_int(raw_bucket, "bucket")
    if not MIN_BUCKET_S <= bucket_s <= MAX_BUCKET_S:
        raise InvalidRequest(f"bucket must be between {MIN_BUCKET_S} and {MAX_BUCKET_S} seconds")
    if (now - since).total_seconds() / bucket_s > MAX_BUCKETS:
        raise InvalidRequest(
            f"more than {MAX_BUCKETS} buckets: choose a later since or a larger bucket"
        )
    async with open_session(request.app[ENGINE]) as session:
        await _device(session, device_id)
        series = await device_series(session, device_id, model, since, bucket_s)
    body = {
        "device_id": device_id,
        "model": model,
        "since": since.isoformat(),
        "bucket_s": bucket_s,
        "series": series,
    }
    return web.json_response(body)


async def device_events(request: web.Request) -> web.Response:
    """One device's events, newest first; page with `before=<next_before>`."""
    device_id = request.match_info["device_id"]
    limit = _limit(request)
    before = _time(request.query.get("before"), "before")
    async with open_session(request.app[ENGINE]) as session:
        await _device(session, device_id)
        events = await device_history.device_events(session, device_id, limit, before)
    body = {
        "device_id": device_id,
        "events": [_event_json(event) for event in events],
        "next_before": events[-1].time.isoformat() if len(events) == limit else None,
    }
    return web.json_response(body)


async def device_presence(request: web.Request) -> web.Response:
    """Whether a device is online, when it was last heard from, and its changes, newest first."""
    device_id = request.match_info["device_id"]
    limit = _limit(request)
    async with open_session(request.app[ENGINE]) as session:
        device = await _device(session, device_id)
        changes = await device_history.presence_changes(session, device_id, limit)
        body = {
            "device_id": device_id,
            "online": device.online,
            "last_seen_at": device.last_seen_at.isoformat() if device.last_seen_at else None,
            "changes": [{"time": c.time.isoformat(), "online": c.online} for c in changes],
        }
    return web.json_response(body)


async def ingest_stats(request: web.Request) -> web.Response:
    """This replica's ingest counters since it started."""
    service = request.app.get(INGEST)
    if service is None:
        return web.json_response({"enabled": False})
    filters = service.settings.filters()
    return web.json_response({"enabled": True, "filters": filters, **service.stats.as_json()})


async def _device(session: AsyncSession, device_id: str) -> Device:
    device = await session.get(Device, device_id)
    if device is None:
        raise UnknownDevice(f"no device {device_id!r}")
    return device


def _event_json(event: DeviceEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "time": event.time.isoformat(),
        "kind": event.kind,
        "model": event.model,
        "version": event.version,
        "name": event.name,
        "payload": event.payload,
    }


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    limit = DEFAULT_LIMIT if raw is None else parse_int(raw, "limit")
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidRequest(f"limit must be between 1 and {MAX_LIMIT}")
    return limit


def _time(raw: str | None, what: str) -> datetime | None:
    """An ISO 8601 time from the query (UTC when it names no zone)."""
    if raw is None or raw == "":
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise InvalidRequest(f"{what} must be an ISO 8601 time, not {raw!r}") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


_TIME = {"type": "string", "format": "date-time"}
_NULLABLE_TIME = {"type": ["string", "null"], "format": "date-time"}
_NULLABLE_NUMBER = {"type": ["number", "null"]}
_COUNTER = {"type": "object", "additionalProperties": {"type": "integer"}}

SCHEMAS: dict[str, Any] = {
    "TelemetrySeries": {
        "type": "object",
        "properties": {
            "device_id": {"type": "string"},
            "model": {"type": ["string", "null"]},
            "since": _TIME,
            "bucket_s": {"type": "integer"},
            "series": {
                "type": "array",
                "description": "buckets with data, oldest first",
                "items": {
                    "type": "object",
                    "properties": {
                        "start": _TIME,
                        "requests": {"type": "integer"},
                        "errors": {"type": "integer"},
                        "error_rate": _NULLABLE_NUMBER,
                        "throughput_rps": {"type": "number"},
                        "p50_s": _NULLABLE_NUMBER,
                        "p95_s": _NULLABLE_NUMBER,
                    },
                },
            },
        },
    },
    "DeviceEventList": {
        "type": "object",
        "properties": {
            "device_id": {"type": "string"},
            "events": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "seq": {"type": "integer"},
                        "time": _TIME,
                        "kind": {"type": "string"},
                        "model": {"type": ["string", "null"]},
                        "version": {"type": ["integer", "null"]},
                        "name": {"type": ["string", "null"]},
                        "payload": {"type": "object"},
                    },
                },
            },
            "next_before": {
                "type": ["string", "null"],
                "description": "pass as `before` for the next page; null on the last page",
            },
        },
    },
    "DevicePresence": {
        "type": "object",
        "properties": {
            "device_id": {"type": "string"},
            "online": {"type": "boolean"},
            "last_seen_at": _NULLABLE_TIME,
            "changes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"time": _TIME, "online": {"type": "boolean"}},
                },
            },
        },
    },
    "IngestStats": {
        "type": "object",
        "required": ["enabled"],
        "properties": {
            "enabled": {"type": "boolean", "description": "false without a broker (mqtt_url)"},
            "filters": {"type": "array", "items": {"type": "string"}},
            "received": {"type": "integer"},
            "stored": {"type": "integer"},
            "duplicates": {"type": "integer"},
            "rejected": {"type": "integer"},
            "rejected_by_reason": _COUNTER,
            "rejected_samples": _COUNTER,
            "dropped": {"type": "integer"},
            "dropped_by_reason": _COUNTER,
            "presence_changes": {"type": "integer"},
            "batches": {"type": "integer"},
            "write_failures": {"type": "integer"},
            "queued": {"type": "integer"},
        },
    },
}


_LIMIT_SCHEMA = {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT}
_LIMIT = query_parameter("limit", _LIMIT_SCHEMA, f"at most this many ({DEFAULT_LIMIT})")

ENDPOINTS: tuple[Endpoint, ...] = (
    Endpoint(
        "GET",
        f"{DEVICE_PATH}/telemetry",
        device_telemetry,
        Role.VIEWER,
        "A device's telemetry per time bucket (requests, errors, throughput, p50, p95)",
        response="TelemetrySeries",
        parameters=(
            DEVICE_ID_PARAMETER,
            query_parameter("model", {"type": "string"}, "one model (default: all)"),
            query_parameter("since", _TIME, "ISO 8601 start (default: 24 hours ago)"),
            query_parameter(
                "bucket",
                {"type": "integer", "minimum": MIN_BUCKET_S, "maximum": MAX_BUCKET_S},
                f"bucket width in seconds ({DEFAULT_BUCKET_S}); at most {MAX_BUCKETS} buckets",
            ),
        ),
        errors=(400, 404),
    ),
    Endpoint(
        "GET",
        f"{DEVICE_PATH}/events",
        device_events,
        Role.VIEWER,
        "A device's events, newest first",
        response="DeviceEventList",
        parameters=(
            DEVICE_ID_PARAMETER,
            _LIMIT,
            query_parameter("before", _TIME, "only events before this time (next_before)"),
        ),
        errors=(400, 404),
    ),
    Endpoint(
        "GET",
        f"{DEVICE_PATH}/presence",
        device_presence,
        Role.VIEWER,
        "Whether a device is online, and its presence changes, newest first",
        response="DevicePresence",
        parameters=(DEVICE_ID_PARAMETER, _LIMIT),
        errors=(400, 404),
    ),
    Endpoint(
        "GET",
        f"{PREFIX}/ingest/stats",
        ingest_stats,
        Role.VIEWER,
        "This replica's telemetry ingest counters",
        response="IngestStats",
    ),
)
