"""The key list: which keys this fleet trusts, signed by the root key (TUF-style root of trust).

A `KeyList` names one root key, the release keys (sign bundle manifests) and the assignment
keys (sign assignment documents). No key may hold two roles. Its signed form is the envelope of
`shared.signed_document`: `{"signed": {"type", "version", "issued_at", "root", "release_keys",
"assignment_keys"}, "signatures": [{"keyid", "sig"}]}`.

Rotation rules, enforced by `TrustStore`:
- a device starts from a pinned root public key: `bootstrap` accepts a list signed by that root
  that names it, or one that names a new root and is signed by both the pinned and the new root
  (the device was pinned one root rotation ago);
- `update` accepts only a higher version, signed by the root of the list already trusted; when
  the new list names another root it must be signed by that new root too, so neither an old
  root alone nor a new key alone can take over;
- an equal or lower version raises `KeyListRollback`, even when correctly signed;
- a key that a newer list leaves out is no longer trusted, for any role.
Key lists do not expire: freshness comes from the assignments, which do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType

from shared.keys import PrivateKey, PublicKey, short_id
from shared.signed_document import SignedDocument, sign_document
from shared.strict_json import JsonFields
from shared.trust_errors import KeyListRollback, MalformedDocument, UntrustedKey

KEYLIST_TYPE = "edgefleet-keylist/1"


@dataclass(frozen=True, slots=True)
class KeyList:
    """The keys trusted for each role, at one version."""

    version: int
    issued_at: float
    root: PublicKey
    release_keys: tuple[PublicKey, ...]
    assignment_keys: tuple[PublicKey, ...]

    def __post_init__(self) -> None:
        if self.version < 1:
            raise MalformedDocument(f"key list version must be >= 1, not {self.version}")
        seen: dict[str, str] = {}
        for role, key in self.roles():
            if key.keyid in seen:
                raise MalformedDocument(
                    f"key list version {self.version}: key {short_id(key.keyid)} is listed as "
                    f"{seen[key.keyid]} and again as {role}; a key holds one role"
                )
            seen[key.keyid] = role

    def roles(self) -> list[tuple[str, PublicKey]]:
        """Every key with its role ("a release key"), the root first."""
        return [
            ("the root key", self.root),
            *(("a release key", k) for k in self.release_keys),
            *(("an assignment key", k) for k in self.assignment_keys),
        ]

    def role_of(self, keyid: str) -> str | None:
        """Describe the role of a key id in this list ("a release key"), or None."""
        return next((role for role, key in self.roles() if key.keyid == keyid), None)

    def as_json(self) -> dict[str, object]:
        """Return the `signed` object of the key list document."""
        return {
            "type": KEYLIST_TYPE,
            "version": self.version,
            "issued_at": self.issued_at,
            "root": self.root.as_json(),
            "release_keys": [k.as_json() for k in self.release_keys],
            "assignment_keys": [k.as_json() for k in self.assignment_keys],
        }

    @classmethod
    def from_json(cls, fields: JsonFields) -> KeyList:
        """Read the `signed` object of a key list document."""
        if fields.text("type") != KEYLIST_TYPE:
            fields.fail("type", f"expected {KEYLIST_TYPE!r}")
        key_list = cls(
            version=fields.integer("version", minimum=1),
            issued_at=fields.number("issued_at", minimum=0),
            root=PublicKey.from_json(fields.value("root"), fields.path("root")),
            release_keys=_keys(fields, "release_keys"),
            assignment_keys=_keys(fields, "assignment_keys"),
        )
        fields.finish()
        return key_list

    def rotated(
        self,
        issued_at: float,
        *,
        root: PublicKey | None = None,
        release_keys: tuple[PublicKey, ...] | None = None,
        assignment_keys: tuple[PublicKey, ...] | None = None,
    ) -> KeyList:
        """Return the next version with the given roles' keys replaced and the others kept."""
        return KeyList(
            version=self.version + 1,
            issued_at=issued_at,
            root=root or self.root,
            release_keys=self.release_keys if release_keys is None else release_keys,
            assignment_keys=self.assignment_keys if assignment_keys is None else assignment_keys,
        )


def _keys(fields: JsonFields, key: str) -> tuple[PublicKey, ...]:
    path = fields.path(key)
    return tuple(
        PublicKey.from_json(item, f"{path}[{i}]") for i, item in enumerate(fields.values(key))
    )


def sign_key_list(key_list: KeyList, signers: Sequence[PrivateKey]) -> bytes:
    """Return the signed key list document (canonical JSON), one signature per signer."""
    return sign_document(key_list.as_json(), signers)


@dataclass(frozen=True, slots=True)
class SignedKeyList:
    """A parsed key list document; its signatures are not yet checked."""

    key_list: KeyList
    document: bytes
    envelope: SignedDocument

    @classmethod
    def parse(cls, document: bytes) -> SignedKeyList:
        """Parse a key list document; raise `MalformedDocument` naming the field at fault."""
        envelope = SignedDocument.parse(document, "key list", "keylist")
        key_list = KeyList.from_json(envelope.signed)
        envelope = replace(envelope, what=f"key list version {key_list.version}")
        return cls(key_list, document, envelope)

    def require_root_signatures(self, trusted_root: PublicKey) -> None:
        """Require a signature by `trusted_root`, and by the listed root when it is another key."""
        self.envelope.require_signature(trusted_root, "the trusted root key")
        if self.key_list.root != trusted_root:
            self.envelope.require_signature(self.key_list.root, "the new root key it names")


@dataclass(frozen=True, slots=True)
class TrustStore:
    """The key list this device trusts now; immutable, `update` returns a new store."""

    signed: SignedKeyList
    # Key ids that an earlier trusted list named and a later one dropped -> last version naming
    # them; only to say "dropped by rotation" instead of "unknown" in messages.
    retired: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def bootstrap(cls, pinned_root: PublicKey, document: bytes) -> TrustStore:
        """Trust a key list signed by the pinned root (and by the new root it may name)."""
        signed = SignedKeyList.parse(document)
        signed.require_root_signatures(pinned_root)
        return cls(signed)

    def update(self, document: bytes) -> TrustStore:
        """Trust a newer key list signed by the current root; raise `KeyListRollback` if older."""
        signed = SignedKeyList.parse(document)
        current = self.key_list
        if signed.key_list.version <= current.version:
            raise KeyListRollback(
                f"key list version {signed.key_list.version} is not newer than the trusted "
                f"version {current.version}"
            )
        signed.require_root_signatures(current.root)
        listed = {key.keyid for _, key in signed.key_list.roles()}
        retired = {k: v for k, v in self.retired.items() if k not in listed}
        for _, key in current.roles():
            if key.keyid not in listed:
                retired[key.keyid] = current.version
        return TrustStore(signed, MappingProxyType(retired))

    @property
    def key_list(self) -> KeyList:
        """The trusted key list."""
        return self.signed.key_list

    def to_document(self) -> bytes:
        """The signed key list bytes as received (persist them, bootstrap from them later)."""
        return self.signed.document

    def release_key(self, keyid: str) -> PublicKey:
        """Return the release key with this id; raise `UntrustedKey` if it is not one."""
        return self._find(keyid, self.key_list.release_keys, "a release key")

    def assignment_key(self, keyid: str) -> PublicKey:
        """Return the assignment key with this id; raise `UntrustedKey` if it is not one."""
        return self._find(keyid, self.key_list.assignment_keys, "an assignment key")

    def _find(self, keyid: str, keys: tuple[PublicKey, ...], role: str) -> PublicKey:
        for key in keys:
            if key.keyid == keyid:
                return key
        version = self.key_list.version
        if keyid in self.retired:
            raise UntrustedKey(
                f"key {short_id(keyid)} was dropped from the key list after version "
                f"{self.retired[keyid]}; version {version} no longer trusts it"
            )
        actual = self.key_list.role_of(keyid)
        if actual is not None:
            raise UntrustedKey(
                f"key {short_id(keyid)} is {actual}, not {role}, in key list version {version}"
            )
        raise UntrustedKey(f"key {short_id(keyid)} is not {role} in key list version {version}")
