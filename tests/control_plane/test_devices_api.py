"""The device inventory API: filters, paging, cursors, groups, and changing a device."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.db.engine import open_session
from control_plane.db.models import Device, DeviceGroup, DeviceLabel, utcnow
from control_plane.settings import ControlPlaneSettings
from tests.control_plane.fleet import Client, api_client, bearer, cp_settings, role_secrets

BACKENDS = ("gpu", "openvino", "arm-cpu", "x86-cpu")


async def seed(engine: AsyncEngine, count: int) -> None:
    """`count` devices d00000...: every 2nd online, backends in turn, regions eu/us, groups
    all + even/odd, label tier=gold on every 5th, and every 3rd serving model "mlp"."""
    now = utcnow()
    devices, groups, labels = [], [], []
    for i in range(count):
        device_id = f"d{i:05d}"
        devices.append(
            {
                "id": device_id,
                "region": "eu" if i % 2 else "us",
                "enrolled_at": now,
                "public_key": "-",
                "online": i % 2 == 0,
                "models": [{"model": "mlp", "version": 1}] if i % 3 == 0 else [],
                "backend_class": BACKENDS[i % 4],
            }
        )
        groups += [
            {"device_id": device_id, "group": "all"},
            {"device_id": device_id, "group": "even" if i % 2 == 0 else "odd"},
        ]
        if i % 5 == 0:
            labels.append({"device_id": device_id, "key": "tier", "value": "gold"})
        labels.append({"device_id": device_id, "key": "rack", "value": str(i % 7)})
    # In chunks: preparing the parameters of thousands of rows at once would hold the loop.
    for table, rows in ((Device, devices), (DeviceGroup, groups), (DeviceLabel, labels)):
        for start in range(0, len(rows), 500):
            async with open_session(engine) as session:
                await session.execute(insert(table), rows[start : start + 500])


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> ControlPlaneSettings:
    return cp_settings(tmp_path, database_url)  # makes keys: not on the event loop


@pytest.fixture
async def client(settings: ControlPlaneSettings, engine: AsyncEngine) -> AsyncIterator[Client]:
    async with api_client(settings) as client:
        yield client


@pytest.fixture
async def secrets(engine: AsyncEngine) -> dict[str, str]:
    return await role_secrets(engine)


async def listing(client: Client, token: str, query: str) -> dict[str, Any]:
    response = await client.get(f"/api/v1/devices?{query}", headers=bearer(token))
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


def ids(body: dict[str, Any]) -> list[str]:
    return [device["id"] for device in body["devices"]]


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", lambda i: True),
        ("group=even", lambda i: i % 2 == 0),
        ("label=tier=gold", lambda i: i % 5 == 0),
        ("label=tier=gold&label=rack=0", lambda i: i % 35 == 0),
        ("status=online", lambda i: i % 2 == 0),
        ("status=offline", lambda i: i % 2 == 1),
        ("backend=gpu", lambda i: i % 4 == 0),
        ("region=eu&backend=openvino", lambda i: i % 4 == 1),
        ("model=mlp", lambda i: i % 3 == 0),
        ("model=resnet", lambda i: False),
        ("q=d0001", lambda i: 10 <= i <= 19),
        ("group=odd&model=mlp&status=offline", lambda i: i % 6 == 3),
    ],
)
async def test_filters(
    client: Client, engine: AsyncEngine, secrets: dict[str, str], query: str, expected: Any
) -> None:
    await seed(engine, 70)
    body = await listing(client, secrets["viewer"], f"limit=1000&{query}")
    wanted = [f"d{i:05d}" for i in range(70) if expected(i)]
    assert ids(body) == wanted
    assert body["total"] == len(wanted)


async def test_paging_by_offset_and_by_cursor(
    client: Client, engine: AsyncEngine, secrets: dict[str, str]
) -> None:
    await seed(engine, 25)
    token = secrets["viewer"]
    first = await listing(client, token, "limit=10&group=all")
    assert (ids(first)[0], first["total"], first["next_cursor"]) == ("d00000", 25, "d00009")
    third = await listing(client, token, "limit=10&offset=20")
    assert ids(third) == [f"d{i:05d}" for i in range(20, 25)]
    assert third["next_cursor"] is None
    seen, cursor = [], None
    while True:
        page = await listing(client, token, "limit=10" + (f"&after={cursor}" if cursor else ""))
        seen += ids(page)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"d{i:05d}" for i in range(25)]
    first_device = first["devices"][0]
    assert first_device["groups"] == ["all", "even"]
    assert first_device["labels"] == {"rack": "0", "tier": "gold"}


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=1001", "offset=-1", "limit=x", "status=asleep", "label=novalue"]
)
async def test_bad_queries_are_400(client: Client, secrets: dict[str, str], query: str) -> None:
    response = await client.get(f"/api/v1/devices?{query}", headers=bearer(secrets["viewer"]))
    assert response.status == 400


async def test_ten_thousand_devices_page_and_count(
    client: Client, engine: AsyncEngine, secrets: dict[str, str]
) -> None:
    await seed(engine, 10_000)
    body = await listing(client, secrets["viewer"], "limit=50&after=d05000&label=tier=gold")
    assert body["total"] == 2000
    assert ids(body)[:2] == ["d05005", "d05010"]
    groups = await client.get("/api/v1/groups", headers=bearer(secrets["viewer"]))
    assert (await groups.json())["groups"] == [
        {"name": "all", "devices": 10_000, "online": 5000, "offline": 5000},
        {"name": "even", "devices": 5000, "online": 5000, "offline": 0},
        {"name": "odd", "devices": 5000, "online": 0, "offline": 5000},
    ]


async def test_patch_sets_groups_labels_region_and_is_audited(
    client: Client, engine: AsyncEngine, secrets: dict[str, str]
) -> None:
    await seed(engine, 1)
    operator = bearer(secrets["operator"])
    change = {"groups": ["canary", "all"], "labels": {"tier": "silver"}, "region": "ap"}
    response = await client.patch("/api/v1/devices/d00000", json=change, headers=operator)
    assert response.status == 200
    device = await response.json()
    assert (device["groups"], device["labels"], device["region"]) == (
        ["all", "canary"], {"tier": "silver"}, "ap",
    )  # fmt: skip
    only_region = await client.patch(
        "/api/v1/devices/d00000", json={"region": None}, headers=operator
    )
    assert (await only_region.json())["groups"] == ["all", "canary"]

    audit = await client.get("/api/v1/audit", headers=bearer(secrets["admin"]))
    entries = (await audit.json())["entries"]
    assert [e["action"] for e in entries] == ["device.update", "device.update"]
    assert entries[1]["before"]["groups"] == ["all", "even"]
    assert entries[1]["after"]["labels"] == {"tier": "silver"}
    assert entries[0]["after"]["region"] is None

    for bad in ({}, {"groups": "x"}, {"name": "y"}):
        assert (
            await client.patch("/api/v1/devices/d00000", json=bad, headers=operator)
        ).status == 400
    missing = await client.patch("/api/v1/devices/nope", json={"region": "x"}, headers=operator)
    assert missing.status == 404
    assert (await client.get("/api/v1/devices/nope", headers=operator)).status == 404


async def test_groups_leave_out_revoked_devices(
    client: Client, engine: AsyncEngine, secrets: dict[str, str]
) -> None:
    await seed(engine, 4)
    revoked = await client.post("/api/v1/devices/d00000/revoke", headers=bearer(secrets["admin"]))
    assert revoked.status == 200
    assert (await revoked.json())["revoked_at"] is not None
    groups = await client.get("/api/v1/groups", headers=bearer(secrets["viewer"]))
    assert (await groups.json())["groups"][0] == {
        "name": "all", "devices": 3, "online": 1, "offline": 2,
    }  # fmt: skip
