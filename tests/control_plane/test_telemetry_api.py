"""The telemetry API end to end: an app with its ingest on a real Mosquitto, read over HTTP."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.api.app import build_app
from control_plane.api.state import MQTT
from control_plane.db.engine import open_session
from control_plane.roles import Role
from control_plane.settings import ControlPlaneSettings
from control_plane.tokens import create_token
from shared.mqtt.broker import MosquittoBroker
from shared.mqtt.client import MqttClient, MqttSettings
from shared.mqtt.topics import device_topic
from tests.control_plane.telemetry_builders import (
    enroll,
    envelope,
    eventually,
    lifecycle,
    model_entry,
    status_online,
    telemetry,
)
from tests.shared.mqtt.conftest import mosquitto  # noqa: F401

Client = TestClient[Any, Any]


@pytest.fixture
def device() -> str:
    return f"dev-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def viewer(engine: AsyncEngine) -> dict[str, str]:
    """Headers with a viewer token."""
    async with open_session(engine) as session:
        secret = await create_token(session, "viewer", Role.VIEWER)
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
async def client(
    tmp_path: Path,
    engine: AsyncEngine,
    database_url: str,
    mosquitto: MosquittoBroker,  # noqa: F811
) -> AsyncIterator[Client]:
    """The API, with its ingest subscribed to the session's Mosquitto."""
    settings = ControlPlaneSettings.build(
        {},
        data_dir=tmp_path,
        database_url=database_url,
        mqtt_url=mosquitto.url,
        mqtt_share_group=f"api-{uuid.uuid4().hex[:8]}",
        ingest_batch_delay_s=0.02,
    )
    async with TestClient(TestServer(build_app(settings))) as client:
        yield client


async def test_what_a_device_publishes_is_served_by_the_api(
    client: Client,
    viewer: dict[str, str],
    engine: AsyncEngine,
    mosquitto: MosquittoBroker,  # noqa: F811
    device: str,
) -> None:
    await enroll(engine, device)
    sent = [
        ("status", status_online()),
        ("telemetry", telemetry(model_entry(requests=10, errors={"backend": 2}))),
        ("events", lifecycle("mlp", 1, "probation")),
        ("events", lifecycle("mlp", 1, "active")),
    ]
    async with MqttClient(MqttSettings(mosquitto.url, f"pub-{device}")) as publisher:
        await publisher.wait_connected(10)
        await eventually(lambda: _subscribed(client))
        for seq, (kind, payload) in enumerate(sent, start=1):
            await publisher.publish(
                device_topic(device, kind), envelope(kind, device, seq, payload)
            )

    async def all_stored() -> bool:
        stats = await (await client.get("/api/v1/ingest/stats", headers=viewer)).json()
        return bool(stats["stored"] == len(sent))

    await eventually(all_stored)
    stats = await (await client.get("/api/v1/ingest/stats", headers=viewer)).json()
    assert stats["enabled"] is True
    assert stats["filters"][0].startswith("$share/api-")
    assert (stats["received"], stats["rejected"], stats["dropped"]) == (4, 0, 0)

    base = f"/api/v1/devices/{device}"
    series = await (
        await client.get(f"{base}/telemetry?model=mlp&bucket=60", headers=viewer)
    ).json()
    assert series["bucket_s"] == 60
    assert [(p["requests"], p["errors"]) for p in series["series"]] == [(10, 2)]
    assert series["series"][0]["p50_s"] is not None

    events = await (await client.get(f"{base}/events", headers=viewer)).json()
    assert [e["name"] for e in events["events"]] == ["active", "probation"]  # newest first
    assert events["next_before"] is None
    page = await (await client.get(f"{base}/events?limit=1", headers=viewer)).json()
    assert [e["name"] for e in page["events"]] == ["active"]
    rest = await client.get(
        f"{base}/events", params={"before": page["next_before"]}, headers=viewer
    )
    assert [e["name"] for e in (await rest.json())["events"]] == ["probation"]

    presence = await (await client.get(f"{base}/presence", headers=viewer)).json()
    assert presence["online"] is True
    assert presence["last_seen_at"] is not None
    assert [c["online"] for c in presence["changes"]] == [True]


async def _subscribed(client: Client) -> bool:
    # The app's client connects in the background; it reports connected only once the broker
    # acknowledged every subscription, the ingest's included.
    app = client.app
    assert app is not None
    broker = app[MQTT]
    return broker is not None and broker.connected


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/devices/{device}/telemetry?bucket=1", 400),
        ("/api/v1/devices/{device}/telemetry?bucket=60&since=2000-01-01T00:00:00Z", 400),
        ("/api/v1/devices/{device}/telemetry?since=yesterday", 400),
        ("/api/v1/devices/{device}/events?limit=0", 400),
        ("/api/v1/devices/{device}/presence?limit=x", 400),
        ("/api/v1/devices/nobody/telemetry", 404),
        ("/api/v1/devices/nobody/events", 404),
        ("/api/v1/devices/nobody/presence", 404),
    ],
)
async def test_bad_queries_and_unknown_devices(
    client: Client,
    viewer: dict[str, str],
    engine: AsyncEngine,
    device: str,
    path: str,
    status: int,
) -> None:
    await enroll(engine, device)
    response = await client.get(path.format(device=device), headers=viewer)
    assert response.status == status
    assert "error" in await response.json()


async def test_the_routes_need_a_token(client: Client, device: str) -> None:
    for path in (f"/api/v1/devices/{device}/telemetry", "/api/v1/ingest/stats"):
        assert (await client.get(path)).status == 401


async def test_without_a_broker_there_is_no_ingest(
    tmp_path: Path, engine: AsyncEngine, database_url: str, viewer: dict[str, str]
) -> None:
    settings = ControlPlaneSettings.build({}, data_dir=tmp_path, database_url=database_url)
    async with TestClient(TestServer(build_app(settings))) as client:
        response = await client.get("/api/v1/ingest/stats", headers=viewer)
        assert await response.json() == {"enabled": False}


async def test_the_openapi_document_lists_the_routes(client: Client) -> None:
    document = await (await client.get("/api/v1/openapi.json")).json()
    for path in ("telemetry", "events", "presence"):
        operation = document["paths"][f"/api/v1/devices/{{device_id}}/{path}"]["get"]
        assert operation["x-minimum-role"] == "viewer"
    assert "IngestStats" in document["components"]["schemas"]
