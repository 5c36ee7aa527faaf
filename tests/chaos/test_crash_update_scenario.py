"""The crash-during-update scenario in its quick setting: five kills, five verified restarts.

The scenario judges its own targets (every restart serves a verified version, the state the
kill left is consistent, the event log accounts for the interrupted attempt, the move finishes,
the state directory is clean at the end); the test checks that each of them was judged and met,
and that the kills were really spread over the cycle's phases.
"""

from __future__ import annotations

from pathlib import Path

from bench.chaos.crash_update import run
from bench.chaos.outcome import ChaosOptions, Figure, Outcome
from bench.chaos.report import render

JUDGED = (
    "restarts that served a valid version",
    "state consistent after the kill",
    "interrupted attempt in the event log",
    "moves completed after the restart",
    "state directory clean after the last move",
    "temporary files of interrupted state saves, most seen",
)


def figure(outcome: Outcome, name: str) -> Figure:
    """The scenario's figure called `name`."""
    return next(f for f in outcome.figures if f.figure == name)


def test_every_kill_during_an_update_restarts_on_a_verified_version(tmp_path: Path) -> None:
    options = ChaosOptions.quick(tmp_path)
    outcome = run(options)

    table = render(outcome, "tests/chaos")
    assert outcome.passed, table
    for judged in JUDGED:
        found = figure(outcome, judged)
        assert found.met is True, table
    for counted in JUDGED[:4]:
        assert figure(outcome, counted).value == f"{options.crashes}/{options.crashes}", table
    landed = figure(outcome, "where the kills landed").value
    assert sum(int(part.split()[-1]) for part in landed.split(", ")) == options.crashes, table
    assert figure(outcome, "restart to ready, median (max)").value.endswith(" s)"), table
