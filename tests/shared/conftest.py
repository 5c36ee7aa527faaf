"""Fixtures for the trust tests: a fresh key set and a small signed bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.shared.builders import KeySet, make_keys, write_tiny_bundle


@pytest.fixture
def keys() -> KeySet:
    """A root, a release and an assignment key with key list version 1."""
    return make_keys()


@pytest.fixture
def bundle(tmp_path: Path, keys: KeySet) -> Path:
    """A valid bundle of four small files, signed by the release key."""
    return write_tiny_bundle(tmp_path, keys.release)
