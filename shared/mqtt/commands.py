"""Commands to devices: signed by an assignment key, short-lived, never accepted twice.

    {"signed": {"type": "edgefleet-command/1", "name": "sync", "args": {},
                "device_id": "edge-042", "group": null, "issued_at", "expires_at", "nonce"},
     "signatures": [{"keyid", "sig"}]}

A command travels as the payload of an envelope with schema `edgefleet.command/1` on a device's
or a group's `cmd` topic. The broker's ACL says who may publish there, but trust comes only
from the signature: anyone who can publish (another broker account, a compromised device) can
do no more than cause a logged rejection.

`CommandVerifier.verify` checks, in order: the document's shape; a signature by an assignment
key of the trusted key list (`UntrustedKey`, `BadSignature`); the fields (`MalformedDocument`,
`UnknownCommand` for a name outside `COMMANDS`); the addressee (`WrongDevice` for another
device or a group this device is not in); the time (`ExpiredCommand` when `now >= expires_at`
or when it claims to be issued more than `MAX_CLOCK_SKEW_S` in the future); the nonce
(`ReplayedCommand`). Nonces are remembered until their command expires, at most
`nonce_window` of them: when the window is full the oldest is forgotten and every command
issued no later than it is refused from then on, so bounded memory never reopens a replay.
A restarted device forgets its nonces, which is why a command lives at most
`MAX_COMMAND_LIFETIME_S` and every command is safe to run twice.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shared.canonical import canonical_json, parse_json
from shared.keylist import TrustStore
from shared.keys import PrivateKey
from shared.mqtt.envelope import SCHEMA_COMMAND, Envelope
from shared.mqtt.errors import TopicError
from shared.mqtt.topics import check_id
from shared.signed_document import SignedDocument, sign_document
from shared.strict_json import JsonFields
from shared.trust_errors import (
    ExpiredCommand,
    MalformedDocument,
    ReplayedCommand,
    TrustError,
    UnknownCommand,
    UntrustedKey,
    WrongDevice,
)

log = logging.getLogger(__name__)

COMMAND_TYPE = "edgefleet-command/1"
COMMANDS = ("sync", "rollback", "bench", "report")
MAX_COMMAND_LIFETIME_S = 3600.0
MAX_CLOCK_SKEW_S = 60.0
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")


@dataclass(frozen=True, slots=True)
class Command:
    """One signed instruction for a device, or for every member of a group."""

    name: str
    args: dict[str, Any]
    device_id: str | None
    group: str | None
    issued_at: float
    expires_at: float
    nonce: str

    def __post_init__(self) -> None:
        if self.name not in COMMANDS:
            raise UnknownCommand(
                f"command {self.name!r} is not one of {', '.join(COMMANDS)} (nonce {self.nonce})"
            )
        if (self.device_id is None) == (self.group is None):
            raise MalformedDocument("command: exactly one of device_id and group must be set")
        if not _NONCE.fullmatch(self.nonce):
            raise MalformedDocument("command.nonce: expected 16-64 characters of [A-Za-z0-9_-]")
        lifetime = self.expires_at - self.issued_at
        if not 0 < lifetime <= MAX_COMMAND_LIFETIME_S:
            raise MalformedDocument(
                f"command.expires_at: must be after issued_at by at most "
                f"{MAX_COMMAND_LIFETIME_S:.0f} s, found {lifetime:.0f} s"
            )

    @classmethod
    def new(
        cls,
        name: str,
        args: dict[str, Any] | None = None,
        *,
        device_id: str | None = None,
        group: str | None = None,
        now: float,
        lifetime_s: float = 300.0,
    ) -> Command:
        """A command issued at `now`, valid for `lifetime_s`, with a fresh random nonce."""
        return cls(name, dict(args or {}), device_id, group, now, now + lifetime_s, new_nonce())

    @property
    def addressee(self) -> str:
        """'device X' or 'group G', for messages."""
        return f"device {self.device_id!r}" if self.device_id else f"group {self.group!r}"

    def as_json(self) -> dict[str, object]:
        """Return the `signed` object of the command document."""
        return {
            "type": COMMAND_TYPE,
            "name": self.name,
            "args": self.args,
            "device_id": self.device_id,
            "group": self.group,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "nonce": self.nonce,
        }

    @classmethod
    def from_json(cls, fields: JsonFields) -> Command:
        """Read the `signed` object; raise `MalformedDocument` naming the field at fault."""
        if fields.text("type") != COMMAND_TYPE:
            fields.fail("type", f"expected {COMMAND_TYPE!r}")
        args = fields.value("args")
        if not isinstance(args, dict):
            fields.fail("args", "expected an object")
        command = cls(
            name=fields.text("name"),
            args=args,
            device_id=_optional_id(fields, "device_id"),
            group=_optional_id(fields, "group"),
            issued_at=fields.number("issued_at", minimum=0),
            expires_at=fields.number("expires_at", minimum=0),
            nonce=fields.text("nonce"),
        )
        fields.finish()
        return command


def _optional_id(fields: JsonFields, key: str) -> str | None:
    value = fields.value(key)
    if value is None:
        return None
    if not isinstance(value, str):
        fields.fail(key, "expected null or a string")
    try:
        return check_id(value, key)
    except TopicError as exc:
        fields.fail(key, str(exc))


def new_nonce() -> str:
    """A random nonce (22 URL-safe characters, 128 bits)."""
    return secrets.token_urlsafe(16)


def sign_command(command: Command, key: PrivateKey) -> bytes:
    """Return the signed command document (canonical JSON)."""
    return sign_document(command.as_json(), [key])


def command_envelope(command: Command, key: PrivateKey, *, sender: str, seq: int) -> Envelope:
    """The envelope that carries a signed command: `sender` is the control plane's id."""
    return Envelope(
        SCHEMA_COMMAND,
        check_id(sender),
        seq,
        command.issued_at,
        parse_json(sign_command(command, key)),
    )


class CommandVerifier:
    """Checks commands for one device and its groups; remembers nonces to refuse replays."""

    def __init__(
        self,
        trust: Callable[[], TrustStore],
        device_id: str,
        groups: Sequence[str],
        nonce_window: int = 1024,
    ) -> None:
        if nonce_window < 1:
            raise ValueError("nonce_window must be at least 1")
        self._trust = trust
        self._device_id = device_id
        self._groups = frozenset(groups)
        self._window = nonce_window
        self._nonces: OrderedDict[str, tuple[float, float]] = OrderedDict()  # issued, expires
        self._floor = float("-inf")  # commands issued at or before this are refused
        self.rejected: Counter[str] = Counter()

    def verify(self, data: bytes, now: float) -> Command:
        """Check a signed command document; raise the `TrustError` that says what is wrong."""
        envelope = SignedDocument.parse(data, "command", "command")
        signers = envelope.signer_keyids
        if not signers:
            raise UntrustedKey("command carries no signature")
        trust = self._trust()
        listed = {key.keyid for key in trust.key_list.assignment_keys}
        signer = next((keyid for keyid in signers if keyid in listed), signers[0])
        envelope.require_signature(trust.assignment_key(signer), "assignment key")
        command = Command.from_json(envelope.signed)
        if command.device_id is not None and command.device_id != self._device_id:
            raise WrongDevice(
                f"command {command.name!r} is for {command.addressee}, "
                f"not device {self._device_id!r}"
            )
        if command.group is not None and command.group not in self._groups:
            raise WrongDevice(
                f"command {command.name!r} is for {command.addressee}, which "
                f"device {self._device_id!r} is not in"
            )
        if now >= command.expires_at:
            raise ExpiredCommand(
                f"command {command.name!r} for {command.addressee} expired "
                f"{now - command.expires_at:.0f} s ago"
            )
        if command.issued_at > now + MAX_CLOCK_SKEW_S:
            raise ExpiredCommand(
                f"command {command.name!r} claims to be issued {command.issued_at - now:.0f} s "
                f"in the future; check the clocks"
            )
        self._remember(command, now)
        return command

    def verify_envelope(self, envelope: Envelope, now: float) -> Command:
        """Check a command received in an envelope (schema `edgefleet.command/1`)."""
        if envelope.schema != SCHEMA_COMMAND:
            raise MalformedDocument(f"envelope schema {envelope.schema!r} is not a command")
        return self.verify(canonical_json(envelope.payload), now)

    def accept(self, envelope: Envelope, now: float) -> Command | None:
        """Verify a command; on any trust error count it, log it and return None."""
        try:
            return self.verify_envelope(envelope, now)
        except TrustError as exc:
            self.rejected[type(exc).__name__] += 1
            log.warning(
                "rejected a command from %s (seq %d): %s: %s",
                envelope.device_id,
                envelope.seq,
                type(exc).__name__,
                exc,
            )
            return None

    def _remember(self, command: Command, now: float) -> None:
        if command.nonce in self._nonces:
            raise ReplayedCommand(
                f"command {command.name!r} with nonce {command.nonce} was already accepted"
            )
        if command.issued_at <= self._floor:
            raise ReplayedCommand(
                f"command {command.name!r} (nonce {command.nonce}) was issued before the oldest "
                f"nonce still remembered; it may be a replay, so it is refused"
            )
        for nonce, (_, expires_at) in list(self._nonces.items()):
            if expires_at <= now:  # an expired command is refused anyway
                del self._nonces[nonce]
        while len(self._nonces) >= self._window:
            _, (issued_at, _) = self._nonces.popitem(last=False)
            self._floor = max(self._floor, issued_at)
        self._nonces[command.nonce] = (command.issued_at, command.expires_at)
