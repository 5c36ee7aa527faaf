"""docs/commands.md is what the parsers say today."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.cli_reference import WIDTH, reference

DOCS = Path(__file__).resolve().parents[2] / "docs" / "commands.md"


def test_the_command_reference_is_current(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", WIDTH)
    expected = reference()
    assert "## `edgefleet rollout`" in expected
    assert DOCS.read_text() == expected, (
        "docs/commands.md is stale: run `python -m shared.cli_reference > docs/commands.md`"
    )
