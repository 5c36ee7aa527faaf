"""What a chaos run is asked to do (`ChaosOptions`) and what each scenario found (`Outcome`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class ChaosOptions:
    """Counts, durations and budgets of one run; `quick()` is the setting `make test` uses."""

    work: Path  # scratch directory; each scenario makes its own subdirectory
    seed: int = 1
    quick_mode: bool = False
    crashes: int = 50  # kill -9 moments of the crash-during-update scenario
    disk_attempts: int = 10  # fill-the-disk attempts of the power-loss scenario
    outage_s: float = 60.0  # broker outage
    overload_factor: float = 10.0  # times the measured capacity
    overload_s: float = 20.0
    soak_s: float = 1800.0  # soak at half capacity
    fuzz_examples: int = 1000  # Hypothesis examples per fuzz target

    @classmethod
    def quick(cls, work: Path, seed: int = 1) -> ChaosOptions:
        """The short setting: the same scenarios, bounded to a few minutes in all."""
        return cls(
            work=work,
            seed=seed,
            quick_mode=True,
            crashes=5,
            disk_attempts=3,
            outage_s=5.0,
            overload_s=5.0,
            soak_s=20.0,
            fuzz_examples=100,
        )


@dataclass(frozen=True)
class Figure:
    """One line of a scenario's table: a measured value, and the target it is held to if any."""

    figure: str
    value: str
    target: str = ""
    met: bool | None = None  # None: reported, not judged

    @property
    def verdict(self) -> str:
        """`met`, `MISSED`, or empty for a figure without a target."""
        if self.met is None:
            return ""
        return "met" if self.met else "MISSED"


@dataclass(frozen=True)
class Outcome:
    """What one scenario did and what it found."""

    name: str  # registry name, e.g. "crash-update"
    title: str  # heading in docs/reliability.md
    did: str  # what was done, in a sentence or three (counts, durations, how faults were made)
    figures: list[Figure]
    notes: list[str] = field(default_factory=list)  # findings, fixes, what was left alone

    @property
    def passed(self) -> bool:
        """True when no judged figure missed its target."""
        return all(figure.met is not False for figure in self.figures)


Scenario = Callable[[ChaosOptions], Outcome]
"""A scenario: runs with the options' counts and durations, cleans up after itself, returns its
findings. It raises only when it cannot run at all (a missing tool); a fault it finds is a
figure that misses its target."""
