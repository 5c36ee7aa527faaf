"""Pages with data in them, the bundle upload, the rollout form, and the live stream.

Rows are written straight into the database (a device with its status, a `selection` event
with benchmark figures, telemetry, presence) and the pages are read as HTML; the live stream is
read as the browser reads it, and must end at once when the server stops.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio

from control_plane.db.engine import create_engine_for, open_session
from control_plane.db.models import Device, DeviceEvent, PresenceChange, TelemetrySample, utcnow
from shared.histogram import LATENCY_COUNTS_LENGTH
from tests.agent.bundles.factory import Fleet
from tests.dashboard.client import Dashboard, dashboard_app

pytestmark = pytest.mark.asyncio(loop_scope="session")

SELECTION = {
    "model": "mlp",
    "policy": "latency",
    "chosen": "onnxruntime/CPU/mlp.onnx",
    "source": "measured",
    "measurements": [
        {
            "candidate": "onnxruntime/CPU/mlp.onnx",
            "precision": "fp32",
            "ok": True,
            "error": None,
            "load_ms": 12.1,
            "latency_ms_p50": 0.031,
            "latency_ms_p95": 0.045,
            "throughput_rows_s": 410000.0,
            "max_batch": 32,
        },
        {
            "candidate": "openvino/CPU/mlp.xml",
            "precision": "fp32",
            "ok": False,
            "error": "compile failed",
            "load_ms": 40.0,
            "latency_ms_p50": None,
            "latency_ms_p95": None,
            "throughput_rows_s": None,
            "max_batch": None,
        },
    ],
}


@pytest_asyncio.fixture(loop_scope="session")
async def app(tmp_path: Path) -> AsyncIterator[Dashboard]:
    async with dashboard_app(tmp_path) as running:
        yield running


async def add_device(database_url: str, device_id: str) -> None:
    """A device serving mlp v1 on onnxruntime, with a selection, telemetry and presence."""
    now = utcnow()
    engine = create_engine_for(database_url)
    try:
        async with open_session(engine) as session:
            session.add(
                Device(
                    id=device_id,
                    public_key="-",
                    online=True,
                    last_seen_at=now,
                    agent_version="0.1.0",
                    hardware={"arch": "x86_64", "cpu_model": "EPYC", "gpus": []},
                    models=[
                        {
                            "model": "mlp",
                            "version": 1,
                            "state": "READY",
                            "backend": "onnxruntime/CPU",
                        }
                    ],
                    backend_class="x86-cpu",
                )
            )
            session.add(PresenceChange(device_id=device_id, time=now, online=True))
            session.add(
                DeviceEvent(
                    device_id=device_id,
                    seq=1,
                    time=now - timedelta(minutes=5),
                    kind="selection",
                    model="mlp",
                    version=1,
                    name="onnxruntime/CPU",
                    payload={"kind": "selection", "selection": SELECTION},
                )
            )
            for minute in range(30):
                counts = [0] * LATENCY_COUNTS_LENGTH
                counts[5] = 90
                session.add(
                    TelemetrySample(
                        device_id=device_id,
                        seq=100 + minute,
                        time=now - timedelta(minutes=minute),
                        model="mlp",
                        version=1,
                        backend="onnxruntime/CPU",
                        interval_s=60.0,
                        requests=100,
                        errors=minute % 3,
                        latency_counts=counts,
                        throughput_rps=100 / 60,
                    )
                )
    finally:
        await engine.dispose()


async def test_a_device_page_shows_its_backend_figures_and_charts(app: Dashboard) -> None:
    await add_device(app.database_url, "edge-7")
    await app.sign_in("viewer")
    page = await (await app.client.get("/devices/edge-7?window=1h")).text()
    assert "onnxruntime/CPU/mlp.onnx" in page
    assert "410,000 rows/s" in page
    assert "compile failed" in page  # a candidate that failed is shown with its error
    assert page.count("<polyline") >= 3  # p50, p95, throughput (errors too)
    assert 'aria-label="Latency p50 and p95, milliseconds"' in page
    assert 'data-live="device:edge-7"' in page
    listing = await (await app.client.get("/devices?model=mlp&version=1&backend=x86-cpu")).text()
    assert "edge-7" in listing
    listing = await (await app.client.get("/devices?model=mlp&version=2")).text()
    assert "edge-7" not in listing
    assert (await app.client.get("/devices?version=2")).status == 400  # a version needs a model
    overview = await (await app.client.get("/")).text()
    assert "x86-cpu" in overview
    assert "v1" in overview


async def test_uploading_a_bundle_is_the_apis_upload(app: Dashboard, tmp_path: Path) -> None:
    release = await asyncio.to_thread(app.keys.load_key, "release")
    bundle = await asyncio.to_thread(
        Fleet(tmp_path / "bundles").fake_bundle, "mlp", 3, signer=release
    )
    data = await asyncio.to_thread(bundle.path.read_bytes)
    csrf = await app.sign_in("operator")
    headers = {"Accept": "application/json", "Content-Type": "application/octet-stream"}
    response = await app.client.post("/models/upload", data=data, headers=headers)
    assert response.status == 403  # no CSRF header
    headers["X-CSRF-Token"] = csrf
    response = await app.client.post("/models/upload", data=data, headers=headers)
    assert response.status == 201, await response.text()
    body = await response.json()
    assert (body["name"], body["version"], body["uploaded_by"]) == ("mlp", 3, "operator")
    response = await app.client.post("/models/upload", data=data[:-10], headers=headers)
    assert response.status == 400
    assert "error" in await response.json()
    page = await (await app.client.get("/models/mlp/versions/3")).text()
    assert bundle.digest in page
    assert "model.fake" in page


async def test_the_rollout_form_shows_its_error_and_keeps_the_values(app: Dashboard) -> None:
    csrf = await app.sign_in("operator")
    form = {"csrf_token": csrf, "release": "mlp:9", "target": "group:nobody", "canary": "1"}
    response = await app.client.post("/rollouts", data=form)
    assert response.status == 404
    page = await response.text()
    assert "no version 9 of model" in page
    assert 'value="group:nobody"' in page
    response = await app.client.post("/rollouts", data={**form, "wait_s": "soon"})
    assert response.status == 400
    assert "must be a number" in await response.text()


async def test_the_live_stream_sends_changes_and_ends_when_the_server_stops(
    app: Dashboard,
) -> None:
    await app.sign_in("viewer")
    response = await app.client.get("/dashboard/events?topic=fleet@stale")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert await response.content.readuntil(b"\n\n") == b"retry: 2000\n\n"
    first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
    assert first.startswith(b"event: update\ndata: ")
    update = json.loads(first.split(b"data: ", 1)[1])
    assert update["topic"] == "fleet"
    assert 'id="online-count">0<' in update["html"]
    await add_device(app.database_url, "edge-8")  # the next update counts it
    second = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 10)
    assert 'id="online-count">1<' in json.loads(second.split(b"data: ", 1)[1])["html"]
    started = time.monotonic()
    await app.client.server.close()
    assert time.monotonic() - started < 5  # shutdown did not wait for the open stream
    assert await asyncio.wait_for(response.content.read(), 5) == b""
