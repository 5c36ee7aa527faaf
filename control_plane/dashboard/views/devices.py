"""Devices: the filtered, paged list, and one device in detail.

The list is `control_plane.devices.list_devices`, the same query as `GET /api/v1/devices` (SQL
filters on indexed columns, a page by id), 50 devices a page. A device's page shows its
inventory as the API does (`device_detail`), the backend chosen for each model with the
figures it was chosen on (its newest `selection` event), charts of latency, throughput and
errors (`fleet_stats.device_series`), and, live, its status, models, events and presence.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from aiohttp import web
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane.api.devices import device_detail, device_summary
from control_plane.api.errors import InvalidRequest
from control_plane.api.state import ENGINE
from control_plane.dashboard.access import Page
from control_plane.dashboard.charts import Series, line_chart
from control_plane.dashboard.live import Topic
from control_plane.dashboard.render import live_part, render
from control_plane.db.engine import open_session
from control_plane.db.models import Device, DeviceGroup, Rollout, RolloutDevice, utcnow
from control_plane.device_history import device_events, latest_selections, presence_changes
from control_plane.devices import DeviceFilter, get_device, list_devices
from control_plane.fleet_stats import device_series

PAGE_SIZE = 50
MAX_QUERY_CHARS = 200
BACKENDS = ("gpu", "openvino", "arm-cpu", "x86-cpu", "unknown")
STATUSES = {"online": True, "offline": False}
FILTERS = ("q", "group", "label", "status", "backend", "region", "model", "version")
WINDOWS = {  # chart window -> (length, bucket seconds)
    "1h": (timedelta(hours=1), 60),
    "6h": (timedelta(hours=6), 300),
    "24h": (timedelta(hours=24), 900),
    "7d": (timedelta(days=7), 3600),
}
DEFAULT_WINDOW = "6h"
EVENTS_SHOWN = 25
PRESENCE_SHOWN = 20
ROLLOUTS_SHOWN = 10


def parse_filters(query: Any) -> tuple[DeviceFilter, dict[str, str]]:
    """The list's filters from the query string, and the same as text for the form."""
    text = {name: query.get(name, "").strip() for name in FILTERS}
    for name, value in text.items():
        if len(value) > MAX_QUERY_CHARS:
            raise InvalidRequest(f"{name} is longer than {MAX_QUERY_CHARS} characters")
    labels: tuple[tuple[str, str], ...] = ()
    if text["label"]:
        key, sep, value = text["label"].partition("=")
        if not sep or not key:
            raise InvalidRequest(f"a label filter is KEY=VALUE, not {text['label']!r}")
        labels = ((key.strip(), value.strip()),)
    if text["version"] and not text["version"].isdigit():
        raise InvalidRequest("version must be a whole number")
    if text["version"] and not text["model"]:
        raise InvalidRequest("a version filter needs the model too")
    filters = DeviceFilter(
        group=text["group"] or None,
        labels=labels,
        online=STATUSES.get(text["status"]),
        backend=text["backend"] or None,
        region=text["region"] or None,
        model=text["model"] or None,
        version=int(text["version"]) if text["version"] else None,
        search=text["q"] or None,
    )
    return filters, text


async def device_list(request: web.Request) -> web.Response:
    """Devices by id, filtered, 50 a page."""
    filters, text = parse_filters(request.query)
    raw_page = request.query.get("page", "1")
    number = int(raw_page) if raw_page.isdigit() and int(raw_page) > 0 else 1
    async with open_session(request.app[ENGINE]) as session:
        page = await list_devices(session, filters, PAGE_SIZE, (number - 1) * PAGE_SIZE, None)
        groups = list(
            await session.scalars(select(DeviceGroup.group).distinct().order_by(DeviceGroup.group))
        )
        regions = list(
            await session.scalars(
                select(Device.region)
                .where(Device.region.is_not(None))
                .distinct()
                .order_by(Device.region)
            )
        )
    devices = [device_summary(d, page.groups[d.id], page.labels[d.id]) for d in page.devices]
    pages = max(1, math.ceil(page.total / PAGE_SIZE))
    kept = {name: value for name, value in text.items() if value}
    return render(
        request,
        "devices/list.html",
        {
            "devices": devices,
            "total": page.total,
            "page": number,
            "pages": pages,
            "filters": text,
            "groups": groups,
            "regions": regions,
            "backends": BACKENDS,
            "page_url": lambda n: "/devices?" + urlencode({**kept, "page": n}),
        },
    )


async def load_device_live(session: AsyncSession, device_id: str) -> dict[str, Any]:
    """The live part of a device's page: its status, models, events and presence."""
    device = await get_device(session, device_id)
    return {
        "device": {
            "id": device.id,
            "online": device.online,
            "last_seen_at": device.last_seen_at,
            "agent_version": device.agent_version,
            "backend_class": device.backend_class,
            "revoked_at": device.revoked_at,
            "models": [m for m in device.models or [] if isinstance(m, dict)],
        },
        "events": await device_events(session, device_id, EVENTS_SHOWN),
        "presence": await presence_changes(session, device_id, PRESENCE_SHOWN),
    }


DEVICE_TOPIC = Topic("device", "devices/_live.html", load_device_live, argument=True)


def _charts(series: list[dict[str, Any]], start: datetime, end: datetime, bucket_s: int) -> Any:
    def points(key: str, scale: float = 1.0) -> list[tuple[datetime, float | None]]:
        return [
            (
                datetime.fromisoformat(p["start"]),
                None if p[key] is None else p[key] * scale,
            )
            for p in series
        ]

    gap = bucket_s * 1.5
    return {
        "latency": line_chart(
            "Latency p50 and p95, milliseconds",
            [Series("p50", points("p50_s", 1000)), Series("p95", points("p95_s", 1000))],
            start,
            end,
            "ms",
            gap,
        ),
        "throughput": line_chart(
            "Throughput, requests per second",
            [Series("requests/s", points("throughput_rps"))],
            start,
            end,
            "req/s",
            gap,
        ),
        "errors": line_chart(
            f"Errors per {bucket_s // 60}-minute bucket",
            [Series("errors", points("errors"))],
            start,
            end,
            "errors",
            gap,
        ),
    }


async def device_page(request: web.Request) -> web.Response:
    """One device: hardware, backends and their figures, models, charts, events, presence."""
    device_id = request.match_info["device_id"]
    window = request.query.get("window", DEFAULT_WINDOW)
    if window not in WINDOWS:
        window = DEFAULT_WINDOW
    length, bucket_s = WINDOWS[window]
    model = request.query.get("model", "")[:MAX_QUERY_CHARS] or None
    end = utcnow()
    start = end - length
    async with open_session(request.app[ENGINE]) as session:
        live = await load_device_live(session, device_id)
        device = await get_device(session, device_id)
        detail = await device_detail(session, device)
        selections = await latest_selections(session, device_id)
        series = await device_series(session, device_id, model, start, bucket_s)
        rollouts = (
            await session.execute(
                select(RolloutDevice, Rollout)
                .join(Rollout, Rollout.id == RolloutDevice.rollout_id)
                .where(RolloutDevice.device_id == device_id)
                .order_by(Rollout.id.desc())
                .limit(ROLLOUTS_SHOWN)
            )
        ).all()
    part = live_part(request, DEVICE_TOPIC, f"device:{device_id}", live)
    names = sorted({m.get("model") for m in live["device"]["models"]} - {None})
    return render(
        request,
        "devices/detail.html",
        {
            "live": part,
            "detail": detail,
            "selections": [
                {
                    "model": key[0],
                    "version": key[1],
                    "backend": event.name,
                    "time": event.time,
                    "report": event.payload.get("selection") or {},
                }
                for key, event in sorted(selections.items(), key=lambda kv: str(kv[0]))
            ],
            "series": series,
            "charts": _charts(series, start, end, bucket_s),
            "window": window,
            "windows": list(WINDOWS),
            "model": model,
            "models": names,
            "rollouts": rollouts,
            "chart_url": lambda **q: (
                "?"
                + urlencode({k: v for k, v in {"window": window, "model": model, **q}.items() if v})
            ),
        },
    )


PAGES = (
    Page("GET", "/devices", device_list),
    Page("GET", "/devices/{device_id}", device_page),
)
