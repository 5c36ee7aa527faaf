"""End to end: a slow v2 fails its canary gate, is rolled back, and every device serves v1 again.

Everything is real and driven as an operator drives it: Mosquitto, `edgefleet cp serve` on
SQLite, three enrolled `edgefleet agent run` processes, bundles built and pushed with the
command line, rollouts made and followed with `edgefleet rollout`, inference over the Open
Inference Protocol with tritonclient. v2 has the MLP's signature but runs a long chain of
MatMuls, so its p95 latency is many times v1's; the agents are told to accept it on probation,
so it is the control plane's latency gate on the canary that must catch it. The world lives in
`tests.e2e_harness`.
"""

from __future__ import annotations

import time
import urllib.parse
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.mqtt.broker import MosquittoBroker
from tests.e2e_harness import (
    ControlPlane,
    Deployment,
    EdgeAgent,
    Service,
    Traffic,
    clean_environment,
    edgefleet,
    free_port,
    get_json,
)
from tests.shared.mqtt.conftest import start_mosquitto

MODEL = "mlp"
GROUP = "e2e"
AGENTS = 3
TELEMETRY_INTERVAL_S = 1.0
REQUEST_INTERVAL_S = 0.05  # per agent: about 20 requests per second while the model is fast
MIN_REQUESTS = 20  # for the gates, on both sides of the latency comparison
# How long the canary is observed after its assignment: its activation of v2 (about 2 s here,
# half of it the probation), then v2's traffic in a few telemetry reports, which must reach
# MIN_REQUESTS (about 75 do) or the latency gate has no data and does not block.
WAVE_WAIT_S = 8.0
# v2: `SLOW_ROWS` copies of the input through `SLOW_LAYERS` 64x64 MatMuls, about 15 ms per
# request on one core against 1-4 ms for v1 (mostly HTTP) on a busy machine, in 40 kB.
SLOW_ROWS, SLOW_LAYERS = 1024, 400
STARTUP_S = 60.0
ROLLOUT_S = 60.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A Mosquitto of this test's own, on a free loopback port."""
    broker = start_mosquitto(tmp_path / "mosquitto")
    yield broker
    broker.stop()


def write_slow_mlp(path: Path) -> None:
    """An ONNX model with the sample MLP's signature whose every request costs ~1 GFLOP.

    The input row is tiled to (N, SLOW_ROWS, 64) and multiplied SLOW_LAYERS times by one
    orthogonal 64x64 matrix (norms stay put, so the outputs are stable enough for golden
    vectors), then averaged and mapped to 10 softmax probabilities. One shared weight keeps
    the file small.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(2026)
    mix, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    head = rng.standard_normal((64, 10)) / 8
    initializers = [
        numpy_helper.from_array(mix.astype(np.float32), "mix"),
        numpy_helper.from_array(head.astype(np.float32), "head"),
        numpy_helper.from_array(np.array([1, SLOW_ROWS, 1], np.int64), "repeats"),
        numpy_helper.from_array(np.array([1], np.int64), "row_axis"),
    ]
    nodes = [
        helper.make_node("Unsqueeze", ["input", "row_axis"], ["row"]),
        helper.make_node("Tile", ["row", "repeats"], ["h0"]),
    ]
    nodes += [
        helper.make_node("MatMul", [f"h{i}", "mix"], [f"h{i + 1}"]) for i in range(SLOW_LAYERS)
    ]
    nodes += [
        helper.make_node("ReduceMean", [f"h{SLOW_LAYERS}"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "head"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        MODEL,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 64])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))


def start_agents(world: Deployment, cp: ControlPlane, keys: Path) -> list[EdgeAgent]:
    """Enroll AGENTS devices into GROUP with one-time tokens and start `agent run` on each."""
    env = clean_environment(
        # Fast feedback, and a probation that lets a slow v2 become active on the device: the
        # agent's own latency check is switched off (ratio 1000) so that it is the control
        # plane's gate on the canary that has to catch the slow version.
        EDGEFLEET_AGENT_MQTT_TELEMETRY_INTERVAL_S=str(TELEMETRY_INTERVAL_S),
        EDGEFLEET_AGENT_BUNDLES_PROBATION_DURATION_S="1",
        EDGEFLEET_AGENT_BUNDLES_PROBATION_MAX_LATENCY_RATIO="1000",
        EDGEFLEET_AGENT_SELECTION_BUDGET_S="0.2",
        # One inference thread per agent: three agents share two cores.
        EDGEFLEET_AGENT_RUNTIME_INTRA_OP_THREADS="1",
    )
    agents = []
    for index in range(AGENTS):
        agent = EdgeAgent(f"e2e-{index}", world.root / f"agent-{index}")
        token = cp.operator_json("enroll-token", "create", "--group", GROUP)["secret"]
        world.secrets.append(token)
        edgefleet(
            "agent", "enroll", "--cp", cp.url, "--token", token, "--state", str(agent.state_dir),
            "--device-id", agent.device_id, "--root-key", str(keys / "root.pub"),
        )  # fmt: skip
        agent.port = free_port()
        world.add(
            Service(
                agent.device_id,
                ["agent", "run", "--state", str(agent.state_dir), "--port", str(agent.port)],
                env,
                world.root / f"{agent.device_id}.log",
            )
        )
        agents.append(agent)
    for agent in agents:
        world.wait_for(
            partial(reachable, cp, agent),
            f"{agent.device_id} to serve HTTP and be online in the control plane",
            STARTUP_S,
        )
    return agents


def reachable(cp: ControlPlane, agent: EdgeAgent) -> bool:
    """Whether the agent's HTTP server is live and the control plane has it online."""
    try:
        live = get_json(f"http://{agent.address}/v2/health/live")[0] == 200
    except OSError:
        return False
    return live and bool(cp.api(f"devices/{agent.device_id}")["online"])


def push(
    cp: ControlPlane, root: Path, keys: Path, version: int, model_file: Path, *options: str
) -> str:
    """Build a signed bundle of `model_file` as MODEL `version` (`bundle build` `options`),
    push it; its digest."""
    bundle = root / f"{MODEL}-v{version}.bundle"
    edgefleet(
        "bundle", "build", "--name", MODEL, "--version", str(version), "--model", str(model_file),
        "--keys", str(keys), "-o", str(bundle), *options,
    )  # fmt: skip
    stored = cp.operator_json("push", str(bundle))
    assert (stored["name"], stored["version"]) == (MODEL, version), stored
    digest: str = stored["digest"]
    return digest


def roll_out(world: Deployment, cp: ControlPlane, version: int, *options: str) -> dict[str, Any]:
    """`edgefleet rollout create` of MODEL `version` to GROUP; its final document."""
    created = cp.operator_json(
        "rollout", "create", "--model", MODEL, "--version", str(version),
        "--target", f"group:{GROUP}", *options,
    )  # fmt: skip
    return world.follow_rollout(created["id"], ROLLOUT_S)


def wait_until_all_serve_v1(
    world: Deployment, agents: list[EdgeAgent], inputs: np.ndarray, expected: np.ndarray
) -> None:
    """Every agent serves v1 (ready, configured, answering) and it computes the sample MLP."""
    for agent in agents:
        world.wait_for(
            partial(agent.serves, MODEL, "1"), f"{agent.device_id} to serve v1", ROLLOUT_S
        )
        version, answer = agent.infer(MODEL, inputs)
        assert version == "1"
        np.testing.assert_allclose(answer, expected, atol=1e-4, rtol=0)


def v1_reported(cp: ControlPlane, agent: EdgeAgent, since: datetime) -> bool:
    """Whether the control plane stored MIN_REQUESTS requests of MODEL from the agent.

    Called before v2 exists, so they are all v1's: the latency gate's baseline.
    """
    query = urllib.parse.urlencode({"model": MODEL, "since": since.isoformat(), "bucket": 10})
    series = cp.api(f"devices/{agent.device_id}/telemetry?{query}")["series"]
    return sum(int(point["requests"]) for point in series) >= MIN_REQUESTS


def lifecycle(cp: ControlPlane, agent: EdgeAgent) -> list[tuple[int, str]]:
    """The device's lifecycle events of MODEL as the control plane stored them, oldest first."""
    events = cp.api(f"devices/{agent.device_id}/events?limit=1000")["events"]
    return [
        (int(e["version"]), str(e["name"]))
        for e in reversed(events)
        if e["kind"] == "lifecycle" and e["model"] == MODEL
    ]


def reports_v1_ready(cp: ControlPlane, agent: EdgeAgent) -> bool:
    """Whether the device's latest status, as the control plane has it, lists MODEL v1 READY."""
    models = cp.api(f"devices/{agent.device_id}")["models"] or []
    return any(m["model"] == MODEL and (m["version"], m["state"]) == (1, "READY") for m in models)


def answered_more(traffic: list[Traffic], before: dict[str, dict[str, int]], more: int) -> bool:
    """Whether every traffic thread got `more` answers since the `before` snapshot."""
    return all(
        sum(t.snapshot()[0].values()) >= sum(before[t.agent.device_id].values()) + more
        for t in traffic
    )


def ran_v2_then_v1(events: list[tuple[int, str]]) -> list[tuple[int, str]] | None:
    """`events` when v2 became active and v1 became active after it, else None."""
    if (2, "active") not in events:
        return None
    return events if (1, "active") in events[events.index((2, "active")) :] else None


def gate(wave: dict[str, Any], name: str) -> dict[str, Any]:
    """One gate's result in a wave's evaluation."""
    results = {g["gate"]: g for g in (wave.get("gate_results") or {}).get("gates", [])}
    assert name in results, wave
    found: dict[str, Any] = results[name]
    return found


def test_a_slow_canary_is_rolled_back_and_every_device_serves_v1_again(
    tmp_path: Path, sample_models: Path, broker: MosquittoBroker
) -> None:
    began = time.monotonic()
    since = datetime.now(UTC) - timedelta(minutes=1)
    inputs = np.load(sample_models / "mlp.inputs.npz")["input"]
    expected_v1 = np.load(sample_models / "mlp.expected.npz")["probabilities"]
    with Deployment(tmp_path) as world:
        # The operator's keys, the control plane and three enrolled devices.
        keys = tmp_path / "keys"
        edgefleet("keys", "init", str(keys))
        cp = world.cp = ControlPlane(tmp_path, keys, broker.url)
        world.add(cp.start(rollout_tick_s="0.5", ingest_batch_delay_s="0.05"))
        world.wait_for(cp.healthy, "the control plane's API", STARTUP_S)
        agents = start_agents(world, cp, keys)

        # v1 is the sample MLP; v2 the slow one with the same signature.
        slow = tmp_path / "mlp-slow.onnx"
        write_slow_mlp(slow)
        v1_digest = push(cp, tmp_path, keys, 1, sample_models / "mlp.onnx")
        # Batch size 1 keeps its measuring and warm-up at activation short; the tolerance
        # allows for its long float32 sums.
        v2_options = ("--max-batch-size", "1", "--tolerance", "1e-3")
        v2_digest = push(cp, tmp_path, keys, 2, slow, *v2_options)

        # v1 to the whole group at once.
        final = roll_out(world, cp, 1, "--wait", "0")
        assert final["state"] == "completed", world.report()
        wait_until_all_serve_v1(world, agents, inputs, expected_v1)

        # Steady traffic at every agent from now on; v1's telemetry is the latency baseline.
        for agent in agents:
            thread = Traffic(agent, MODEL, inputs, REQUEST_INTERVAL_S)
            world.traffic.append(thread)
            thread.start()
        for agent in agents:
            world.wait_for(
                partial(v1_reported, cp, agent, since),
                f"{MIN_REQUESTS} v1 requests of {agent.device_id} in the control plane",
                STARTUP_S,
            )

        # v2: a canary of one device, then the rest, behind a p95 latency gate.
        final = roll_out(
            world, cp, 2, "--canary", "1", "--waves", "100%", "--wait", str(WAVE_WAIT_S),
            "--max-p95-ratio", "2", "--min-requests", str(MIN_REQUESTS),
        )  # fmt: skip
        report = world.report()
        assert (final["state"], final["digest"]) == ("rolled_back", v2_digest), report
        assert "automatic rollback" in final["reason"], report
        assert "p95_ratio" in final["reason"], report
        canary_wave, rest_wave = final["waves"]
        assert (canary_wave["size"], canary_wave["state"]) == (1, "failed"), report
        assert rest_wave["state"] == "pending", report  # the canary stopped it
        latency = gate(canary_wave, "p95_ratio")
        assert latency["passed"] is False, report
        assert latency["value"] > 2, report
        (canary_id,) = [d["device_id"] for d in final["device_states"] if d["wave"] == 0]
        canary = next(agent for agent in agents if agent.device_id == canary_id)

        # Every device serves v1 again, as the control plane asks it to.
        wait_until_all_serve_v1(world, agents, inputs, expected_v1)
        for agent in agents:
            (desired,) = cp.api(f"devices/{agent.device_id}/models")["models"]
            assert (desired["version"], desired["digest"]) == (1, v1_digest), desired
            world.wait_for(
                partial(reports_v1_ready, cp, agent),
                f"{agent.device_id}'s status to report v1 ready",
                ROLLOUT_S,
            )

        # From now on nothing answers with v2. (The agent keeps the version it replaced loaded
        # for an instant local revert, so the canary still holds v2, idle; see the agent's
        # `BundleActivator._install`.)
        before = {t.agent.device_id: t.snapshot()[0] for t in world.traffic}
        world.wait_for(
            partial(answered_more, world.traffic, before, MIN_REQUESTS),
            f"{MIN_REQUESTS} more answers at every agent",
            ROLLOUT_S,
        )
        for thread in world.traffic:
            answered, _ = thread.snapshot()
            assert answered.get("2", 0) == before[thread.agent.device_id].get("2", 0), answered

        # The canary activated v2 (its events and its traffic say so), then v1 again; the
        # other devices never saw v2.
        events = world.wait_for(
            lambda: ran_v2_then_v1(lifecycle(cp, canary)),
            f"{canary_id}'s events to show v2 active, then v1 active again",
            ROLLOUT_S,
        )
        for thread in world.traffic:
            answered, failures = thread.snapshot()
            # Not one request failed, through the canary's switch to v2 and back.
            assert failures == {}, (thread.agent.device_id, failures)
            if thread.agent is canary:
                assert answered.get("2", 0) > 0, answered
            else:
                assert "2" not in answered, (thread.agent.device_id, answered)
                assert all(version != 2 for version, _ in lifecycle(cp, thread.agent))
        world.check_alive("checking the outcome")
        # SIGTERM ends every process cleanly.
        assert set(world.close().values()) == {0}, world.report()
        # No process logged a token or any line of a private key, and every private key file
        # (devices', the operator's, the control plane's CA and assignment keys) is 0600.
        assert world.leaked_secrets([cp.token, *world.secrets]) == []
        modes = {
            key.relative_to(tmp_path): key.stat().st_mode & 0o777 for key in world.private_keys()
        }
        assert len(modes) >= AGENTS + 3, modes  # device keys; root, release, assignment, CA
        assert set(modes.values()) == {0o600}, modes
    print(
        f"end to end in {time.monotonic() - began:.1f} s; canary gates: "
        f"{[(g['gate'], g['detail']) for g in canary_wave['gate_results']['gates']]}; "
        f"canary events: {events}"
    )
