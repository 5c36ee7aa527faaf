"""`edgefleet mqtt tail`, run as operators run it, against Mosquitto."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from shared.cli import main
from shared.mqtt.broker import MosquittoBroker, free_port
from shared.mqtt.client import MqttSettings
from shared.mqtt.envelope import SCHEMA_STATUS, SCHEMA_TELEMETRY, Envelope, encode
from shared.mqtt.tail_cli import tail_filters
from shared.mqtt.topics import device_topic
from tests.shared.mqtt.conftest import Connect


async def tail(broker: MosquittoBroker, connect: Connect, device_id: str, *options: str) -> str:
    """Run `edgefleet mqtt tail` for three messages: telemetry, garbage, retained status."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.cli",
        "--log-level",
        "WARNING",
        "mqtt",
        "tail",
        "--mqtt",
        broker.url,
        "--device",
        device_id,
        "--count",
        "3",
        *options,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    try:
        async with asyncio.timeout(30):
            assert (await process.stderr.readline()).startswith(b"listening on mqtt://")
            device = await connect(MqttSettings(broker.url, device_id))
            telemetry = Envelope(SCHEMA_TELEMETRY, device_id, 1, 1767225600.5, {"p50_ms": 1.5})
            await device.publish(device_topic(device_id, "telemetry"), encode(telemetry))
            await device.publish(device_topic(device_id, "events"), b"garbage")
            status = Envelope(SCHEMA_STATUS, device_id, 2, 1767225601.0, {"state": "online"})
            await device.publish(device_topic(device_id, "status"), encode(status), retain=True)
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    assert "2 messages, 1 malformed, 1 json" in err.decode()
    return out.decode()


async def test_tail_prints_each_message_and_counts_malformed_ones(
    mosquitto: MosquittoBroker, connect: Connect, device_id: str
) -> None:
    lines = (await tail(mosquitto, connect, device_id)).splitlines()
    assert lines == [
        f"2026-01-01T00:00:00.500+00:00  edgefleet/v1/dev/{device_id}/telemetry  "
        'edgefleet.telemetry/1  seq=1  {"p50_ms":1.5}',
        f"MALFORMED  edgefleet/v1/dev/{device_id}/events  json: not JSON: Expecting value at "
        "line 1 column 1",
        f"2026-01-01T00:00:01.000+00:00  edgefleet/v1/dev/{device_id}/status  "
        'edgefleet.status/1  seq=2  {"state":"online"}',
    ]


async def test_tail_prints_json_lines(
    mosquitto: MosquittoBroker, connect: Connect, device_id: str
) -> None:
    records = [
        json.loads(line)
        for line in (await tail(mosquitto, connect, device_id, "--json")).splitlines()
    ]
    assert records[0] == {
        "topic": device_topic(device_id, "telemetry"),
        "retained": False,
        "schema": SCHEMA_TELEMETRY,
        "device_id": device_id,
        "seq": 1,
        "time": 1767225600.5,
        "payload": {"p50_ms": 1.5},
    }
    assert records[1]["malformed"].startswith("json: ")
    assert records[2]["schema"] == SCHEMA_STATUS


def test_tail_filters() -> None:
    assert tail_filters("d1", None) == ["edgefleet/v1/dev/d1/+"]
    assert tail_filters("d1", "status") == ["edgefleet/v1/dev/d1/status"]
    assert tail_filters(None, "telemetry") == ["edgefleet/v1/dev/+/telemetry"]
    assert tail_filters(None, "cmd") == ["edgefleet/v1/dev/+/cmd", "edgefleet/v1/group/+/cmd"]
    assert tail_filters(None, None) == ["edgefleet/v1/dev/+/+", "edgefleet/v1/group/+/cmd"]


def test_tail_fails_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mqtt", "tail", "--mqtt", "http://broker"]) == 1
    assert "scheme must be mqtt or mqtts" in capsys.readouterr().err
    assert main(["mqtt", "tail", "--mqtt", "mqtt://b", "--device", "a/b"]) == 1
    assert "device id 'a/b'" in capsys.readouterr().err
    unreachable = f"mqtt://127.0.0.1:{free_port()}"
    assert main(["mqtt", "tail", "--mqtt", unreachable, "--connect-timeout", "0.2"]) == 1
    assert "ConnectionRefusedError" in capsys.readouterr().err
    assert main(["mqtt", "tail", "--mqtt", unreachable, "--password-env", "NO_SUCH_VAR"]) == 1
    assert "$NO_SUCH_VAR is not set" in capsys.readouterr().err
