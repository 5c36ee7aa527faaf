"""The agent's reporter against real brokers: presence, telemetry, outages, commands, events.

Agents are real (a thread of this process serving `.fake` models, `edgefleet agent serve` in a
subprocess when the test kills it, or a production agent following a `Fleet`'s signed
bundles); brokers are real (Mosquitto, and the embedded amqtt broker for the presence and
telemetry contract). Every wait polls with a deadline. The outage here lasts about 3 s per
phase; the chaos suite runs the same scenario with 60 s.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from agent import __version__
from agent.stats import FAILURE_REASONS, LATENCY_BUCKETS
from agent.telemetry.reporter import TelemetryReporter
from shared.keys import PrivateKey
from shared.mqtt.broker import EmbeddedBroker, MosquittoBroker
from shared.mqtt.commands import Command, command_envelope
from shared.mqtt.envelope import encode
from tests.agent.bundles.factory import BuiltBundle, Fleet
from tests.agent.harness import AgentThread
from tests.agent.telemetry.conftest import (
    FAIL_ON,
    ROW,
    Agents,
    Listen,
    Listener,
    Received,
    command_topic,
    fake_model,
    infer,
    serving_settings,
    with_mqtt,
)
from tests.shared.mqtt.conftest import start_mosquitto, write_password_file

EDGEFLEET = [sys.executable, "-m", "shared.cli"]
KEEPALIVE_S = 2
LIFECYCLE = ["downloading", "verifying", "staged", "validating", "warming", "probation", "active"]
BROKERS = ["mosquitto", "embedded"]


def broker_endpoint(request: pytest.FixtureRequest, name: str) -> tuple[str, int]:
    """The URL of a session broker and the MQTT version to speak to it (amqtt: 3.1.1 only)."""
    if name == "mosquitto":
        mosquitto: MosquittoBroker = request.getfixturevalue("mosquitto")
        return mosquitto.url, 5
    embedded: EmbeddedBroker = request.getfixturevalue("embedded_broker")
    return embedded.url, 4


def reporter_of(agent: AgentThread) -> TelemetryReporter:
    """The running agent's reporter."""
    assert agent.agent is not None
    assert agent.agent.reporter is not None
    return agent.agent.reporter


def unique(messages: list[Received]) -> list[Received]:
    """The first copy of each sequence number, in arrival order (the receivers' dedup rule)."""
    seen: set[int] = set()
    first = []
    for message in messages:
        if message.seq not in seen:
            seen.add(message.seq)
            first.append(message)
    return first


def model_reports(messages: list[Received], model: str = "m") -> list[dict[str, Any]]:
    """The per-model entries of every telemetry message (deduplicated), in arrival order."""
    return [
        entry
        for message in unique([m for m in messages if m.kind == "telemetry"])
        for entry in message.payload["models"]
        if entry["model"] == model
    ]


def totals(messages: list[Received], model: str = "m") -> dict[str, int]:
    """Requests, successes and errors by kind, summed over every telemetry message."""
    summed = {"requests": 0, "success": 0} | {reason: 0 for reason in FAILURE_REASONS}
    for entry in model_reports(messages, model):
        summed["requests"] += entry["requests"]
        summed["success"] += entry["success"]
        for reason, count in entry["errors"].items():
            summed[reason] += count
    return summed


def requests_reported(count: int) -> Callable[[list[Received]], bool]:
    """A listener predicate: telemetry accounts for `count` requests of model m."""
    return lambda messages: totals(messages)["requests"] >= count


def online_and_ready(model: str) -> Callable[[Received], bool]:
    """A status message condition: online, with `model` READY."""
    return lambda m: (
        m.payload["state"] == "online"
        and any(e["model"] == model and e["state"] == "READY" for e in m.payload["models"])
    )


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def agent_process(
    args: list[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """`edgefleet agent serve ARGS` in a subprocess; killed after the test if still running."""
    with log.open("ab") as output:
        process = subprocess.Popen(
            [*EDGEFLEET, "agent", "serve", *args], stdout=output, stderr=subprocess.STDOUT, env=env
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


# --- presence ---------------------------------------------------------------------------


@pytest.mark.parametrize("broker_name", BROKERS)
def test_presence_online_then_offline_when_killed(
    broker_name: str,
    request: pytest.FixtureRequest,
    sample_models: Path,
    tmp_path: Path,
    device_id: str,
    listen: Listen,
) -> None:
    url, protocol = broker_endpoint(request, broker_name)
    listener = listen(url, device_id, protocol=protocol)
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env["EDGEFLEET_AGENT_MQTT_KEEPALIVE_S"] = str(KEEPALIVE_S)
    env["EDGEFLEET_AGENT_MQTT_PROTOCOL"] = str(protocol)
    args = [
        f"--model=mlp={sample_models / 'mlp.onnx'}",
        "--pin=mlp=onnxruntime/CPU",
        f"--port={free_port()}",
        f"--state-dir={tmp_path / 'state'}",
        f"--device-id={device_id}",
        f"--mqtt={url}",
        "--telemetry-interval=0.5",
    ]
    log = tmp_path / "agent.log"
    with agent_process(args, env, log) as process:
        online = listener.first("status", online_and_ready("mlp"), timeout=60)
        assert process.poll() is None, log.read_text()
        assert online.payload["agent_version"] == __version__
        [model] = online.payload["models"]
        assert (model["model"], model["version"], model["backend"]) == (
            "mlp",
            1,
            "onnxruntime/CPU",
        )
        assert model["file"] == "mlp.onnx"
        assert online.payload["hardware"]["logical_cores"] == os.cpu_count()
        listener.first("telemetry", lambda m: True)

        # Retained: a receiver that connects now gets the newest status at once.
        latest = max(m.seq for m in listener.messages("status"))
        retained = listen(url, device_id, protocol=protocol).first("status", lambda m: m.retain)
        assert (retained.seq, retained.payload["state"]) == (latest, "online")

        process.kill()
        killed = time.monotonic()
        offline = listener.first("status", lambda m: m.payload["state"] == "offline", timeout=10)
    assert offline.at - killed <= 1.5 * KEEPALIVE_S, "the will must come within 1.5 keepalives"
    assert offline.seq == 0, "the last will is written before any message: sequence number 0"
    assert offline.payload == {"state": "offline"}
    late = listen(url, device_id, protocol=protocol).first("status", lambda m: m.retain)
    assert late.payload == {"state": "offline"}


# --- telemetry ----------------------------------------------------------------------------


@pytest.mark.parametrize("broker_name", BROKERS)
def test_telemetry_counts_what_was_served(
    broker_name: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    device_id: str,
    listen: Listen,
    agents: Agents,
) -> None:
    url, protocol = broker_endpoint(request, broker_name)
    listener = listen(url, device_id, protocol=protocol)
    model = fake_model(tmp_path / "models")
    settings = serving_settings(tmp_path / "state", device_id, model, url, protocol=protocol)
    agent = agents.start(settings)
    selection = listener.first("events", lambda m: m.payload["kind"] == "selection")
    assert (selection.payload["model"], selection.payload["version"]) == ("m", 1)
    assert selection.payload["backend"] == "fake/CPU"

    good = [infer(agent) for _ in range(20)]
    invalid = [infer(agent, [1.0, 2.0, 3.0]) for _ in range(3)]  # shape [1, 3], wants [-1, 4]
    failing = [infer(agent, [1.0, 2.0, 3.0, FAIL_ON]) for _ in range(2)]
    assert (set(good), set(invalid), set(failing)) == ({200}, {400}, {500})
    messages = listener.wait(requests_reported(25), what="25 requests in telemetry")
    # Two reports more: nothing is counted twice.
    last = max(m.seq for m in messages)
    listener.wait(lambda ms: len([m for m in ms if m.kind == "telemetry" and m.seq > last]) >= 2)

    messages = listener.messages()
    assert totals(messages) == {
        "requests": 25,
        "success": 20,
        "rejected": 0,
        "canceled": 0,
        "backend": 2,
        "invalid": 3,
        "other": 0,
    }
    reports = model_reports(messages)
    assert {(e["version"], e["backend"]) for e in reports} == {(1, "fake/CPU")}
    assert all(e["latency_buckets_s"] == list(LATENCY_BUCKETS) for e in reports)
    assert all(len(e["latency_counts"]) == len(LATENCY_BUCKETS) + 1 for e in reports)
    assert sum(sum(e["latency_counts"]) for e in reports) == 20, "one observation per success"
    assert sum(e["inferences"] for e in reports) == 20, "rows of successful executions"
    assert listener.malformed == []


def test_a_clean_stop_reports_the_last_partial_interval(
    mosquitto: MosquittoBroker, tmp_path: Path, device_id: str, listen: Listen, agents: Agents
) -> None:
    listener = listen(mosquitto.url, device_id)
    model = fake_model(tmp_path / "models")
    settings = serving_settings(
        tmp_path / "state", device_id, model, mosquitto.url, telemetry_interval_s=600
    )
    agent = agents.start(settings)
    listener.first("status", online_and_ready("m"))
    assert [infer(agent) for _ in range(7)] == [200] * 7
    agents.stop(agent)
    telemetry = listener.first("telemetry", lambda m: True)
    assert totals([telemetry])["requests"] == 7
    offline = listener.first("status", lambda m: m.payload["state"] == "offline")
    assert offline.at >= telemetry.at, "flushed before saying offline"


# --- broker outages -----------------------------------------------------------------------


def serve_through(agent: AgentThread, seconds: float) -> int:
    """Keep the agent busy for `seconds` (the outage); return the requests served."""
    served = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert infer(agent) == 200
        served += 1
    return served


def drained_after(listener: Listener, restarted_at: float, sent: int) -> list[Received]:
    """Wait until the agent, back on the broker restarted at `restarted_at` (monotonic), sent
    all it had queued: telemetry numbered after the status it queued on reconnecting (the
    queue is FIFO within a kind), and telemetry accounting for `sent` requests."""

    def done(messages: list[Received]) -> bool:
        since = [m for m in messages if m.at >= restarted_at]
        online = next((m for m in since if m.kind == "status" and m.seq > 0), None)
        return (
            online is not None
            and any(m.kind == "telemetry" and m.seq > online.seq for m in since)
            and totals(messages)["requests"] >= sent
        )

    # The agent retries the broker after 1, 2, 4 ... s, capped at 30 s and jittered, so after a
    # 30 s outage its next attempt may come up to 30 s after the broker is back; then it drains.
    return listener.wait(done, timeout=75, what=f"the drained outbox and {sent} requests")


def arrivals(listener: Listener) -> str:
    """Every message received, as kind#seq (+ when retained), for failure messages."""
    return " ".join(f"{m.kind}#{m.seq}{'+' if m.retain else ''}" for m in listener.messages())


def assert_in_order(messages: list[Received]) -> None:
    """Within each kind, first copies arrive in increasing sequence order."""
    for kind in ("telemetry", "events", "status"):
        seqs = [m.seq for m in unique(messages) if m.kind == kind and m.seq > 0]
        assert seqs == sorted(seqs), f"{kind} out of order: {seqs}"


# The issue asks for a 30 s outage; the 3 s case shows the same path quickly.
@pytest.mark.parametrize("outage_s", [3.0, 30.0])
def test_broker_outage_and_agent_restart_lose_nothing(
    outage_s: float,
    own_broker: MosquittoBroker,
    tmp_path: Path,
    device_id: str,
    listen: Listen,
    agents: Agents,
) -> None:
    listener = listen(own_broker.url, device_id, persistent=True)
    settings = serving_settings(
        tmp_path / "state", device_id, fake_model(tmp_path / "models"), own_broker.url
    )
    agent = agents.start(settings)
    before = listener.first("telemetry", lambda m: True)
    sent = serve_through(agent, 0.5)

    # 1. The broker goes away while the agent serves and reports every 0.2 s.
    own_broker.stop()
    sent += serve_through(agent, outage_s)
    restarted_at = time.monotonic()
    own_broker.start()
    messages = unique(drained_after(listener, restarted_at, sent))
    seqs = {m.seq for m in messages}
    missing = sorted(set(range(before.seq, max(seqs) + 1)) - seqs)
    assert missing == [], arrivals(listener)
    assert_in_order(listener.messages())
    assert totals(messages)["requests"] == sent

    # 2. The agent restarts during an outage: the outbox is a file in its state directory.
    own_broker.stop()
    sent += serve_through(agent, outage_s / 2)
    agents.stop(agent)  # its last partial interval waits in the outbox too
    agent = agents.start(settings)
    sent += serve_through(agent, outage_s / 2)
    restarted_at = time.monotonic()
    own_broker.start()
    messages = unique(drained_after(listener, restarted_at, sent))
    seqs = {m.seq for m in messages}
    missing = sorted(set(range(before.seq, max(seqs) + 1)) - seqs)
    # One number is missing, by design: the restarted agent queued a status right after its
    # selection event while offline, and the outbox kept only the newer status it queued on
    # connecting (only the latest presence matters).
    selections = {m.seq for m in messages if m.kind == "events"}
    assert len(missing) == 1, arrivals(listener)
    assert missing[0] - 1 in selections, arrivals(listener)
    assert_in_order(listener.messages())
    assert totals(messages)["requests"] == sent, "every request counted, across the restart"
    assert listener.malformed == []


def test_outbox_bound_holds_and_drops_are_counted(
    own_broker: MosquittoBroker,
    tmp_path: Path,
    device_id: str,
    listen: Listen,
    agents: Agents,
) -> None:
    bound = 5
    listener = listen(own_broker.url, device_id)
    settings = serving_settings(
        tmp_path / "state",
        device_id,
        fake_model(tmp_path / "models"),
        own_broker.url,
        telemetry_interval_s=0.1,
        outbox_max_messages=bound,
    )
    outbox = reporter_of(agents.start(settings)).outbox
    listener.first("telemetry", lambda m: True)

    own_broker.stop()
    deadline = time.monotonic() + 15
    while outbox.stats().dropped["telemetry"] < 3:
        assert outbox.stats().queued <= bound
        assert time.monotonic() < deadline, "the outbox never reached its bound"
        time.sleep(0.02)
    own_broker.start()

    def counted_drops(m: Received) -> bool:
        return bool(m.payload["outbox"]["dropped"]["telemetry"] >= 3)

    listener.first("telemetry", counted_drops, timeout=30)
    reports = [m.payload["outbox"] for m in listener.messages("telemetry")]
    assert all(r["queued"] <= bound for r in reports), "the bound held in every report"


def test_a_refusing_broker_does_not_stop_serving(
    tmp_path: Path, device_id: str, agents: Agents, caplog: pytest.LogCaptureFixture
) -> None:
    passwords = write_password_file(tmp_path / "passwd", {"someone": "secret"})
    broker = start_mosquitto(tmp_path / "broker", password_file=passwords)
    try:
        settings = serving_settings(
            tmp_path / "state", device_id, fake_model(tmp_path / "models"), broker.url
        )
        agent = agents.start(settings)  # no credentials: the broker's CONNACK says no
        deadline = time.monotonic() + 10
        while "refused the connection" not in caplog.text:
            assert time.monotonic() < deadline, "the broker never refused the agent"
            time.sleep(0.02)
        # The reporter retries in the background; the inference API keeps answering.
        started = time.monotonic()
        assert [infer(agent) for _ in range(20)] == [200] * 20
        assert time.monotonic() - started < 5
        assert not reporter_of(agent).client.connected
    finally:
        broker.stop()


# --- production mode: lifecycle events and commands -------------------------------------


def lifecycle_of(listener: Listener, bundle: BuiltBundle) -> list[Received]:
    """The lifecycle events received for one bundle, in arrival order."""
    return [
        m
        for m in unique(listener.messages("events"))
        if m.payload["kind"] == "lifecycle" and m.payload["digest"] == bundle.digest
    ]


def wait_state(listener: Listener, bundle: BuiltBundle, state: str) -> Received:
    """Wait for the lifecycle event saying `bundle` reached `state`."""
    return listener.first(
        "events",
        lambda m: m.payload.get("digest") == bundle.digest and m.payload["state"] == state,
        timeout=30,
    )


def send_command(
    listener: Listener,
    fleet: Fleet,
    name: str,
    args: dict[str, Any] | None = None,
    *,
    key: PrivateKey | None = None,
    issued_s_ago: float = 0.0,
) -> tuple[Command, bytes]:
    """Sign a command for the fleet's device and publish it; return it and its bytes."""
    command = Command.new(name, args, device_id=fleet.device_id, now=time.time() - issued_s_ago)
    envelope = command_envelope(command, key or fleet.assignment_key, sender="control-plane", seq=1)
    data = encode(envelope)
    listener.publish(command_topic(fleet.device_id), data)
    return command, data


def command_events(listener: Listener) -> list[Received]:
    """Every `command` event received, in arrival order."""
    return [m for m in unique(listener.messages("events")) if m.payload["kind"] == "command"]


def outcome_of(listener: Listener, command: Command) -> dict[str, Any]:
    """Wait for the event that reports `command`'s outcome; return its payload."""
    event = listener.first("events", lambda m: m.payload.get("nonce") == command.nonce)
    return event.payload


def answer(agent: AgentThread) -> list[float]:
    """The model's output for `ROW`."""
    body = json.dumps(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": ROW}]}
    ).encode()
    request = urllib.request.Request(
        f"http://{agent.url}/v2/models/m/infer", data=body, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        data: list[float] = json.loads(response.read())["outputs"][0]["data"]
        return data


def scaled(scale: float) -> list[float]:
    """What a fake model of this scale answers for `ROW`."""
    return [value * scale for value in ROW]


@pytest.fixture
def fleet(tmp_path: Path, device_id: str) -> Fleet:
    """Keys, bundles and the assignment file for the device under test."""
    return Fleet(tmp_path / "fleet", device_id)


def test_lifecycle_and_selection_events(
    mosquitto: MosquittoBroker, fleet: Fleet, tmp_path: Path, listen: Listen, agents: Agents
) -> None:
    listener = listen(mosquitto.url, fleet.device_id)
    v1 = fleet.fake_bundle("m", 1)
    fleet.assign(v1.assigned())
    agents.start(with_mqtt(fleet.settings(tmp_path / "state"), mosquitto.url), production=True)
    wait_state(listener, v1, "active")

    events = lifecycle_of(listener, v1)
    assert [e.payload["state"] for e in events] == LIFECYCLE
    assert [e.payload["previous"] for e in events] == [None, *LIFECYCLE[:-1]]
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    assert {(e.payload["model"], e.payload["version"]) for e in events} == {("m", 1)}
    selection = listener.first("events", lambda m: m.payload["kind"] == "selection")
    assert (selection.payload["model"], selection.payload["version"]) == ("m", 1)
    assert selection.payload["selection"]["chosen"].startswith("fake/CPU/")
    validating, warming = events[LIFECYCLE.index("validating")], events[LIFECYCLE.index("warming")]
    assert validating.seq < selection.seq < warming.seq, "ready while validating, before warming"


def test_signed_report_and_sync_commands_run(
    mosquitto: MosquittoBroker, fleet: Fleet, tmp_path: Path, listen: Listen, agents: Agents
) -> None:
    listener = listen(mosquitto.url, fleet.device_id)
    v1, v2 = fleet.fake_bundle("m", 1, scale=2.0), fleet.fake_bundle("m", 2, scale=3.0)
    fleet.assign(v1.assigned())
    # The agent polls its assignment only at start: a new version arrives through `sync`.
    settings = fleet.settings(tmp_path / "state", poll_interval_s=3600)
    agent = agents.start(with_mqtt(settings, mosquitto.url), production=True)
    wait_state(listener, v1, "active")
    agent.wait_ready(30)

    sent_at = time.time()
    report, _ = send_command(listener, fleet, "report")
    assert outcome_of(listener, report) | {"seconds": 0} == {
        "kind": "command",
        "command": "report",
        "nonce": report.nonce,
        "ok": True,
        "outcome": "status queued",
        "seconds": 0,
    }
    listener.first("status", lambda m: m.envelope.time >= sent_at and online_and_ready("m")(m))

    services = agent.services
    assert services is not None
    polls = services.sync.polls
    fleet.assign(v2.assigned())
    sync, _ = send_command(listener, fleet, "sync")
    outcome = outcome_of(listener, sync)
    assert (outcome["ok"], outcome["outcome"]) == (True, "assignment sync started")
    wait_state(listener, v2, "active")
    assert services.sync.polls > polls
    assert answer(agent) == scaled(3.0)


def test_rollback_runs_and_forged_expired_replayed_commands_do_nothing(
    mosquitto: MosquittoBroker,
    fleet: Fleet,
    tmp_path: Path,
    listen: Listen,
    agents: Agents,
    caplog: pytest.LogCaptureFixture,
) -> None:
    listener = listen(mosquitto.url, fleet.device_id)
    v1, v2 = fleet.fake_bundle("m", 1, scale=2.0), fleet.fake_bundle("m", 2, scale=3.0)
    fleet.assign(v1.assigned())
    settings = with_mqtt(fleet.settings(tmp_path / "state"), mosquitto.url)
    agent = agents.start(settings, production=True)
    wait_state(listener, v1, "active")
    fleet.assign(v2.assigned())
    wait_state(listener, v2, "active")
    verifier = reporter_of(agent).verifier
    assert verifier is not None

    # Refused: signed by a key the key list does not name, and expired (issued 400 s ago for
    # 300 s). A signed `report` behind them shows they were handled (one topic, in order).
    send_command(listener, fleet, "rollback", {"model": "m"}, key=PrivateKey.generate())
    send_command(listener, fleet, "rollback", {"model": "m"}, issued_s_ago=400)
    marker, _ = send_command(listener, fleet, "report")
    outcome_of(listener, marker)
    assert dict(verifier.rejected) == {"UntrustedKey": 1, "ExpiredCommand": 1}
    assert answer(agent) == scaled(3.0), "still v2"

    rollback, data = send_command(listener, fleet, "rollback", {"model": "m"})
    outcome = outcome_of(listener, rollback)
    assert (outcome["ok"], outcome["outcome"]) == (True, "m rolled back from v2 to v1")
    assert answer(agent) == scaled(2.0), "v1 serves again"

    listener.publish(command_topic(fleet.device_id), data)  # the same rollback, again
    marker_again, _ = send_command(listener, fleet, "report")
    outcome_of(listener, marker_again)
    assert verifier.rejected["ReplayedCommand"] == 1
    nonces = [e.payload["nonce"] for e in command_events(listener)]
    assert nonces == [marker.nonce, rollback.nonce, marker_again.nonce]
    assert answer(agent) == scaled(2.0), "still v1"
    rejections = [r for r in caplog.records if r.getMessage().startswith("rejected a command")]
    assert len(rejections) == 3
    assert all(r.levelno == logging.WARNING for r in rejections)
