"""Fixtures for the bundle-path tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.agent.bundles.factory import Fleet


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    """An operator's keys and a device's trust files, in a temporary directory."""
    return Fleet(tmp_path / "fleet")
