"""Figures for the chaos suite: each fuzz target appends one JSON line to a report file.

When `EDGEFLEET_FUZZ_REPORT` names a file (the chaos suite's fuzz scenario sets it), `record`
appends `{"target", "examples", "failures", "statuses"}` to it; otherwise it does nothing, so
`make test` writes no files. `recording` wraps a whole fuzz test: it counts examples and answers
through a `Tally` and records the target with `failures: 1` when the test raises.

    with recording("oip-infer-json") as tally:
        run_hypothesis_test(tally)   # each example calls tally.example(), tally.saw(status)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

REPORT_ENV = "EDGEFLEET_FUZZ_REPORT"


def record(
    target: str,
    examples: int,
    statuses: Mapping[str, int] | None = None,
    failures: int = 0,
) -> None:
    """Append one target's figures to the report file named by `EDGEFLEET_FUZZ_REPORT`, if any."""
    path = os.environ.get(REPORT_ENV)
    if not path:
        return
    line = {
        "target": target,
        "examples": examples,
        "failures": failures,
        "statuses": dict(sorted((statuses or {}).items())),
    }
    with open(path, "a", encoding="utf-8") as report:
        report.write(json.dumps(line) + "\n")


@dataclass
class Tally:
    """What one fuzz target did: examples run and outcomes seen (HTTP statuses, error names)."""

    examples: int = 0
    statuses: Counter[str] = field(default_factory=Counter)

    def example(self) -> None:
        """Count one example (Hypothesis calls the test body once per example, shrinks too)."""
        self.examples += 1

    def saw(self, outcome: int | str) -> None:
        """Count one outcome: an HTTP status, or the name of the error a parser raised."""
        self.statuses[str(outcome)] += 1


@contextmanager
def recording(target: str) -> Iterator[Tally]:
    """Record the target's tally when the block ends; a block that raises is one failure."""
    tally = Tally()
    try:
        yield tally
    except BaseException:
        record(target, tally.examples, tally.statuses, failures=1)
        raise
    record(target, tally.examples, tally.statuses)
