"""The `edgefleet` root command: command groups from entry points, missing extras explained."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pytest

from shared import cli


def test_a_group_whose_extra_is_missing_explains_itself(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ghost = EntryPoint(
        name="ghost", value="no_such_module_here:register", group="edgefleet.commands"
    )
    real = list(entry_points(group="edgefleet.commands"))

    def fake_entry_points(**selection: Any) -> list[EntryPoint]:
        return [*real, ghost]

    monkeypatch.setattr(cli, "entry_points", fake_entry_points)
    assert cli.main(["ghost", "anything"]) == 1
    error = capsys.readouterr().err
    assert "edgefleet ghost needs a package that is not installed" in error
    assert "no_such_module_here" in error
    # The other groups still work.
    with pytest.raises(SystemExit) as info:
        cli.main(["keys", "--help"])
    assert info.value.code == 0
