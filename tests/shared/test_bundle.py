"""Bundles: writing, one-pass verification, the tamper matrix, and safe extraction."""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile
from pathlib import Path

import pytest

import shared.bundle
from shared.archive import BLOCK, member_header
from shared.bundle import (
    METADATA_DIR,
    ExtractionLimits,
    extract_bundle,
    read_unverified,
    verify_bundle,
)
from shared.keylist import sign_key_list
from shared.keys import PrivateKey
from shared.trust_errors import (
    BadSignature,
    TamperedBundle,
    TrustError,
    UnsafeArchive,
    UntrustedKey,
)
from tests.shared.builders import (
    TINY_FILES,
    KeySet,
    RawMember,
    assemble,
    content_offset,
    regular,
    special,
    split_members,
    write_tiny_bundle,
)


def flipped(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x01]) + data[offset + 1 :]


def rewrite(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_a_valid_bundle_verifies_with_the_archive_digest(bundle: Path, keys: KeySet) -> None:
    verified = verify_bundle(bundle, keys.trust)
    data = bundle.read_bytes()
    assert verified.digest == hashlib.sha256(data).hexdigest()
    assert verified.size == len(data)
    assert verified.signer_keyid == keys.release.public.keyid
    assert verified.manifest.name == "tiny"
    assert [f.path for f in verified.manifest.files] == list(TINY_FILES)


def test_the_archive_is_canonical_and_readable_by_tar(bundle: Path) -> None:
    with tarfile.open(bundle) as archive:
        names = archive.getnames()
        assert all(m.isreg() and m.mode == 0o644 and m.mtime == 0 for m in archive)
    assert names == ["manifest.json", "manifest.sig", *(f"files/{p}" for p in TINY_FILES)]
    assert len(bundle.read_bytes()) % (20 * BLOCK) == 0


def test_the_same_inputs_give_the_same_bytes(tmp_path: Path, keys: KeySet) -> None:
    first = write_tiny_bundle(tmp_path / "a", keys.release).read_bytes()
    second = write_tiny_bundle(tmp_path / "b", keys.release).read_bytes()
    assert first == second  # Ed25519 signatures are deterministic and headers carry no time


def test_read_unverified_shows_the_manifest_and_claimed_signer(bundle: Path, keys: KeySet) -> None:
    unverified = read_unverified(bundle)
    assert unverified.manifest.version == 1
    assert unverified.signer_keyid == keys.release.public.keyid


# The tamper matrix: each case is rejected with its own error type and a precise message.


@pytest.mark.parametrize("path", list(TINY_FILES))
def test_a_flipped_byte_in_any_file_is_caught(bundle: Path, keys: KeySet, path: str) -> None:
    data = bundle.read_bytes()
    rewrite(bundle, flipped(data, content_offset(data, f"files/{path}") + 3))
    with pytest.raises(TamperedBundle, match=rf"files/{path}: sha256 [0-9a-f]{{16}} does not"):
        verify_bundle(bundle, keys.trust)


def test_a_flipped_byte_in_the_manifest_breaks_the_signature(bundle: Path, keys: KeySet) -> None:
    data = bundle.read_bytes()
    rewrite(bundle, flipped(data, content_offset(data, "manifest.json") + 20))
    with pytest.raises(BadSignature, match=r"does not verify over manifest.json"):
        verify_bundle(bundle, keys.trust)


def test_a_flipped_bit_in_the_signature_is_caught(bundle: Path, keys: KeySet) -> None:
    members = split_members(bundle.read_bytes())
    document = json.loads(members[1].content)
    signature = bytearray(base64.b64decode(document["sig"]))
    signature[10] ^= 0x01
    document["sig"] = base64.b64encode(bytes(signature)).decode()
    members[1] = regular("manifest.sig", json.dumps(document).encode())
    rewrite(bundle, assemble(members))
    with pytest.raises(BadSignature, match=r"release key [0-9a-f]{16} does not verify"):
        verify_bundle(bundle, keys.trust)


def test_a_signature_nested_past_the_stack_is_a_bad_signature(bundle: Path, keys: KeySet) -> None:
    # Found by tests/fuzz: manifest.sig is parsed before anything is trusted, and 2,000 levels
    # of nesting (within its 4 KiB cap) leaked RecursionError.
    members = split_members(bundle.read_bytes())
    members[1] = regular("manifest.sig", b"[" * 2000 + b"]" * 2000)
    rewrite(bundle, assemble(members))
    with pytest.raises(BadSignature, match=r"manifest\.sig: nested deeper than"):
        verify_bundle(bundle, keys.trust)


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (lambda data: content_offset(data, "files/model.bin") + 100, "ends 100 bytes into"),
        (lambda data: content_offset(data, "files/model.bin") - 200, "the header at offset"),
        (lambda data: content_offset(data, "files/golden/expected.npz") + 1100, "end-of-archive"),
        (lambda data: len(data) // 20, "truncated"),
    ],
    ids=["inside-content", "inside-header", "inside-end-marker", "early"],
)
def test_a_truncated_archive_is_caught(
    bundle: Path, keys: KeySet, cut: object, message: str
) -> None:
    data = bundle.read_bytes()
    rewrite(bundle, data[: cut(data)])  # type: ignore[operator]
    with pytest.raises(TamperedBundle, match=message):
        verify_bundle(bundle, keys.trust)


def test_an_extra_file_is_caught(bundle: Path, keys: KeySet) -> None:
    members = split_members(bundle.read_bytes())
    rewrite(bundle, assemble([*members, regular("files/extra.bin", b"surprise")]))
    with pytest.raises(TamperedBundle, match=r"extra file 'files/extra.bin'"):
        verify_bundle(bundle, keys.trust)


def test_a_missing_file_is_caught(bundle: Path, keys: KeySet) -> None:
    members = [m for m in split_members(bundle.read_bytes()) if m.name != "files/model.bin"]
    rewrite(bundle, assemble(members))
    with pytest.raises(TamperedBundle, match=r"missing file 'files/model.bin'"):
        verify_bundle(bundle, keys.trust)


def test_a_missing_last_file_is_caught(bundle: Path, keys: KeySet) -> None:
    rewrite(bundle, assemble(split_members(bundle.read_bytes())[:-1]))
    with pytest.raises(TamperedBundle, match=r"missing file 'files/golden/expected.npz'"):
        verify_bundle(bundle, keys.trust)


@pytest.mark.parametrize(
    ("member", "error", "message"),
    [
        (regular("files/../x", b"x"), UnsafeArchive, "contains a '..' component"),
        (regular("/etc/cron.d/x", b"x"), UnsafeArchive, "is an absolute path"),
        (regular("files\\..\\x", b"x"), UnsafeArchive, "contains a backslash"),
        (regular("files//x", b"x"), UnsafeArchive, "empty or '.' component"),
        (special("files/link", tarfile.SYMTYPE, "/etc/passwd"), UnsafeArchive, "symbolic link"),
        (special("files/hard", tarfile.LNKTYPE, "manifest.json"), UnsafeArchive, "a hard link"),
        (special("files/tty", tarfile.CHRTYPE), UnsafeArchive, "a character device"),
        (special("files/disk", tarfile.BLKTYPE), UnsafeArchive, "a block device"),
        (special("files/pipe", tarfile.FIFOTYPE), UnsafeArchive, "a FIFO"),
        (special("files/dir", tarfile.DIRTYPE), UnsafeArchive, "a directory"),
        (special("files/pax", tarfile.XHDTYPE), UnsafeArchive, "a pax extended header"),
        (regular("manifest.json", b"{}"), UnsafeArchive, "appears twice"),
        (regular("files/model.xml", TINY_FILES["model.xml"]), UnsafeArchive, "appears twice"),
    ],
    ids=[
        "dotdot", "absolute", "backslash", "empty-part", "symlink", "hardlink", "chardev",
        "blockdev", "fifo", "directory", "pax", "duplicate-manifest", "duplicate-file",
    ],
)  # fmt: skip
@pytest.mark.parametrize("position", ["first-file", "after-files"])
def test_an_unsafe_member_is_refused(
    bundle: Path,
    keys: KeySet,
    member: RawMember,
    error: type[TrustError],
    message: str,
    position: str,
) -> None:
    members = split_members(bundle.read_bytes())
    index = 2 if position == "first-file" else len(members)
    rewrite(bundle, assemble([*members[:index], member, *members[index:]]))
    with pytest.raises(error, match=message):
        verify_bundle(bundle, keys.trust)


def test_too_many_files_are_refused_before_any_is_read(bundle: Path, keys: KeySet) -> None:
    with pytest.raises(UnsafeArchive, match=r"lists 4 files, over the limit of 3"):
        verify_bundle(bundle, keys.trust, ExtractionLimits(max_files=3))


def test_too_many_bytes_are_refused_before_any_is_read(bundle: Path, keys: KeySet) -> None:
    total = sum(len(data) for data in TINY_FILES.values())
    with pytest.raises(UnsafeArchive, match=rf"add up to {total} bytes, over the limit of 1000"):
        verify_bundle(bundle, keys.trust, ExtractionLimits(max_total_bytes=1000))


def test_a_header_claiming_a_huge_size_is_refused_before_reading(
    bundle: Path, keys: KeySet
) -> None:
    # A size bomb: the header claims 8 GiB, the archive holds a few bytes. Reading would hit
    # the end of the file (TamperedBundle); the cap on the header must fire first.
    members = split_members(bundle.read_bytes())
    members[2] = RawMember(member_header("files/model.xml", (8 << 30) - 1), b"tiny")
    rewrite(bundle, assemble(members))
    with pytest.raises(UnsafeArchive, match=r"claims 8589934591 bytes.*limit of 4294967296"):
        verify_bundle(bundle, keys.trust)


def test_an_oversized_manifest_header_is_refused_before_reading(bundle: Path, keys: KeySet) -> None:
    members = split_members(bundle.read_bytes())
    members[0] = RawMember(member_header("manifest.json", 1 << 30), members[0].content)
    rewrite(bundle, assemble(members))
    with pytest.raises(UnsafeArchive, match=r"'manifest.json' claims 1073741824 bytes"):
        verify_bundle(bundle, keys.trust)


def test_a_bundle_signed_with_the_wrong_key_is_refused(tmp_path: Path, keys: KeySet) -> None:
    # The signature file names the trusted release key, but another key made the signature.
    archive = write_tiny_bundle(tmp_path, PrivateKey.generate())
    members = split_members(archive.read_bytes())
    document = json.loads(members[1].content)
    document["keyid"] = keys.release.public.keyid
    members[1] = regular("manifest.sig", json.dumps(document).encode())
    rewrite(archive, assemble(members))
    with pytest.raises(BadSignature, match=r"does not verify"):
        verify_bundle(archive, keys.trust)


def test_a_key_not_in_the_key_list_is_refused(tmp_path: Path, keys: KeySet) -> None:
    stranger = PrivateKey.generate()
    archive = write_tiny_bundle(tmp_path, stranger)
    with pytest.raises(UntrustedKey, match=f"key {stranger.public.keyid[:16]} is not a release"):
        verify_bundle(archive, keys.trust)


def test_a_key_of_another_role_is_refused(tmp_path: Path, keys: KeySet) -> None:
    archive = write_tiny_bundle(tmp_path, keys.assignment)
    with pytest.raises(UntrustedKey, match=r"is an assignment key, not a release key"):
        verify_bundle(archive, keys.trust)


def test_a_release_key_removed_by_rotation_is_refused(bundle: Path, keys: KeySet) -> None:
    new_release = PrivateKey.generate()
    rotated = keys.key_list.rotated(2000.0, release_keys=(new_release.public,))
    trust = keys.trust.update(sign_key_list(rotated, [keys.root]))
    with pytest.raises(UntrustedKey, match=r"dropped from the key list after version 1"):
        verify_bundle(bundle, trust)


@pytest.mark.parametrize(
    ("where", "message"),
    [
        (lambda data: content_offset(data, "files/model.bin") - BLOCK + 140, "bad checksum"),
        (lambda data: content_offset(data, "files/model.xml") + 20, "padding after"),
        (lambda data: len(data) - 1, "end-of-archive padding"),
    ],
    ids=["header-field", "content-padding", "trailer"],
)
def test_bytes_outside_members_are_covered_too(
    bundle: Path, keys: KeySet, where: object, message: str
) -> None:
    data = bundle.read_bytes()
    rewrite(bundle, flipped(data, where(data)))  # type: ignore[operator]
    with pytest.raises(TamperedBundle, match=message):
        verify_bundle(bundle, keys.trust)


def test_a_rewritten_header_with_a_fixed_checksum_is_caught(bundle: Path, keys: KeySet) -> None:
    members = split_members(bundle.read_bytes())
    info = tarfile.TarInfo("files/model.xml")
    info.size, info.mtime, info.mode = len(members[2].content), 1234, 0o755
    members[2] = RawMember(info.tobuf(tarfile.USTAR_FORMAT), members[2].content)
    rewrite(bundle, assemble(members))
    with pytest.raises(TamperedBundle, match=r"'files/model.xml' .* not in canonical form"):
        verify_bundle(bundle, keys.trust)


def test_data_after_the_end_of_the_archive_is_caught(bundle: Path, keys: KeySet) -> None:
    rewrite(bundle, bundle.read_bytes() + bytes(BLOCK))
    with pytest.raises(TamperedBundle, match=r"unexpected data after the end"):
        verify_bundle(bundle, keys.trust)


def test_every_single_byte_change_fails_verification(tmp_path: Path, keys: KeySet) -> None:
    files = {"model.xml": b"x", "model.bin": b"y" * 600}
    files |= {"golden/inputs.npz": b"i", "golden/expected.npz": b"e"}
    archive = write_tiny_bundle(tmp_path, keys.release, files=files)
    data = archive.read_bytes()
    survivors = []
    for offset in range(0, len(data), 7):  # every 7th byte: all headers, fields, paddings
        rewrite(archive, flipped(data, offset))
        try:
            verify_bundle(archive, keys.trust)
        except TrustError:
            continue
        survivors.append(offset)
    assert survivors == []


# Extraction.


def test_extract_writes_every_file_and_the_signed_manifest(
    tmp_path: Path, bundle: Path, keys: KeySet
) -> None:
    dest = tmp_path / "out" / "tiny-1"
    dest.parent.mkdir()
    verified = extract_bundle(bundle, dest, keys.trust)
    assert verified.digest == verify_bundle(bundle, keys.trust).digest
    for path, data in TINY_FILES.items():
        assert (dest / path).read_bytes() == data
    assert (dest / METADATA_DIR / "manifest.json").read_bytes() == split_members(
        bundle.read_bytes()
    )[0].content
    assert (dest / METADATA_DIR / "manifest.sig").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["tiny-1"]


@pytest.mark.parametrize("damage", ["flip-last-file", "symlink", "truncate"])
def test_a_failed_extraction_writes_nothing(
    tmp_path: Path, bundle: Path, keys: KeySet, damage: str
) -> None:
    data = bundle.read_bytes()
    if damage == "flip-last-file":
        data = flipped(data, content_offset(data, "files/golden/expected.npz"))
    elif damage == "symlink":
        members = split_members(data)
        data = assemble([*members, special("files/evil", tarfile.SYMTYPE, "/etc")])
    else:
        data = data[: len(data) - 20 * BLOCK - 10]
    rewrite(bundle, data)
    parent = tmp_path / "models"
    parent.mkdir()
    with pytest.raises(TrustError):
        extract_bundle(bundle, parent / "tiny-1", keys.trust)
    assert list(parent.iterdir()) == []


def test_extract_refuses_an_existing_destination(
    tmp_path: Path, bundle: Path, keys: KeySet
) -> None:
    dest = tmp_path / "exists"
    dest.mkdir()
    with pytest.raises(FileExistsError):
        extract_bundle(bundle, dest, keys.trust)


def test_an_archive_replaced_between_verify_and_extract_is_caught(
    tmp_path: Path, bundle: Path, keys: KeySet, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Swap in another validly signed bundle once the first pass is done: every check of the
    # second pass succeeds, only the archive digest tells the two apart.
    files = {**TINY_FILES, "model.bin": b"other weights"}
    other = write_tiny_bundle(tmp_path / "other", keys.release, files=files)
    real_verify = shared.bundle.verify_bundle

    def verify_then_swap(*args: object, **kwargs: object) -> shared.bundle.VerifiedBundle:
        result = real_verify(*args, **kwargs)  # type: ignore[arg-type]
        bundle.write_bytes(other.read_bytes())
        return result

    monkeypatch.setattr(shared.bundle, "verify_bundle", verify_then_swap)
    (tmp_path / "models").mkdir()
    with pytest.raises(TamperedBundle, match=r"changed while it was extracted"):
        extract_bundle(bundle, tmp_path / "models" / "tiny-1", keys.trust)
    assert list((tmp_path / "models").iterdir()) == []
