"""The disk-full scenario in its quick setting: three downloads stopped by a full disk.

The scenario mounts a size-capped tmpfs, so it needs root (CI runs as root). Without root this
test fails and says so, rather than skip: a skipped scenario would look like one that held.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.chaos.disk_full import run
from bench.chaos.outcome import ChaosOptions, Figure, Outcome
from bench.chaos.report import render

JUDGED = (
    "recoveries: served a verified v1 throughout",
    "disk left within bounds after the failure",
    "clear error in the event log",
    "state consistent after the failure",
    "move to v2 completed once there was room",
)


def figure(outcome: Outcome, name: str) -> Figure:
    """The scenario's figure called `name`."""
    return next(f for f in outcome.figures if f.figure == name)


def test_a_full_disk_mid_download_is_survived_reported_and_cleaned_up(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the disk-full scenario needs root to mount a size-capped tmpfs")
    options = ChaosOptions.quick(tmp_path)
    outcome = run(options)

    table = render(outcome, "tests/chaos")
    assert outcome.passed, table
    attempts = options.disk_attempts
    for judged in JUDGED:
        assert figure(outcome, judged).value == f"{attempts}/{attempts}", table
        assert figure(outcome, judged).met is True, table
    assert figure(outcome, "most disk growth over an attempt").met is True, table
    # The quick setting's one kill comes before the disk fills up: a restart on a full disk.
    assert figure(outcome, "of those, restarts on a full disk").value == "1/1", table
    assert any("the disk is full" in note for note in outcome.notes), table
