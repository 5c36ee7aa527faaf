"""Errors raised while signing and checking keys, key lists, bundles and assignments.

    EdgeFleetError
    └── TrustError                 a document, key or archive cannot be trusted
        ├── KeyFileError           a key file is missing, unreadable, of the wrong kind, or its
        │                          passphrase is wrong or missing
        ├── MalformedDocument      a signed document (key list, assignment) is not well formed
        │   └── ManifestError      a bundle manifest has a missing, unknown or mistyped field
        ├── UntrustedKey           signed by a key id that the key list does not name for that
        │                          role (unknown, or dropped by a rotation)
        ├── BadSignature           a signature does not verify, or is missing or unreadable
        ├── KeyListRollback        a key list whose version is not newer than the trusted one
        ├── TamperedBundle         a bundle's bytes differ from what its manifest covers: a hash
        │                          or size, a missing or extra file, a bad header, a truncation
        ├── UnsafeArchive          a member that must never be extracted: a link, a device, an
        │                          absolute or `..` path, a duplicate, or a size or count cap
        ├── ReplayedAssignment     an assignment whose serial is not above the last accepted one
        ├── ExpiredAssignment      an assignment past its expiry time (a freeze attack)
        ├── WrongDevice            an assignment or command addressed to another device (or a
        │                          group the device is not in)
        ├── DigestMismatch         a bundle whose sha256 or size is not the one assigned
        ├── ManifestMismatch       a bundle whose model name or version is not the one assigned
        ├── ExpiredCommand         a command past its expiry time, or issued in the future
        ├── ReplayedCommand        a command whose nonce was already accepted
        └── UnknownCommand         a command whose name this device does not implement

Every error is permanent for the document at hand: retrying the same bytes fails the same way.
Messages name what is at fault (the file, the key id, the expected and found hash prefixes).
"""

from shared.errors import EdgeFleetError


class TrustError(EdgeFleetError):
    """Base class of every signing and verification error."""


class KeyFileError(TrustError):
    """A key file cannot be used: unreadable, not an Ed25519 key, or a passphrase problem."""


class MalformedDocument(TrustError):
    """A signed document is not well formed; the message names the field at fault."""


class ManifestError(MalformedDocument):
    """A bundle manifest is not well formed; the message names the field at fault."""


class UntrustedKey(TrustError):
    """A document is signed by a key the key list does not name for that role."""


class BadSignature(TrustError):
    """A signature does not verify against the key it names, or cannot be read."""


class KeyListRollback(TrustError):
    """A key list is not newer than the one already trusted."""


class TamperedBundle(TrustError):
    """A bundle's bytes differ from what its signed manifest covers."""


class UnsafeArchive(TrustError):
    """A bundle archive holds a member that must never be extracted, or exceeds a cap."""


class ReplayedAssignment(TrustError):
    """An assignment's serial is not above the last one this device accepted."""


class ExpiredAssignment(TrustError):
    """An assignment is past its expiry time."""


class WrongDevice(TrustError):
    """An assignment or command is addressed to another device or group."""


class DigestMismatch(TrustError):
    """A bundle's digest or size differs from the one its assignment names."""


class ManifestMismatch(TrustError):
    """A bundle's model name or version differs from the one its assignment names."""


class ExpiredCommand(TrustError):
    """A signed command is past its expiry time (or claims to be issued in the future)."""


class ReplayedCommand(TrustError):
    """A signed command's nonce was already accepted: the same command, sent again."""


class UnknownCommand(TrustError):
    """A signed command names an action this device does not implement."""
