"""Real keys, key lists and small bundles for the trust tests, built on disk without models."""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from shared.archive import BLOCK, end_of_archive, member_header, padding
from shared.bundle import write_bundle
from shared.keylist import KeyList, TrustStore, sign_key_list
from shared.keys import PrivateKey
from shared.manifest import (
    BatchingHints,
    Compatibility,
    FileEntry,
    Golden,
    Manifest,
    TensorSignature,
    Variant,
)

# Small files with distinct contents: one model, its weights, and the golden vectors.
TINY_FILES = {
    "model.xml": b"<net>tiny</net>\n",
    "model.bin": bytes(range(256)) * 3,
    "golden/inputs.npz": b"inputs-" * 50,
    "golden/expected.npz": b"expected",
}


@dataclass(frozen=True)
class KeySet:
    """A root, a release and an assignment key, and key list version 1 naming them."""

    root: PrivateKey
    release: PrivateKey
    assignment: PrivateKey
    key_list: KeyList
    document: bytes

    @property
    def trust(self) -> TrustStore:
        """A trust store bootstrapped from the pinned root."""
        return TrustStore.bootstrap(self.root.public, self.document)


def make_keys() -> KeySet:
    """Generate a fresh key set."""
    root, release, assignment = PrivateKey.generate(), PrivateKey.generate(), PrivateKey.generate()
    key_list = KeyList(1, 1000.0, root.public, (release.public,), (assignment.public,))
    return KeySet(root, release, assignment, key_list, sign_key_list(key_list, [root]))


def tiny_manifest(files: Sequence[FileEntry], name: str = "tiny", version: int = 1) -> Manifest:
    """A manifest for `TINY_FILES`-like files (an OpenVINO variant and golden vectors)."""
    return Manifest(
        name=name,
        version=version,
        created_at=1700000000.5,
        files=tuple(files),
        variants=(Variant("openvino", "fp32", "model.xml", ("CPU",)),),
        inputs=(TensorSignature("input", "FP32", (-1, 4)),),
        outputs=(TensorSignature("probabilities", "FP32", (-1, 3)),),
        compatibility=Compatibility({"openvino": "2024.0"}, ("avx2",), 1 << 20),
        golden=Golden("golden/inputs.npz", "golden/expected.npz", 1e-4),
        batching=BatchingHints(8, (1, 4, 8)),
        policy="throughput",
        labels={"probabilities": ("cat", "dog", "bird")},
    )


def write_tiny_bundle(
    directory: Path,
    signer: PrivateKey,
    name: str = "tiny",
    version: int = 1,
    files: dict[str, bytes] | None = None,
) -> Path:
    """Write the sources and a signed bundle under `directory`; return the bundle's path."""
    sources = {}
    for path, data in (files or TINY_FILES).items():
        source = directory / "src" / f"{name}-{version}" / path
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_bytes(data)
        sources[path] = source
    entries = [FileEntry.of(path, source) for path, source in sources.items()]
    out = directory / f"{name}-{version}.bundle"
    write_bundle(out, tiny_manifest(entries, name, version), sources, signer)
    return out


@dataclass(frozen=True)
class RawMember:
    """One member of an archive as bytes: a 512-byte header and the content."""

    header: bytes
    content: bytes

    @property
    def name(self) -> str:
        """The member's name, from its header."""
        return tarfile.TarInfo.frombuf(self.header, "utf-8", "strict").name


def regular(name: str, content: bytes) -> RawMember:
    """A regular-file member with the canonical header."""
    return RawMember(member_header(name, len(content)), content)


def special(name: str, kind: bytes, linkname: str = "") -> RawMember:
    """A link, device or other non-regular member, as any tar tool would write it."""
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return RawMember(info.tobuf(tarfile.USTAR_FORMAT, "utf-8", "strict"), b"")


def split_members(archive: bytes) -> list[RawMember]:
    """Cut a canonical archive into its members (the end marker is dropped)."""
    members, offset = [], 0
    while archive[offset : offset + BLOCK].strip(b"\0"):
        header = archive[offset : offset + BLOCK]
        size = tarfile.TarInfo.frombuf(header, "utf-8", "strict").size
        start = offset + BLOCK
        members.append(RawMember(header, archive[start : start + size]))
        offset = start + size + len(padding(size))
    return members


def assemble(members: Sequence[RawMember]) -> bytes:
    """Join members into an archive with canonical padding and end marker."""
    data = b"".join(m.header + m.content + padding(len(m.content)) for m in members)
    return data + end_of_archive(len(data))


def content_offset(archive: bytes, name: str) -> int:
    """Where the content of member `name` starts in the archive."""
    offset = 0
    for member in split_members(archive):
        if member.name == name:
            return offset + BLOCK
        offset += BLOCK + len(member.content) + len(padding(len(member.content)))
    raise KeyError(name)
