"""Fuzzing the trust parsers: bundle archives, manifests, signatures, assignments, key lists.

Each target starts from one valid signed document (`tests.shared.builders`) and breaks it: bytes
flipped, cut or repeated; archive members added, retyped, renamed or resized; JSON fields
replaced by generated values, with and without signing the result again. The parser must
either accept, and then exactly what was signed, or raise a `TrustError`
(`shared.trust_errors`) with a message: no other exception escapes, and extraction writes
nothing outside its destination, nor anything at all when it refuses.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.assignment import Assignment, ModelAssignment, sign_assignment, verify_assignment
from shared.bundle import MANIFEST_NAME, SIGNATURE_NAME, VerifiedBundle, extract_bundle
from shared.canonical import canonical_json
from shared.keylist import TrustStore
from shared.keys import PrivateKey
from shared.signed_document import decode_signature, encode_signature, sign_document
from shared.trust_errors import TrustError
from tests.fuzz.budget import fuzz_settings
from tests.fuzz.bundle_tricks import archive_tricks
from tests.fuzz.mutations import (
    EDGE_FLOATS,
    EDGE_INTEGERS,
    edit_document,
    json_values,
    mutate_bytes,
    scalars,
    splice,
)
from tests.fuzz.recorder import Tally, recording
from tests.shared.builders import (
    KeySet,
    RawMember,
    assemble,
    make_keys,
    regular,
    split_members,
    write_tiny_bundle,
)

T = TypeVar("T")
DEVICE = "edge-01"
NOW = 5000.0


@dataclass(frozen=True)
class Originals:
    """The valid documents every target starts from, and a scratch directory."""

    keys: KeySet
    trust: TrustStore
    archive: bytes
    members: list[RawMember]
    assignment: bytes
    work: Path

    @property
    def manifest(self) -> bytes:
        """The signed manifest bytes."""
        return self.members[0].content


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> Originals:
    """A key set, a signed bundle, and a signed assignment naming it."""
    work = tmp_path_factory.mktemp("parsers")
    keys = make_keys()
    archive = write_tiny_bundle(work / "sources", keys.release).read_bytes()
    members = split_members(archive)
    manifest = json.loads(members[0].content)
    entry = ModelAssignment(manifest["name"], manifest["version"], "ab" * 32, "https://cp/b", 0)
    document = sign_assignment(Assignment(DEVICE, 7, NOW - 10, NOW + 60, (entry,)), keys.assignment)
    return Originals(keys, keys.trust, archive, members, document, work)


def judge(tally: Tally, call: Callable[[], T]) -> T | None:
    """Run a parser: its result, or None when it refused with a `TrustError` and a message."""
    tally.example()
    try:
        result = call()
    except TrustError as error:
        refused: TrustError = error
    else:
        tally.saw("accepted")
        return result
    tally.saw(type(refused).__name__)
    assert str(refused).strip(), f"{type(refused).__name__} without a message"
    return None


def extract(originals: Originals, tally: Tally, data: bytes) -> VerifiedBundle | None:
    """Verify and extract an archive; check that nothing lands outside the destination."""
    archive = originals.work / "fuzzed.bundle"
    archive.write_bytes(data)
    box = originals.work / "box"
    box.mkdir()
    try:
        verified = judge(tally, lambda: extract_bundle(archive, box / "out", originals.trust))
        left = sorted(path.relative_to(box).as_posix() for path in box.rglob("*"))
        if verified is None:
            assert left == [], f"a refused bundle left {left}"
        else:
            assert all(p == "out" or p.startswith("out/") for p in left), left
            assert not any(path.is_symlink() for path in box.rglob("*"))
        assert sorted(p.name for p in originals.work.iterdir()) == [
            "box",
            "fuzzed.bundle",
            "sources",
        ]
    finally:
        shutil.rmtree(box)
    return verified


def test_mutated_archive_bytes_are_refused(originals: Originals) -> None:
    with recording("bundle-bytes") as tally:

        @fuzz_settings
        @given(data=st.data())
        def mutated(data: st.DataObject) -> None:
            archive = originals.archive
            for _ in range(data.draw(st.integers(1, 3))):
                archive = data.draw(mutate_bytes(archive))
            if extract(originals, tally, archive) is not None:
                assert archive == originals.archive, "a changed archive was accepted"

        mutated()


def test_archive_member_tricks_are_refused(originals: Originals) -> None:
    with recording("bundle-members") as tally:

        @fuzz_settings
        @given(archive=archive_tricks(originals.members))
        def tricked(archive: bytes) -> None:
            if extract(originals, tally, archive) is not None:
                assert archive == originals.archive, "a changed archive was accepted"

        tricked()


FORMS = ("canonical", "indented", "spliced")  # how an edited JSON document is written


def _manifest_bytes(document: Any, canonical: bool) -> bytes:
    try:
        return canonical_json(document) if canonical else json.dumps(document, indent=1).encode()
    except (TypeError, ValueError):  # a generated value with no canonical form
        return json.dumps(document).encode()


def test_edited_manifests_are_refused_unless_signed(originals: Originals) -> None:
    release = originals.keys.release
    with recording("bundle-manifest") as tally:

        @fuzz_settings
        @given(data=st.data(), resign=st.booleans(), form=st.sampled_from(FORMS))
        def edited(data: st.DataObject, resign: bool, form: str) -> None:
            document = json.loads(originals.manifest)
            for _ in range(data.draw(st.integers(1, 2))):
                document = edit_document(document, data.draw)
            if form == "spliced":
                manifest = splice(document, data.draw)
            else:
                manifest = _manifest_bytes(document, form == "canonical")
            signature = originals.members[1]
            if resign:
                sig = {
                    "keyid": release.public.keyid,
                    "sig": encode_signature(release.sign(manifest)),
                }
                signature = regular(SIGNATURE_NAME, canonical_json(sig))
            members = [regular(MANIFEST_NAME, manifest), signature, *originals.members[2:]]
            verified = extract(originals, tally, assemble(members))
            if verified is not None:
                assert manifest == originals.manifest or resign, "an unsigned edit was accepted"
                assert verified.manifest.to_bytes() == manifest, "accepted other than signed"

        edited()


@st.composite
def signature_texts(draw: st.DrawFn, keys: KeySet, original: dict[str, str]) -> bytes:
    """A replacement for manifest.sig: edited, random, another key id, another signature."""
    how = draw(st.sampled_from(("edit", "splice", "bytes", "keyid", "sig")))
    if how == "edit":
        return _manifest_bytes(edit_document(original, draw), draw(st.booleans()))
    if how == "splice":
        return splice(original, draw)
    if how == "bytes":
        return bytes(draw(st.binary(max_size=200)))
    changed = dict(original)
    if how == "keyid":
        others = [keys.root, keys.assignment, PrivateKey.generate()]
        changed["keyid"] = draw(st.sampled_from([k.public.keyid for k in others]) | st.text())
    else:
        raw = st.binary(max_size=70).map(encode_signature)
        changed["sig"] = draw(raw | st.text(max_size=90) | raw.map(lambda s: s.rstrip("=")))
    return canonical_json(changed)


def test_edited_signatures_are_refused(originals: Originals) -> None:
    original = json.loads(originals.members[1].content)
    with recording("bundle-signature") as tally:

        @fuzz_settings
        @given(data=st.data())
        def edited(data: st.DataObject) -> None:
            text = data.draw(signature_texts(originals.keys, original))
            members = list(originals.members)
            members[1] = regular(SIGNATURE_NAME, text)
            if extract(originals, tally, assemble(members)) is not None:
                found = json.loads(text)
                assert found["keyid"] == original["keyid"]
                assert decode_signature(found["sig"], "") == decode_signature(original["sig"], "")

        edited()


def _signed_part(document: bytes) -> bytes:
    return canonical_json(json.loads(document)["signed"])


@st.composite
def _resigned(
    draw: st.DrawFn, signed: dict[str, Any], keys: KeySet, signer: PrivateKey
) -> tuple[bytes, dict[str, Any]]:
    """The signed object with generated fields, signed again (usually by `signer`)."""
    edited = dict(signed)
    for _ in range(draw(st.integers(1, 3))):
        if draw(st.booleans()):
            edited = edit_document(edited, draw)
        elif isinstance(edited, dict):
            key = draw(st.sampled_from(sorted(edited) or ["type"]))
            edges = st.sampled_from(EDGE_INTEGERS) | st.sampled_from(EDGE_FLOATS)
            edited[key] = draw(edges | scalars | json_values())
    signer = draw(st.sampled_from((signer, signer, keys.release, keys.assignment, keys.root)))
    try:
        return sign_document(
            edited if isinstance(edited, dict) else {"x": edited}, [signer]
        ), edited
    except (TypeError, ValueError):  # no canonical form: the document cannot be signed at all
        return json.dumps({"signed": edited, "signatures": []}).encode(), edited


@st.composite
def document_variants(
    draw: st.DrawFn, original: bytes, keys: KeySet, signer: PrivateKey
) -> tuple[str, bytes, dict[str, Any] | None]:
    """How a signed document was changed, its bytes, and the signed object if re-signed."""
    how = draw(st.sampled_from(("edit", "splice", "resign", "bytes", "reserialize")))
    if how == "edit":
        return how, json.dumps(edit_document(json.loads(original), draw)).encode(), None
    if how == "splice":
        return how, splice(json.loads(original), draw), None
    if how == "resign":
        document, signed = draw(_resigned(json.loads(original)["signed"], keys, signer))
        return how, document, signed
    if how == "bytes":
        return how, draw(mutate_bytes(original)), None
    indent = draw(st.sampled_from((None, 0, 2)))
    ascii_only = draw(st.booleans())
    return (
        how,
        json.dumps(json.loads(original), indent=indent, ensure_ascii=ascii_only).encode(),
        None,
    )


def test_edited_assignments_are_refused_unless_signed(originals: Originals) -> None:
    with recording("assignment") as tally:

        @fuzz_settings
        @given(
            variant=document_variants(
                originals.assignment, originals.keys, originals.keys.assignment
            ),
            last=st.sampled_from((0, 0, 6, 7, -1)),
            now=st.sampled_from((NOW, NOW, NOW + 60, 0.0)),
        )
        def edited(
            variant: tuple[str, bytes, dict[str, Any] | None], last: int, now: float
        ) -> None:
            how, document, signed = variant
            accepted = judge(
                tally,
                lambda: verify_assignment(
                    document, originals.trust, device_id=DEVICE, last_serial=last, now=now
                ),
            )
            if how == "reserialize" and (last, now) == (0, NOW):
                assert accepted is not None, "the same document, written otherwise, was refused"
            if accepted is None:
                return
            assert accepted.device_id == DEVICE
            assert accepted.serial > last
            assert now < accepted.expires_at
            if signed is None:
                assert _signed_part(document) == _signed_part(originals.assignment)
            else:
                assert (accepted.serial, accepted.expires_at) == (
                    signed["serial"],
                    signed["expires_at"],
                )

        edited()


def test_edited_key_lists_are_refused_unless_signed(originals: Originals) -> None:
    keys = originals.keys
    with recording("keylist") as tally:

        @fuzz_settings
        @given(variant=document_variants(keys.document, keys, keys.root), update=st.booleans())
        def edited(variant: tuple[str, bytes, dict[str, Any] | None], update: bool) -> None:
            how, document, signed = variant
            if update:
                store = judge(tally, lambda: originals.trust.update(document))
            else:
                store = judge(tally, lambda: TrustStore.bootstrap(keys.root.public, document))
            if how == "reserialize" and not update:
                assert store is not None, "the same key list, written otherwise, was refused"
            if store is None:
                return
            if signed is None:
                assert _signed_part(document) == _signed_part(keys.document)
            else:
                assert store.key_list.version == signed["version"]
                assert store.key_list.root.keyid == signed["root"]["keyid"]

        edited()
