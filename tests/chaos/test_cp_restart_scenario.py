"""The cp-restart scenario in its quick setting: rollouts survive a killed control plane and
restarted PostgreSQL.

PostgreSQL, Mosquitto, `cp serve` and `edgefleet sim` (20 devices) for real; one rollout
struck by a kill -9 of the control plane and two by PostgreSQL restarts
(`bench.chaos.cp_restart`). The test holds the scenario to its targets and checks that the
figures the reliability page shows are there.
"""

from __future__ import annotations

from pathlib import Path

from bench.chaos.cp_restart import DATABASE, KILL, run
from bench.chaos.outcome import ChaosOptions
from bench.chaos.report import render

FIGURES = (
    f"rollouts completed correctly after a {KILL}",
    f"rollouts completed correctly after a {DATABASE}",
    "recovery, kill -9 -> healthy",
    "recovery, PostgreSQL back -> API reads",
    "rollouts wedged",
    "natural keys stored twice",
    f"lifecycle events published but not stored, {DATABASE}",
    f"lifecycle events published but not stored, {KILL}",
    f"failed assignment polls on the devices, {KILL}",
)


def test_rollouts_end_right_through_control_plane_and_database_restarts(tmp_path: Path) -> None:
    outcome = run(ChaosOptions.quick(tmp_path))
    table = render(outcome, "tests/chaos")
    assert outcome.passed, table
    for prefix in FIGURES:
        assert any(f.figure.startswith(prefix) for f in outcome.figures), table
    completed = {f.figure: f.value for f in outcome.figures if f.figure.startswith("rollouts c")}
    assert completed == {
        f"rollouts completed correctly after a {KILL}": "1 of 1",
        f"rollouts completed correctly after a {DATABASE}": "2 of 2",
    }
