"""Broker outage: the broker crashes while an agent serves and reports; does anything get lost?

A real `edgefleet agent serve` (the sample MLP on onnxruntime/CPU) reports to a Mosquitto of
its own every `TELEMETRY_INTERVAL_S` while a thread sends it inference requests. Mosquitto is
killed with SIGKILL (a crash: nothing saved since the last autosave, no last wills), stays
down `options.outage_s` and comes back on the same port. What must hold is the agent's outbox:
every message it numbered has to reach the broker in the end, and serving must not notice.

Figures: messages lost (numbered by the outbox, never received by the witness, gaps left by a
status replaced while waiting excepted; target 0), duplicates (QoS 1 is at least once, the
control plane drops them by sequence number), inference requests failed during the outage
(target 0), the time from the broker's return to an empty outbox (target: the client's
reconnection backoff cap plus 5 s), and the outbox's peak. The witness (`bench.chaos.witness`)
holds a persistent session that the broker saves every second, so it cannot miss what the
broker acknowledged to the agent while either of them reconnects.
"""

from __future__ import annotations

import time

from agent.sample_models import write_sample_models
from agent.telemetry.service import OUTBOX_FILE
from bench import BenchError
from bench.chaos.outage_figures import Outage, OutageRun, figures
from bench.chaos.outbox_probe import OutboxProbe, OutboxSample
from bench.chaos.outcome import ChaosOptions, Outcome
from bench.chaos.traffic import InferenceTraffic
from bench.chaos.witness import PersistentBroker, Seen, Witness
from bench.payloads import Payload, build_payloads
from bench.processes import AGENT_READY_PATH, FIRST_READY_DEADLINE_S, Server, running
from bench.reporting import agent_command
from shared.mqtt.errors import BrokerError
from shared.mqtt.topics import device_filter

DEVICE = "chaos-outage"
TELEMETRY_INTERVAL_S = 1.0
WARMUP_REPORTS = 3  # telemetry messages received before the crash
AFTER_REPORTS = 3  # and after the drain, to see reporting steady again
RECONNECT_CAP_S = 30.0  # MqttSettings.max_backoff_s: the longest wait between attempts
DRAIN_TARGET_S = RECONNECT_CAP_S + 5.0
POLL_S = 0.05


def run(options: ChaosOptions) -> Outcome:
    """Crash the broker under a serving, reporting agent; measure losses and the drain."""
    work = options.work
    models = work / "models"
    index = write_sample_models(models)
    key = ("mlp", "binary", 1)
    payload = build_payloads(index, models, [key])[key]
    broker = PersistentBroker(work / "broker")
    try:
        broker.start()
    except BrokerError as error:  # Mosquitto is missing: the scenario cannot run
        raise BenchError(str(error)) from None
    try:
        witness = Witness(broker.port, device_filter(DEVICE, None), "chaos-witness")
        witness.start()
        try:
            wait_saved(broker, time.time())
            state = work / "agent"
            command = agent_command(models, state, DEVICE, broker.url, TELEMETRY_INTERVAL_S)
            probe = OutboxProbe(state / OUTBOX_FILE)
            with running("agent", command, AGENT_READY_PATH, work, FIRST_READY_DEADLINE_S) as agent:
                outage = crash_and_drain(options, broker, witness, probe, agent, payload)
            # Stopped (SIGTERM): its last telemetry and the offline status have gone out.
            probe.stop()
            final = probe.latest()
            last_seq = final.last_seq if final else outage.backlog_last
            seen = _wait_quietly(witness, last_seq)
        finally:
            witness.stop()
    finally:
        broker.stop()
    run_figures = OutageRun(
        outage=outage,
        seen=seen,
        final=final,
        status_seqs=frozenset(probe.status_seqs),
        fresh_sessions=witness.fresh_sessions,
        drain_target_s=DRAIN_TARGET_S,
    )
    did = (
        f"`edgefleet agent serve` (MLP on onnxruntime/CPU) reported to Mosquitto every "
        f"{TELEMETRY_INTERVAL_S:g} s while a thread sent it about 40 inference requests a "
        f"second. Mosquitto (persistence saved every second) was killed with SIGKILL, stayed "
        f"down {options.outage_s:g} s and came back on the same port. A persistent-session "
        f"subscriber recorded every message; the agent's outbox file was sampled every 50 ms."
    )
    notes = [
        "The agent's session is clean and the broker crashed without a final save: the "
        "outbox is what holds the messages, not the broker. The witness's persistent session "
        "only keeps the measurement honest (nothing the broker acknowledged goes unseen).",
        "Not measured here: a consumer with a clean session (the control plane's ingest) "
        "misses what devices publish between the broker's return and its own "
        "resubscription, the gap the cp-restart section measures for a restarted control "
        "plane.",
        *outage.traffic_errors,
    ]
    return Outcome(
        "broker-outage",
        "Broker outage",
        did,
        figures(run_figures),
        notes,
    )


def crash_and_drain(
    options: ChaosOptions,
    broker: PersistentBroker,
    witness: Witness,
    probe: OutboxProbe,
    agent: Server,
    payload: Payload,
) -> Outage:
    """Kill the broker under load, hold it down, restart it, wait for the backlog."""
    traffic = InferenceTraffic(agent.port, payload)
    probe.start()
    traffic.start()
    try:
        witness.wait_for(
            lambda seen: _telemetry(seen) >= WARMUP_REPORTS, 30.0, "the first telemetry"
        )
        traffic.phase = "outage"
        killed = _read(probe)
        down = time.monotonic()
        broker.kill()
        while time.monotonic() < down + options.outage_s:  # the outage: watch the agent
            if agent.process.poll() is not None:
                raise BenchError("the agent exited during the broker outage")
            time.sleep(POLL_S)
        backlog = _read(probe)
        broker.start()
        up = time.monotonic()
        traffic.phase = "after"
        witness.wait_for(
            lambda seen: _has_all(seen, killed.last_seq, backlog.last_seq, probe.status_seqs),
            DRAIN_TARGET_S + 30.0,
            f"the backlog up to seq {backlog.last_seq}",
        )
        drained_at = probe.wait_empty(up, 30.0)  # it may have grown while the agent waited
        steady = _read(probe).last_seq
        witness.wait_for(
            lambda seen: _telemetry(seen, after=steady) >= AFTER_REPORTS,
            30.0,
            "telemetry after the drain",
        )
    finally:
        traffic.stop()
    return Outage(
        down=down,
        up=up,
        killed_seq=killed.last_seq,
        backlog_last=backlog.last_seq,
        drained_at=drained_at,
        served_ok=traffic.ok["outage"],
        served_failed=traffic.failed["outage"],
        failed_otherwise=sum(traffic.failed.values()) - traffic.failed["outage"],
        traffic_errors=tuple(traffic.errors),
        peak=probe.peak(down),
    )


def wait_saved(broker: PersistentBroker, since: float, deadline_s: float = 10.0) -> None:
    """Wait until the broker saved its state (the witness's subscription) after `since`."""
    deadline = time.monotonic() + deadline_s
    while not (broker.database.exists() and broker.database.stat().st_mtime > since):
        if time.monotonic() > deadline:
            raise BenchError(f"Mosquitto did not save {broker.database} within {deadline_s} s")
        time.sleep(POLL_S)


def _read(probe: OutboxProbe) -> OutboxSample:
    sample = probe.read()
    if sample is None:
        raise BenchError(f"the agent has no outbox at {probe.path}")
    return sample


def _telemetry(seen: list[Seen], after: int = 0) -> int:
    return sum(1 for s in seen if s.kind == "telemetry" and s.seq > after)


def _has_all(seen: list[Seen], first: int, last: int, replaced: set[int]) -> bool:
    """Whether every number in (first, last] arrived, except statuses seen waiting."""
    received = {s.seq for s in seen}
    return all(seq in received or seq in replaced for seq in range(first + 1, last + 1))


def _wait_quietly(witness: Witness, last_seq: int, deadline_s: float = 10.0) -> list[Seen]:
    """Everything received once `last_seq` arrived, or at the deadline (losses are figures)."""
    try:
        return witness.wait_for(
            lambda seen: any(s.seq >= last_seq for s in seen), deadline_s, "the last message"
        )
    except BenchError:
        return witness.seen()
