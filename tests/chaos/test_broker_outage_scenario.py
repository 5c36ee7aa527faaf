"""The broker-outage scenario in its quick setting: the broker crashes, the outbox holds.

A real agent, a real Mosquitto killed with SIGKILL for `ChaosOptions.quick`'s outage (5 s) and
started again; the scenario itself measures (`bench.chaos.broker_outage`), the test holds it
to its targets and checks that the figures the reliability page shows are there.
"""

from __future__ import annotations

from pathlib import Path

from bench.chaos.broker_outage import run
from bench.chaos.outcome import ChaosOptions
from bench.chaos.report import render

FIGURES = (
    "messages lost",
    "messages queued while the broker was down",
    "duplicates delivered",
    "messages dropped by the outbox's bound",
    "inference requests failed during the outage",
    "broker back -> outbox empty",
    "outbox at its peak",
)


def test_a_broker_crash_loses_no_message_and_fails_no_request(tmp_path: Path) -> None:
    outcome = run(ChaosOptions.quick(tmp_path))
    table = render(outcome, "tests/chaos")
    assert outcome.passed, table
    for prefix in FIGURES:
        assert any(f.figure.startswith(prefix) for f in outcome.figures), table
    lost = next(f for f in outcome.figures if f.figure.startswith("messages lost"))
    assert lost.value.startswith("0 of ")
    queued = next(f for f in outcome.figures if f.figure.startswith("messages queued"))
    assert int(queued.value) >= 3  # telemetry every second, over a 5 s outage
