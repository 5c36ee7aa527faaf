"""The fleet summaries the dashboard shows, on SQLite and PostgreSQL: counts per region,
backend and model version, the model-version filter, and device history (events, presence,
failures, backend selections)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane import device_history
from control_plane.db.engine import open_session
from control_plane.db.models import Device, DeviceEvent, PresenceChange, utcnow
from control_plane.devices import DeviceFilter, fleet_counts, list_devices, version_counts


async def seed(engine: AsyncEngine) -> None:
    """Six devices: regions eu/us/none, two revoked-free backends, models at v1 and v2."""
    now = utcnow()
    rows = [
        ("a", "eu", "x86-cpu", True, [{"model": "mlp", "version": 1}]),
        ("b", "eu", "x86-cpu", False, [{"model": "mlp", "version": 2}]),
        ("c", "us", "gpu", True, [{"model": "mlp", "version": 2}, {"model": "cnn", "version": 1}]),
        # During a probation a device reports both versions of a model.
        ("d", None, "gpu", True, [{"model": "mlp", "version": 1}, {"model": "mlp", "version": 2}]),
        ("e", "us", "arm-cpu", False, []),
        ("f", "us", "arm-cpu", True, [{"model": "mlp", "version": 1}]),
    ]
    async with open_session(engine) as session:
        await session.execute(
            insert(Device),
            [
                {
                    "id": device_id,
                    "region": region,
                    "enrolled_at": now,
                    "public_key": "-",
                    "online": online,
                    "models": models,
                    "backend_class": backend,
                    "revoked_at": now if device_id == "f" else None,
                }
                for device_id, region, backend, online, models in rows
            ],
        )


async def test_fleet_counts_per_region_and_backend(engine: AsyncEngine) -> None:
    await seed(engine)
    async with open_session(engine) as session:
        counts = await fleet_counts(session)
    assert (counts.online, counts.offline) == (3, 2)  # f is revoked
    regions = {c.name: (c.online, c.offline) for c in counts.regions}
    assert regions == {"": (1, 0), "eu": (1, 1), "us": (1, 1)}
    backends = {c.name: (c.online, c.offline) for c in counts.backends}
    assert backends == {"x86-cpu": (1, 1), "gpu": (2, 0), "arm-cpu": (0, 1)}


async def test_devices_per_model_version_and_the_version_filter(engine: AsyncEngine) -> None:
    await seed(engine)
    async with open_session(engine) as session:
        counts = await version_counts(session)
        found = [(c.model, c.version, c.devices) for c in counts]
        on_v2 = await list_devices(session, DeviceFilter(model="mlp", version=2), 10, 0, None)
        on_v1 = await list_devices(session, DeviceFilter(model="mlp", version=1), 10, 0, None)
        any_mlp = await list_devices(session, DeviceFilter(model="mlp"), 10, 0, None)
    assert found == [("cnn", 1, 1), ("mlp", 1, 2), ("mlp", 2, 3)]
    assert [d.id for d in on_v2.devices] == ["b", "c", "d"]
    assert [d.id for d in on_v1.devices] == ["a", "d", "f"]  # the list shows revoked ones too
    assert any_mlp.total == 5


async def test_device_history(engine: AsyncEngine) -> None:
    await seed(engine)
    now = utcnow()
    events = [
        ("a", 1, now - timedelta(hours=30), "lifecycle", "failed"),  # outside 24 hours
        ("a", 2, now - timedelta(minutes=9), "selection", "onnxruntime/CPU"),
        ("a", 3, now - timedelta(minutes=8), "lifecycle", "active"),
        ("b", 1, now - timedelta(minutes=7), "lifecycle", "reverted"),
        ("c", 1, now - timedelta(minutes=6), "lifecycle", "failed"),
        ("a", 4, now - timedelta(minutes=5), "selection", "openvino/GPU"),
    ]
    async with open_session(engine) as session:
        for device_id, seq, time, kind, name in events:
            session.add(
                DeviceEvent(
                    device_id=device_id,
                    seq=seq,
                    time=time,
                    kind=kind,
                    model="mlp",
                    version=1,
                    name=name,
                    payload={"seq": seq},
                )
            )
        for minutes, online in ((30, True), (20, False), (10, True)):
            session.add(
                PresenceChange(device_id="a", time=now - timedelta(minutes=minutes), online=online)
            )
    async with open_session(engine) as session:
        newest = await device_history.device_events(session, "a", 2)
        older = await device_history.device_events(session, "a", 10, before=newest[-1].time)
        failures = await device_history.recent_failures(session, now - timedelta(hours=24), 10)
        presence = await device_history.presence_changes(session, "a", 2)
        selections = await device_history.latest_selections(session, "a")
    assert [e.seq for e in newest] == [4, 3]
    assert [e.seq for e in older] == [2, 1]
    assert [(e.device_id, e.name) for e in failures] == [("c", "failed"), ("b", "reverted")]
    assert [p.online for p in presence] == [True, False]
    assert {key: e.name for key, e in selections.items()} == {("mlp", 1): "openvino/GPU"}
