"""Assignment documents: replay, freeze, wrong device, untrusted keys, mix-and-match, rollback."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from shared.assignment import (
    Assignment,
    ModelAssignment,
    check_bundle_matches,
    sign_assignment,
    verify_assignment,
)
from shared.bundle import VerifiedBundle, verify_bundle
from shared.keylist import sign_key_list
from shared.keys import PrivateKey
from shared.signed_document import sign_document
from shared.trust_errors import (
    BadSignature,
    DigestMismatch,
    ExpiredAssignment,
    MalformedDocument,
    ManifestMismatch,
    ReplayedAssignment,
    UntrustedKey,
    WrongDevice,
)
from tests.shared.builders import TINY_FILES, KeySet, write_tiny_bundle

DEVICE = "edge-01"
NOW = 5000.0


def entry(bundle: VerifiedBundle, url: str = "https://cp.example/b") -> ModelAssignment:
    manifest = bundle.manifest
    return ModelAssignment(manifest.name, manifest.version, bundle.digest, url, bundle.size)


def assignment(serial: int, *models: ModelAssignment, expires_at: float = NOW + 60) -> Assignment:
    return Assignment(DEVICE, serial, NOW - 10, expires_at, models)


@pytest.fixture
def bundles(tmp_path: Path, keys: KeySet) -> tuple[VerifiedBundle, VerifiedBundle]:
    """Versions 1 and 2 of the same model, verified."""
    older = write_tiny_bundle(tmp_path, keys.release, version=1)
    newer = write_tiny_bundle(
        tmp_path, keys.release, version=2, files={**TINY_FILES, "model.bin": b"v2"}
    )
    return verify_bundle(older, keys.trust), verify_bundle(newer, keys.trust)


def verify(document: bytes, keys: KeySet, last_serial: int = 0, now: float = NOW) -> Assignment:
    return verify_assignment(
        document, keys.trust, device_id=DEVICE, last_serial=last_serial, now=now
    )


def test_a_valid_assignment_is_accepted(keys: KeySet, bundles: tuple[VerifiedBundle, ...]) -> None:
    wanted = assignment(7, entry(bundles[1]))
    accepted = verify(sign_assignment(wanted, keys.assignment), keys, last_serial=6)
    assert accepted == wanted
    model = accepted.model("tiny")
    assert model is not None
    check_bundle_matches(model, bundles[1])


@pytest.mark.parametrize("now", [NOW + 60, NOW + 3600])
def test_an_expired_assignment_is_refused(keys: KeySet, now: float) -> None:
    document = sign_assignment(assignment(1), keys.assignment)
    with pytest.raises(ExpiredAssignment, match="assignment serial 1 expired"):
        verify(document, keys, now=now)


@pytest.mark.parametrize(("last", "serial"), [(5, 4), (5, 5)], ids=["lower", "equal"])
def test_a_replayed_serial_is_refused(keys: KeySet, last: int, serial: int) -> None:
    document = sign_assignment(assignment(serial), keys.assignment)
    with pytest.raises(
        ReplayedAssignment, match=f"serial {serial} is not above the last accepted serial {last}"
    ):
        verify(document, keys, last_serial=last)


def test_an_assignment_for_another_device_is_refused(keys: KeySet) -> None:
    document = sign_assignment(replace(assignment(1), device_id="edge-02"), keys.assignment)
    with pytest.raises(WrongDevice, match="for device 'edge-02', not 'edge-01'"):
        verify(document, keys)


def test_an_unknown_key_is_refused(keys: KeySet) -> None:
    stranger = PrivateKey.generate()
    document = sign_assignment(assignment(1), stranger)
    with pytest.raises(
        UntrustedKey, match=f"key {stranger.public.keyid[:16]} is not an assignment key"
    ):
        verify(document, keys)


def test_a_release_key_cannot_sign_assignments(keys: KeySet) -> None:
    document = sign_assignment(assignment(1), keys.release)
    with pytest.raises(UntrustedKey, match="is a release key, not an assignment key"):
        verify(document, keys)


def test_an_assignment_key_revoked_by_rotation_is_refused(keys: KeySet) -> None:
    rotated = keys.key_list.rotated(2000.0, assignment_keys=(PrivateKey.generate().public,))
    trust = keys.trust.update(sign_key_list(rotated, [keys.root]))
    document = sign_assignment(assignment(1), keys.assignment)
    with pytest.raises(UntrustedKey, match="dropped from the key list after version 1"):
        verify_assignment(document, trust, device_id=DEVICE, last_serial=0, now=NOW)


def test_a_changed_field_breaks_the_signature(keys: KeySet) -> None:
    document = json.loads(sign_assignment(assignment(1), keys.assignment))
    document["signed"]["serial"] = 99
    with pytest.raises(
        BadSignature, match=r"the signature by assignment key [0-9a-f]{16} does not"
    ):
        verify(json.dumps(document).encode(), keys)


def test_an_unsigned_assignment_is_refused(keys: KeySet) -> None:
    document = json.loads(sign_assignment(assignment(1), keys.assignment))
    document["signatures"] = []
    with pytest.raises(UntrustedKey, match="carries no signature"):
        verify(json.dumps(document).encode(), keys)


def test_a_malformed_assignment_names_the_field(keys: KeySet) -> None:
    bad = ModelAssignment("tiny", 1, "not-a-digest", "https://x", 1)
    with pytest.raises(
        MalformedDocument, match=r"assignment.signed.models\[0\].digest: expected 64"
    ):
        verify(sign_assignment(assignment(1, bad), keys.assignment), keys)


def test_a_number_beyond_any_float_is_malformed(keys: KeySet) -> None:
    # Found by tests/fuzz: math.isfinite() raised OverflowError past the TrustError seam.
    signed = {**assignment(1).as_json(), "issued_at": 10**400}
    with pytest.raises(
        MalformedDocument,
        match="issued_at: expected a finite number, found an integer too large for a float",
    ):
        verify(sign_document(signed, [keys.assignment]), keys)


@pytest.mark.parametrize(
    "value", [b"[" * 2000 + b"]" * 2000, b'"\\ud800"', b"1e400"], ids=["deep", "surrogate", "inf"]
)
def test_a_document_without_a_canonical_form_is_malformed(keys: KeySet, value: bytes) -> None:
    # Found by tests/fuzz: RecursionError, UnicodeEncodeError and ValueError leaked, unsigned.
    document = b'{"signatures": [], "signed": {"type": ' + value + b"}}"
    with pytest.raises(MalformedDocument, match="assignment: "):
        verify(document, keys)


def test_a_bundle_with_another_digest_is_a_mix_and_match(
    bundles: tuple[VerifiedBundle, ...],
) -> None:
    older, newer = bundles
    wrong = replace(entry(newer), digest=older.digest)
    message = f"sha256 {older.digest[:16]}, but this bundle's sha256 is {newer.digest[:16]}"
    with pytest.raises(DigestMismatch, match=message):
        check_bundle_matches(wrong, newer)


def test_a_bundle_of_another_size_is_a_mismatch(bundles: tuple[VerifiedBundle, ...]) -> None:
    with pytest.raises(DigestMismatch, match="is assigned with 1 bytes"):
        check_bundle_matches(replace(entry(bundles[0]), size=1), bundles[0])


def test_an_assignment_naming_another_version_is_a_manifest_mismatch(
    bundles: tuple[VerifiedBundle, ...],
) -> None:
    with pytest.raises(
        ManifestMismatch, match=r"names tiny version 2, but bundle .* holds tiny version 1"
    ):
        check_bundle_matches(replace(entry(bundles[0]), version=2), bundles[0])


def test_a_rollback_is_a_higher_serial_naming_the_older_bundle(
    keys: KeySet, bundles: tuple[VerifiedBundle, ...]
) -> None:
    older, newer = bundles
    forward = verify(sign_assignment(assignment(10, entry(newer)), keys.assignment), keys, 9)
    back = sign_assignment(assignment(11, entry(older)), keys.assignment)
    rolled_back = verify(back, keys, last_serial=forward.serial)
    model = rolled_back.model("tiny")
    assert model is not None
    assert model.version == 1
    check_bundle_matches(model, older)
    with pytest.raises(ReplayedAssignment):  # and the old forward document cannot come back
        verify(sign_assignment(assignment(10, entry(newer)), keys.assignment), keys, 11)
