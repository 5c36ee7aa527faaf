"""The fuzz scenario runs every fuzz target of tests/fuzz and reports each as a figure."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bench.chaos.fuzz import run
from bench.chaos.outcome import ChaosOptions

EXPECTED_TARGETS = (
    "oip-infer-valid",
    "oip-infer-almost-valid",
    "oip-body-bytes",
    "oip-http-framing",
    "oip-paths",
    "bundle-bytes",
    "bundle-members",
    "bundle-manifest",
    "bundle-signature",
    "assignment",
    "keylist",
)


def test_the_fuzz_scenario_reports_every_target_and_holds(tmp_path: Path) -> None:
    options = dataclasses.replace(ChaosOptions.quick(tmp_path), fuzz_examples=5)
    outcome = run(options)
    figures = {figure.figure: figure for figure in outcome.figures}
    for target in EXPECTED_TARGETS:
        assert f"{target}: failures" in figures, sorted(figures)
        assert figures[f"{target}: failures"].value.endswith("examples")
    assert figures["pytest tests/fuzz"].met, outcome.notes
    assert outcome.passed, [f for f in outcome.figures if f.met is False]
    assert "5 examples per target" in outcome.did
    assert any(note.startswith("oip-infer-valid: seen ") for note in outcome.notes)
