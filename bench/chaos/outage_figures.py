"""The broker-outage scenario's figures, from what happened (`Outage`) and what arrived."""

from __future__ import annotations

from dataclasses import dataclass

from bench.chaos.outbox_probe import OutboxSample
from bench.chaos.outcome import Figure
from bench.chaos.witness import Seen, duplicates


@dataclass(frozen=True)
class Outage:
    """What happened around the crash; times are time.monotonic() seconds."""

    down: float  # the broker was killed
    up: float  # it accepted connections again
    killed_seq: int  # the last number the outbox had handed out at the kill
    backlog_last: int  # ... when the broker came back
    drained_at: float | None  # the outbox was first seen empty after `up`
    served_ok: int  # inference requests answered right during the outage
    served_failed: int
    failed_otherwise: int  # outside the outage
    traffic_errors: tuple[str, ...]
    peak: OutboxSample | None  # the outbox at its fullest after the crash


@dataclass(frozen=True)
class OutageRun:
    """Everything the figures are computed from."""

    outage: Outage
    seen: list[Seen]  # what the witness received, the agent's stop included
    final: OutboxSample | None  # the outbox once the agent stopped
    status_seqs: frozenset[int]  # numbers seen on a waiting status message
    fresh_sessions: int  # witness reconnections that found their session gone
    drain_target_s: float


def figures(run: OutageRun) -> list[Figure]:
    """The table: losses, duplicates, serving, the drain and the outbox's peak."""
    outage = run.outage
    last = run.final.last_seq if run.final else outage.backlog_last
    received = {s.seq for s in run.seen}
    gaps = [seq for seq in range(1, last + 1) if seq not in received]
    replaced = [seq for seq in gaps if seq in run.status_seqs]
    lost = len(gaps) - len(replaced)
    first_arrival: dict[int, float] = {}
    for s in run.seen:
        first_arrival.setdefault(s.seq, s.at)
    numbered = range(outage.killed_seq + 1, outage.backlog_last + 1)
    backlog = [first_arrival[seq] for seq in numbered if seq in first_arrival]
    after = [s.at for s in run.seen if s.at > outage.up]
    served = outage.served_ok + outage.served_failed
    dropped = run.final.dropped if run.final else 0
    drain_s = None if outage.drained_at is None else outage.drained_at - outage.up
    rows = [
        Figure(
            "messages lost (numbered by the agent's outbox, never received)",
            f"{lost} of {last}",
            "0",
            lost == 0,
        ),
        Figure("messages queued while the broker was down", str(len(numbered))),
        Figure("numbers skipped by a status replaced while waiting (not lost)", str(len(replaced))),
        Figure(
            "duplicates delivered (QoS 1; the control plane drops them by seq)",
            str(duplicates(run.seen)),
        ),
        Figure("messages dropped by the outbox's bound", str(dropped), "0", dropped == 0),
        Figure(
            "inference requests failed during the outage",
            f"{outage.served_failed} of {served}",
            "0",
            served > 0 and outage.served_failed == 0,
        ),
        Figure("inference requests failed before and after it", str(outage.failed_otherwise)),
        Figure(
            "broker back -> first message from the agent",
            f"{min(after) - outage.up:.1f} s" if after else "none",
        ),
        Figure(
            "broker back -> outbox empty (time to drain)",
            "never" if drain_s is None else f"{drain_s:.1f} s",
            f"<= {run.drain_target_s:g} s (reconnect backoff cap + 5 s)",
            drain_s is not None and drain_s <= run.drain_target_s,
        ),
        Figure(
            "agent's first message -> outbox empty (sending the backlog)",
            "-" if drain_s is None or not after else f"{drain_s - (min(after) - outage.up):.2f} s",
        ),
        Figure(
            "broker back -> last message of the backlog received",
            f"{max(backlog) - outage.up:.1f} s" if backlog else "none",
        ),
        Figure("outbox at its peak", _peak(outage.peak)),
        Figure(
            "witness sessions lost across the crash (would void the count)",
            str(run.fresh_sessions),
            "0",
            run.fresh_sessions == 0,
        ),
    ]
    return rows


def _peak(sample: OutboxSample | None) -> str:
    if sample is None:
        return "not sampled"
    return (
        f"{sample.queued} messages, {sample.queued_bytes / 1024:.1f} KiB payload, "
        f"{sample.disk_bytes / 1024:.0f} KiB on disk"
    )
