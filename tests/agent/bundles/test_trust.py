"""Which key list the agent trusts across restarts: never an older one."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agent.runner import TRUSTED_KEYLIST, load_trust
from shared.keylist import sign_key_list
from shared.keys import PrivateKey
from shared.trust_errors import TrustError
from tests.agent.bundles.factory import Fleet


def rotate_release(fleet: Fleet, version: int) -> tuple[PrivateKey, bytes]:
    """A key list `version` that replaces the release key, signed by the root."""
    trust = load_trust(fleet.settings(fleet.dir / "scratch"))
    release = PrivateKey.generate()
    key_list = trust.key_list.rotated(time.time(), release_keys=(release.public,))
    assert key_list.version == trust.key_list.version + 1
    document = sign_key_list(key_list, [fleet.root_key])
    assert version == key_list.version
    return release, document


def test_first_start_pins_and_keeps_the_key_list(fleet: Fleet, tmp_path: Path) -> None:
    settings = fleet.settings(tmp_path / "state")
    trust = load_trust(settings)
    assert trust.key_list.version == 1
    assert (tmp_path / "state" / TRUSTED_KEYLIST).read_bytes() == trust.to_document()


def test_a_newer_list_is_taken_and_an_older_one_never_again(fleet: Fleet, tmp_path: Path) -> None:
    settings = fleet.settings(tmp_path / "state")
    original = fleet.keylist_path.read_bytes()
    load_trust(settings)
    release, newer = rotate_release(fleet, 2)
    fleet.keylist_path.write_bytes(newer)
    trust = load_trust(settings)
    assert trust.key_list.version == 2
    assert trust.release_key(release.public.keyid) is not None
    # The old list is still signed by the pinned root: offering it again is a rollback.
    fleet.keylist_path.write_bytes(original)
    trust = load_trust(settings)
    assert trust.key_list.version == 2
    with pytest.raises(TrustError):
        trust.release_key(fleet.release_key.public.keyid)


def test_a_list_not_signed_by_the_root_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    settings = fleet.settings(tmp_path / "state")
    load_trust(settings)
    trust = load_trust(settings)
    forged = trust.key_list.rotated(time.time(), release_keys=(PrivateKey.generate().public,))
    fleet.keylist_path.write_bytes(sign_key_list(forged, [PrivateKey.generate()]))
    with pytest.raises(TrustError):
        load_trust(settings)
