"""The operator's key directory: the files `edgefleet keys init` makes and `keys rotate` changes.

    root.key            root private key (signs key lists; keep it offline)
    release.key         release private key (signs bundle manifests)
    assignment.key      assignment private key (the control plane signs assignments with it)
    root.pub            root public key: what agents pin, PEM
    keylist.json        the signed key list, current version
    <role>.key.<N>      a private key replaced by rotation, last listed in key list version N
    keylist.<N>.json    key list version N, kept after rotation so a device that trusts an
                        older version can be walked forward one signed step at a time

Private keys are mode 0600, encrypted when a passphrase is given. Verifying needs only the
public files, `root.pub` and `keylist.json`. A rotation writes the new key and the kept copies
first and `keylist.json` last, so an interrupted rotation leaves the old list in force.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from shared.atomic import PRIVATE, write_atomic
from shared.keylist import KeyList, TrustStore, sign_key_list
from shared.keys import PrivateKey, PublicKey, load_public, save_public
from shared.trust_errors import KeyFileError

ROLES = ("root", "release", "assignment")
ROOT_PUB = "root.pub"
KEYLIST = "keylist.json"


def passphrase_from_env(variable: str | None, environ: Mapping[str, str]) -> bytes | None:
    """The passphrase held by an environment variable (never argv); None without a variable."""
    if variable is None:
        return None
    value = environ.get(variable)
    if not value:
        raise KeyFileError(f"the passphrase variable {variable} is not set or empty")
    return value.encode("utf-8")


@dataclass(frozen=True, slots=True)
class Rotation:
    """What a rotation did: the role, the key lists before and after, where the old key went."""

    role: str
    before: KeyList
    after: KeyList
    replaced: tuple[PublicKey, ...]  # the keys of the role that the new list drops
    new_key: PublicKey
    kept: Path | None  # the replaced private key's copy (None when its file was already gone)


@dataclass(frozen=True, slots=True)
class KeyDirectory:
    """A directory of keys laid out as the module docstring describes."""

    path: Path

    def key_file(self, role: str) -> Path:
        """The private key file of a role."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {', '.join(ROLES)}")
        return self.path / f"{role}.key"

    def trust_store(self) -> TrustStore:
        """Trust the key list, pinned to `root.pub` (public files only)."""
        root = load_public(self.path / ROOT_PUB)
        keylist = self.path / KEYLIST
        try:
            document = keylist.read_bytes()
        except OSError as exc:
            raise KeyFileError(f"{keylist}: cannot read: {exc.strerror or exc}") from None
        return TrustStore.bootstrap(root, document)

    def load_key(self, role: str, passphrase: bytes | None = None) -> PrivateKey:
        """Load a role's private key."""
        return PrivateKey.load(self.key_file(role), passphrase)

    def create(self, issued_at: float, passphrase: bytes | None = None) -> KeyList:
        """Generate the three keys and key list version 1 (overwrites what is there)."""
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        keys = {role: PrivateKey.generate() for role in ROLES}
        key_list = KeyList(
            version=1,
            issued_at=issued_at,
            root=keys["root"].public,
            release_keys=(keys["release"].public,),
            assignment_keys=(keys["assignment"].public,),
        )
        for role, key in keys.items():
            key.save(self.key_file(role), passphrase)
        save_public(self.path / ROOT_PUB, key_list.root)
        write_atomic(self.path / KEYLIST, sign_key_list(key_list, [keys["root"]]))
        return key_list

    def rotate(self, role: str, issued_at: float, passphrase: bytes | None = None) -> Rotation:
        """Replace one role's key with a new one and sign the next key list version."""
        key_file = self.key_file(role)  # also refuses an unknown role
        trust = self.trust_store()
        before = trust.key_list
        root = self.load_key("root", passphrase)
        if root.public != before.root:
            raise KeyFileError(f"{self.key_file('root')} is not the root key {KEYLIST} names")
        new = PrivateKey.generate()
        signers = [root]
        if role == "root":
            replaced: tuple[PublicKey, ...] = (before.root,)
            after = before.rotated(issued_at, root=new.public)
            signers.append(new)  # a new root must also prove it holds its key
        elif role == "release":
            replaced = before.release_keys
            after = before.rotated(issued_at, release_keys=(new.public,))
        else:
            replaced = before.assignment_keys
            after = before.rotated(issued_at, assignment_keys=(new.public,))
        document = sign_key_list(after, signers)
        trust.update(document)  # the rules every device applies must accept it
        write_atomic(self.path / f"keylist.{before.version}.json", trust.to_document())
        kept = self._keep(key_file, before.version)
        new.save(key_file, passphrase)
        if role == "root":
            save_public(self.path / ROOT_PUB, new.public)
        write_atomic(self.path / KEYLIST, document)
        return Rotation(role, before, after, replaced, new.public, kept)

    def _keep(self, current: Path, version: int) -> Path | None:
        if not current.exists():
            return None
        kept = current.with_name(f"{current.name}.{version}")
        write_atomic(kept, current.read_bytes(), PRIVATE)
        return kept

    def existing(self) -> list[str]:
        """The names of the files `create` would overwrite that already exist."""
        names = [*(f"{role}.key" for role in ROLES), ROOT_PUB, KEYLIST]
        return [name for name in names if os.path.lexists(self.path / name)]
