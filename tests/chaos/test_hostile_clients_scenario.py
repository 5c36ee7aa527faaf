"""The hostile-clients scenario in its quick setting: every attack is ended in bounded time.

The quick setting gives the agent 2-second idle and body timeouts, so each slow header, idle
connection and trickling body is cut off within seconds, while the well-behaved client's
requests all succeed. The scenario judges the bounds; the test checks each attack was judged.
"""

from __future__ import annotations

from pathlib import Path

from bench.chaos.attacks import attacks
from bench.chaos.hostile_clients import run
from bench.chaos.outcome import ChaosOptions, Figure, Outcome
from bench.chaos.report import render


def figure(outcome: Outcome, name: str) -> Figure:
    """The scenario's figure called `name`."""
    return next(f for f in outcome.figures if f.figure == name)


def test_hostile_clients_are_cut_off_while_the_agent_keeps_serving(tmp_path: Path) -> None:
    outcome = run(ChaosOptions.quick(tmp_path))

    table = render(outcome, "tests/chaos")
    assert outcome.passed, table
    assert figure(outcome, "normal requests succeeded during the attack").met is True, table
    for attack in attacks(slowloris=1, idle=1):
        assert figure(outcome, attack.name).met is True, table
    assert "408" in figure(outcome, "Content-Length 1 MiB, a byte a second").value, table
    assert "413" in figure(outcome, "Content-Length 10 GiB, a byte a second").value, table
    assert figure(outcome, "fds idle / peak / after").met is True, table
    assert figure(outcome, "p99 of normal requests, attack vs baseline").met is None
