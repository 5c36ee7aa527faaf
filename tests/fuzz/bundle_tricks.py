"""Archive-level tricks on a valid bundle: members added, copied, dropped, renamed, retyped.

`archive_tricks(members)` draws one to three edits of a bundle's members (as
`tests.shared.builders` splits them) and assembles the result: an extra member with a hostile
name (absolute, `..`, backslash, control characters, too long for ustar), a link, device, FIFO,
directory or pax/GNU extension member, a duplicate, a header that declares another (or a huge)
size, a header that is valid tar but not canonical (mode, owner, time, GNU or pax format).
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from typing import Literal

from hypothesis import strategies as st

from tests.shared.builders import RawMember, assemble

HOSTILE_NAMES = (
    "../escape",
    "/etc/passwd",
    "files/../../escape",
    "files/./model.xml",
    "files//x",
    "files/a\\b",
    "files/\x01ctl",
    "files/" + "n" * 150,
    "files/é",
    ".bundle/manifest.json",
    "manifest.json",
    "files/model.xml",
    "files/",
    "",
)
KINDS = (
    tarfile.SYMTYPE,
    tarfile.LNKTYPE,
    tarfile.CHRTYPE,
    tarfile.BLKTYPE,
    tarfile.FIFOTYPE,
    tarfile.DIRTYPE,
    tarfile.CONTTYPE,
    tarfile.GNUTYPE_SPARSE,
    b"Z",
)
SIZES = (0, 1, 511, 512, 513, 2**32, 8**11 - 1, 2**33, 2**63)
TarFormat = Literal[0, 1, 2]  # tarfile.USTAR_FORMAT, GNU_FORMAT, PAX_FORMAT
FORMATS: tuple[TarFormat, ...] = (tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT)

names = st.sampled_from(HOSTILE_NAMES) | st.text(max_size=24)


def header(
    name: str,
    size: int,
    kind: bytes = tarfile.REGTYPE,
    linkname: str = "",
    tar_format: TarFormat = tarfile.USTAR_FORMAT,
    mode: int = 0o644,
    mtime: int = 0,
) -> bytes:
    """A member header as tar tools write it; GNU form when ustar cannot hold the fields."""
    info = tarfile.TarInfo(name)
    info.size, info.type, info.linkname, info.mode, info.mtime = size, kind, linkname, mode, mtime
    try:
        return info.tobuf(tar_format, "utf-8", "surrogateescape")
    except ValueError:  # a name or number too long for ustar
        return info.tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")


def _name_of(member: RawMember) -> str:
    try:
        return member.name
    except (tarfile.TarError, UnicodeDecodeError):  # an earlier edit broke this header
        return "files/model.xml"


@st.composite
def _edit(draw: st.DrawFn, members: list[RawMember]) -> list[RawMember]:
    members = list(members)
    where = draw(st.integers(0, max(0, len(members) - 1)))
    kind = draw(
        st.sampled_from(("add", "special", "copy", "drop", "swap", "rename", "resize", "restamp"))
    )
    if kind == "add":
        content = draw(st.binary(max_size=600))
        members.insert(where, RawMember(header(draw(names), len(content)), content))
    elif kind == "special":
        made = header(draw(names), 0, draw(st.sampled_from(KINDS)), draw(names))
        members.insert(where, RawMember(made, b""))
    elif not members:
        return members
    elif kind == "copy":
        members.insert(draw(st.integers(0, len(members))), members[where])
    elif kind == "drop":
        del members[where]
    elif kind == "swap":
        other = draw(st.integers(0, len(members) - 1))
        members[where], members[other] = members[other], members[where]
    elif kind == "rename":
        content = members[where].content
        members[where] = RawMember(header(draw(names), len(content)), content)
    elif kind == "resize":
        member = members[where]
        members[where] = RawMember(
            header(_name_of(member), draw(st.sampled_from(SIZES))), member.content
        )
    else:
        member = members[where]
        restamped = header(
            _name_of(member),
            len(member.content),
            tar_format=draw(st.sampled_from(FORMATS)),
            mode=draw(st.sampled_from((0o644, 0o755, 0o4755, 0o600))),
            mtime=draw(st.sampled_from((0, 1, 1700000000))),
        )
        members[where] = RawMember(restamped, member.content)
    return members


@st.composite
def archive_tricks(draw: st.DrawFn, members: Sequence[RawMember]) -> bytes:
    """One to three member edits of a bundle, assembled with canonical padding."""
    edited = list(members)
    for _ in range(draw(st.integers(1, 3))):
        edited = draw(_edit(edited))
    return assemble(edited)
