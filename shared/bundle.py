"""Signed model bundles: writing them, verifying them in one pass, and extracting them safely.

Archive layout (a canonical ustar archive, see `shared.archive`), members in this order:

    manifest.json     the `Manifest` as canonical JSON
    manifest.sig      canonical JSON {"keyid": hex, "sig": base64 Ed25519 over manifest.json}
    files/<path>      every file the manifest lists, in manifest order

`verify_bundle` streams the archive once and writes nothing. In order: manifest.json and
manifest.sig are read (header checks and size caps first); the signature is checked against a
release key of the trusted key list (`UntrustedKey`, `BadSignature`) before the manifest is
parsed (`ManifestError`); the manifest's file count and total size are checked against the
caps (`UnsafeArchive`); then each member's header is checked (type, name, duplicate, size cap:
`UnsafeArchive`) before its content is read, and its place, size, canonical header, SHA-256
and zero padding are compared with the manifest (`TamperedBundle`, which also covers missing,
extra and truncated members); last come the end marker and end of file. The archive's own
SHA-256 (what assignments name) is computed in the same pass.

`extract_bundle` verifies first, then runs the same pass again writing into a fresh temporary
directory beside `dest`, fsyncs it and renames it to `dest`. Each file lands at
`dest/<path>`; the signed manifest and its signature are kept in `dest/.bundle/` (no manifest
path can start with a dot, so they never collide) for re-verification later. A failure
removes the temporary directory, so `dest` either does not exist or is complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from shared.archive import (
    DEFAULT_LIMITS,
    READ_SIZE,
    ArchiveReader,
    ArchiveWriter,
    ExtractionLimits,
    Member,
    member_header,
    padding,
)
from shared.atomic import atomic_writer, fsync_directory
from shared.canonical import canonical_json
from shared.keylist import TrustStore
from shared.keys import PrivateKey, short_id
from shared.manifest import (
    BatchingHints,
    Compatibility,
    FileEntry,
    Golden,
    Manifest,
    TensorSignature,
    Variant,
)
from shared.signed_document import decode_signature, encode_signature
from shared.strict_json import JsonFields
from shared.trust_errors import (
    BadSignature,
    ManifestError,
    TamperedBundle,
    TrustError,
    UnsafeArchive,
)

MANIFEST_NAME = "manifest.json"
SIGNATURE_NAME = "manifest.sig"
FILES_DIR = "files"
METADATA_DIR = ".bundle"  # in an extracted bundle: manifest.json and manifest.sig
MAX_SIGNATURE_BYTES = 4096
_HASH_THREAD = "bundle-digest"

# Re-exported so that callers need only this module: the limits and the manifest types.
__all__ = [
    "FILES_DIR",
    "MANIFEST_NAME",
    "METADATA_DIR",
    "SIGNATURE_NAME",
    "BatchingHints",
    "BundleDigest",
    "Compatibility",
    "ExtractionLimits",
    "FileEntry",
    "Golden",
    "Manifest",
    "TensorSignature",
    "UnverifiedBundle",
    "Variant",
    "VerifiedBundle",
    "extract_bundle",
    "member_name",
    "read_unverified",
    "verify_bundle",
    "write_bundle",
]


@dataclass(frozen=True, slots=True)
class BundleDigest:
    """The archive's SHA-256 (hex) and size in bytes."""

    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class VerifiedBundle:
    """A bundle whose every byte was checked: its manifest, digest, size and signer."""

    manifest: Manifest
    digest: str  # SHA-256 hex of the whole archive, as assignments name it
    size: int
    signer_keyid: str


@dataclass(frozen=True, slots=True)
class UnverifiedBundle:
    """A bundle's manifest and claimed signer, read WITHOUT checking anything: display only."""

    manifest: Manifest
    signer_keyid: str | None


def member_name(path: str) -> str:
    """The archive member that holds a manifest file."""
    return f"{FILES_DIR}/{path}"


def write_bundle(
    out: Path, manifest: Manifest, sources: Mapping[str, Path], release_key: PrivateKey
) -> BundleDigest:
    """Write and sign a bundle atomically; `sources` maps each manifest path to a local file."""
    manifest = Manifest.from_json(manifest.as_json())  # the checks a verifier will make
    listed = {entry.path for entry in manifest.files}
    if set(sources) != listed:
        raise ManifestError(
            f"the sources do not match the manifest's files: missing "
            f"{sorted(listed - set(sources))}, unlisted {sorted(set(sources) - listed)}"
        )
    manifest_bytes = manifest.to_bytes()
    signature = release_key.sign(manifest_bytes)
    signature_bytes = canonical_json(
        {"keyid": release_key.public.keyid, "sig": encode_signature(signature)}
    )
    with atomic_writer(out) as handle:
        writer = ArchiveWriter(handle)
        for name, data in ((MANIFEST_NAME, manifest_bytes), (SIGNATURE_NAME, signature_bytes)):
            writer.write(member_header(name, len(data)) + data + padding(len(data)))
        for entry in manifest.files:
            _copy_source(writer, entry, sources[entry.path])
        sha256, size = writer.close()
    return BundleDigest(sha256, size)


def _copy_source(writer: ArchiveWriter, entry: FileEntry, source: Path) -> None:
    writer.write(member_header(member_name(entry.path), entry.size))
    digest = hashlib.sha256()
    copied = 0
    with source.open("rb") as handle:
        while copied <= entry.size and (block := handle.read(READ_SIZE)):
            copied += len(block)
            digest.update(block)
            if copied <= entry.size:
                writer.write(block)
    if copied != entry.size or digest.hexdigest() != entry.sha256:
        raise ManifestError(
            f"{source} changed: the manifest entry {entry.path!r} says {entry.size} bytes, sha256 "
            f"{entry.sha256[:16]}, the file now differs"
        )
    writer.write(padding(entry.size))


def verify_bundle(
    archive: Path, trust: TrustStore, limits: ExtractionLimits = DEFAULT_LIMITS
) -> VerifiedBundle:
    """Check every byte of a bundle against its signed manifest; write nothing."""
    return _scan(archive, trust, limits, None)


def extract_bundle(
    archive: Path, dest: Path, trust: TrustStore, limits: ExtractionLimits = DEFAULT_LIMITS
) -> VerifiedBundle:
    """Verify, then extract to `dest` (which must not exist) through a renamed temporary dir."""
    if dest.exists() or dest.is_symlink():
        raise FileExistsError(f"{dest} already exists")
    verified = verify_bundle(archive, trust, limits)
    staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=dest.parent))
    try:
        extracted = _scan(archive, trust, limits, staging)
        if extracted.digest != verified.digest:
            raise TamperedBundle(
                f"{archive} changed while it was extracted: sha256 {verified.digest[:16]} when "
                f"verified, {extracted.digest[:16]} when extracted"
            )
        for directory, _, _ in os.walk(staging, topdown=False):
            fsync_directory(Path(directory))
        os.rename(staging, dest)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fsync_directory(dest.parent)
    return extracted


def read_unverified(archive: Path, limits: ExtractionLimits = DEFAULT_LIMITS) -> UnverifiedBundle:
    """Read the manifest and claimed signer without verifying anything (for display)."""
    with archive.open("rb") as handle, ThreadPoolExecutor(1, _HASH_THREAD) as executor:
        reader = ArchiveReader(handle, executor)
        manifest_bytes = _small_member(reader, MANIFEST_NAME, limits.max_manifest_bytes)
        signature_bytes = _small_member(reader, SIGNATURE_NAME, MAX_SIGNATURE_BYTES)
    try:
        keyid: str | None = JsonFields.parse(signature_bytes, SIGNATURE_NAME).text("keyid")
    except TrustError:
        keyid = None
    return UnverifiedBundle(Manifest.from_bytes(manifest_bytes), keyid)


def _scan(
    archive: Path, trust: TrustStore, limits: ExtractionLimits, staging: Path | None
) -> VerifiedBundle:
    """One pass over the archive; with `staging`, also write every member under it."""
    with archive.open("rb", buffering=0) as handle, ThreadPoolExecutor(1, _HASH_THREAD) as executor:
        reader = ArchiveReader(handle, executor)
        manifest_bytes = _small_member(reader, MANIFEST_NAME, limits.max_manifest_bytes)
        signature_bytes = _small_member(reader, SIGNATURE_NAME, MAX_SIGNATURE_BYTES)
        keyid = _check_signature(manifest_bytes, signature_bytes, trust)
        manifest = Manifest.from_bytes(manifest_bytes)
        if manifest.to_bytes() != manifest_bytes:
            raise ManifestError(f"{MANIFEST_NAME} is not in canonical form")
        _check_caps(manifest, limits)
        if staging is not None:
            for name, data in ((MANIFEST_NAME, manifest_bytes), (SIGNATURE_NAME, signature_bytes)):
                with _output(staging / METADATA_DIR / name) as out:
                    out.write(data)
        consumed = 0
        for index, entry in enumerate(manifest.files):
            member = reader.next_member()
            expected = member_name(entry.path)
            if member is None:
                raise TamperedBundle(f"missing file {expected!r}: the archive ends before it")
            if consumed + member.size > limits.max_total_bytes:
                raise UnsafeArchive(
                    f"member {member.name!r} claims {member.size} bytes: with the {consumed} "
                    f"before it that exceeds the limit of {limits.max_total_bytes} bytes"
                )
            _check_place(member, manifest, index)
            target: AbstractContextManager[BinaryIO | None] = (
                _output(staging / entry.path) if staging else nullcontext(None)
            )
            with target as out:
                found = _hash_content(reader, member, out)
            if found != entry.sha256:
                raise TamperedBundle(
                    f"{expected}: sha256 {found[:16]} does not match the manifest's "
                    f"{entry.sha256[:16]}"
                )
            consumed += member.size
        extra = reader.next_member()
        if extra is not None:
            raise TamperedBundle(f"extra file {extra.name!r}: the manifest does not list it")
        reader.expect_end()
        digest, size = reader.digest()
    return VerifiedBundle(manifest, digest, size, keyid)


def _small_member(reader: ArchiveReader, name: str, cap: int) -> bytes:
    member = reader.next_member()
    if member is None:
        raise TamperedBundle(f"the archive ends before {name}")
    if member.size > cap:
        raise UnsafeArchive(f"{member.name!r} claims {member.size} bytes, over the limit of {cap}")
    if member.name != name:
        raise TamperedBundle(f"the archive has {member.name!r} where {name} must be")
    _check_header(member)
    data = reader.read(member.size, name)
    reader.expect_zeros(len(padding(member.size)), f"the padding after {name}")
    return data


def _check_signature(manifest_bytes: bytes, signature_bytes: bytes, trust: TrustStore) -> str:
    fields = JsonFields.parse(signature_bytes, SIGNATURE_NAME, BadSignature)
    keyid, text = fields.text("keyid"), fields.text("sig")
    fields.finish()
    key = trust.release_key(keyid)
    if not key.verify(decode_signature(text, SIGNATURE_NAME), manifest_bytes):
        raise BadSignature(
            f"{SIGNATURE_NAME}: the signature by release key {short_id(keyid)} does not verify "
            f"over {MANIFEST_NAME} (the manifest or the signature was changed)"
        )
    return keyid


def _check_caps(manifest: Manifest, limits: ExtractionLimits) -> None:
    if len(manifest.files) > limits.max_files:
        raise UnsafeArchive(
            f"the manifest lists {len(manifest.files)} files, over the limit of {limits.max_files}"
        )
    if manifest.total_size > limits.max_total_bytes:
        raise UnsafeArchive(
            f"the manifest's files add up to {manifest.total_size} bytes, over the limit of "
            f"{limits.max_total_bytes}"
        )


def _check_place(member: Member, manifest: Manifest, index: int) -> None:
    """The member must be the manifest's next file, with the listed size and a canonical header."""
    names = [member_name(entry.path) for entry in manifest.files]
    expected = names[index]
    if member.name in names[index + 1 :]:
        raise TamperedBundle(
            f"missing file {expected!r}: the archive has {member.name!r} in its place"
        )
    if member.name != expected:
        raise TamperedBundle(f"extra file {member.name!r}: the manifest does not list it")
    listed = manifest.files[index].size
    if member.size != listed:
        raise TamperedBundle(f"{expected}: {member.size} bytes in the archive, {listed} listed")
    _check_header(member)


def _check_header(member: Member) -> None:
    if member.header != member_header(member.name, member.size):
        raise TamperedBundle(
            f"the header of {member.name!r} (offset {member.offset}) is not in canonical form"
        )


def _hash_content(reader: ArchiveReader, member: Member, out: BinaryIO | None) -> str:
    digest = hashlib.sha256()
    for chunk in reader.chunks(member.size, repr(member.name)):
        digest.update(chunk)
        if out is not None:
            out.write(chunk)
    reader.expect_zeros(len(padding(member.size)), f"the padding after {member.name!r}")
    return digest.hexdigest()


@contextmanager
def _output(path: Path) -> Iterator[BinaryIO]:
    """A new file in the staging directory (paths were checked), fsynced when the block ends."""
    path.parent.mkdir(parents=True, exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(path, flags, 0o644), "wb") as out:
        yield out
        out.flush()
        os.fsync(out.fileno())
