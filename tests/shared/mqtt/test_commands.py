"""Signed commands: only an assignment key's fresh, unseen command for this device is obeyed."""

from __future__ import annotations

import json
import logging

import pytest

from shared.canonical import canonical_json
from shared.keylist import TrustStore, sign_key_list
from shared.keys import PrivateKey
from shared.mqtt.commands import (
    MAX_CLOCK_SKEW_S,
    Command,
    CommandVerifier,
    command_envelope,
    sign_command,
)
from shared.mqtt.envelope import SCHEMA_TELEMETRY, Envelope, decode, encode
from shared.signed_document import sign_document
from shared.trust_errors import (
    BadSignature,
    ExpiredCommand,
    MalformedDocument,
    ReplayedCommand,
    UnknownCommand,
    UntrustedKey,
    WrongDevice,
)
from tests.shared.builders import KeySet

NOW = 1_800_000_000.0


@pytest.fixture
def verifier(keys: KeySet) -> CommandVerifier:
    """A verifier for device d1, a member of group line-1."""
    trust = keys.trust
    return CommandVerifier(lambda: trust, "d1", ["line-1"])


def sync_for(device_id: str = "d1", now: float = NOW) -> Command:
    """A fresh `sync` command for one device."""
    return Command.new("sync", {"reason": "test"}, device_id=device_id, now=now)


def test_a_signed_command_for_this_device_is_accepted(
    keys: KeySet, verifier: CommandVerifier
) -> None:
    command = sync_for()
    assert verifier.verify(sign_command(command, keys.assignment), NOW + 1) == command


def test_a_group_command_is_accepted_by_a_member_only(
    keys: KeySet, verifier: CommandVerifier
) -> None:
    command = Command.new("report", group="line-1", now=NOW)
    assert verifier.verify(sign_command(command, keys.assignment), NOW) == command
    other = Command.new("report", group="line-2", now=NOW)
    with pytest.raises(WrongDevice, match="group 'line-2'"):
        verifier.verify(sign_command(other, keys.assignment), NOW)


def test_a_command_for_another_device_is_refused(keys: KeySet, verifier: CommandVerifier) -> None:
    with pytest.raises(WrongDevice, match="device 'd2'"):
        verifier.verify(sign_command(sync_for("d2"), keys.assignment), NOW)


def test_a_forged_command_is_refused(keys: KeySet, verifier: CommandVerifier) -> None:
    document = json.loads(sign_command(sync_for(), keys.assignment))
    document["signed"]["name"] = "rollback"  # the signature covered "sync"
    with pytest.raises(BadSignature):
        verifier.verify(canonical_json(document), NOW)


@pytest.mark.parametrize("signer", ["release", "root", "stranger"])
def test_only_an_assignment_key_may_sign(
    keys: KeySet, verifier: CommandVerifier, signer: str
) -> None:
    key = PrivateKey.generate() if signer == "stranger" else getattr(keys, signer)
    with pytest.raises(UntrustedKey):
        verifier.verify(sign_command(sync_for(), key), NOW)


def test_an_unsigned_command_is_refused(verifier: CommandVerifier) -> None:
    unsigned = canonical_json({"signed": sync_for().as_json(), "signatures": []})
    with pytest.raises(UntrustedKey, match="no signature"):
        verifier.verify(unsigned, NOW)


def test_a_key_dropped_by_rotation_no_longer_signs(keys: KeySet) -> None:
    trust = [keys.trust]
    verifier = CommandVerifier(lambda: trust[0], "d1", [])
    new_key = PrivateKey.generate()
    rotated = keys.key_list.rotated(NOW, assignment_keys=(new_key.public,))
    trust[0] = trust[0].update(sign_key_list(rotated, [keys.root]))
    with pytest.raises(UntrustedKey, match="dropped"):
        verifier.verify(sign_command(sync_for(), keys.assignment), NOW)
    assert verifier.verify(sign_command(sync_for(), new_key), NOW).name == "sync"


def test_an_expired_command_is_refused(keys: KeySet, verifier: CommandVerifier) -> None:
    command = sync_for(now=NOW - 400)  # lives 300 s
    with pytest.raises(ExpiredCommand, match="expired 100 s ago"):
        verifier.verify(sign_command(command, keys.assignment), NOW)


def test_a_command_from_the_future_is_refused(keys: KeySet, verifier: CommandVerifier) -> None:
    command = sync_for(now=NOW + MAX_CLOCK_SKEW_S + 10)
    with pytest.raises(ExpiredCommand, match="future"):
        verifier.verify(sign_command(command, keys.assignment), NOW)


def test_a_replayed_command_is_refused(keys: KeySet, verifier: CommandVerifier) -> None:
    signed = sign_command(sync_for(), keys.assignment)
    verifier.verify(signed, NOW)
    with pytest.raises(ReplayedCommand, match="already accepted"):
        verifier.verify(signed, NOW + 5)


def test_a_refused_command_does_not_use_up_its_nonce(keys: KeySet) -> None:
    trust = keys.trust
    verifier = CommandVerifier(lambda: trust, "d1", [])
    signed = sign_command(sync_for(now=NOW), keys.assignment)
    with pytest.raises(ExpiredCommand):
        verifier.verify(signed, NOW - MAX_CLOCK_SKEW_S - 100)  # "from the future" at that time
    assert verifier.verify(signed, NOW).name == "sync"


def test_a_full_nonce_window_refuses_what_it_forgot(keys: KeySet) -> None:
    trust = keys.trust
    verifier = CommandVerifier(lambda: trust, "d1", [], nonce_window=2)
    first, second, third = (sync_for(now=NOW + i) for i in range(3))
    for command in (first, second, third):  # the third pushes `first` out of the window
        verifier.verify(sign_command(command, keys.assignment), NOW + 3)
    with pytest.raises(ReplayedCommand, match="oldest nonce"):
        verifier.verify(sign_command(first, keys.assignment), NOW + 4)
    late = sync_for(now=NOW - 1)  # never seen, but older than what was forgotten
    with pytest.raises(ReplayedCommand):
        verifier.verify(sign_command(late, keys.assignment), NOW + 4)
    assert verifier.verify(sign_command(sync_for(now=NOW + 4), keys.assignment), NOW + 4)


def test_expired_nonces_are_forgotten_without_raising_the_floor(keys: KeySet) -> None:
    trust = keys.trust
    verifier = CommandVerifier(lambda: trust, "d1", [], nonce_window=1)
    verifier.verify(sign_command(sync_for(now=NOW), keys.assignment), NOW)
    # 300 s later the first command has expired: forgetting it opens no replay.
    later = sync_for(now=NOW + 1)
    assert verifier.verify(sign_command(later, keys.assignment), NOW + 300)


def test_an_unknown_command_is_refused(keys: KeySet, verifier: CommandVerifier) -> None:
    signed = sync_for().as_json() | {"name": "reboot"}
    with pytest.raises(UnknownCommand, match="reboot"):
        verifier.verify(sign_document(signed, [keys.assignment]), NOW)
    with pytest.raises(UnknownCommand):
        Command.new("reboot", device_id="d1", now=NOW)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"group": "line-1"}, "exactly one of device_id and group"),
        ({"device_id": None}, "exactly one of device_id and group"),
        ({"device_id": "a/b"}, "device_id"),
        ({"nonce": "short"}, "nonce"),
        ({"expires_at": NOW + 7200}, "expires_at"),
        ({"args": []}, "args"),
        ({"type": "edgefleet-assignment/1"}, "type"),
        ({"extra": 1}, "unknown field"),
    ],
)
def test_malformed_commands_are_refused(
    keys: KeySet, verifier: CommandVerifier, changes: dict[str, object], message: str
) -> None:
    signed = sync_for().as_json() | changes
    with pytest.raises(MalformedDocument, match=message):
        verifier.verify(sign_document(signed, [keys.assignment]), NOW)


def test_commands_travel_in_envelopes(
    keys: KeySet, verifier: CommandVerifier, caplog: pytest.LogCaptureFixture
) -> None:
    command = sync_for()
    envelope = command_envelope(command, keys.assignment, sender="control-plane", seq=7)
    received = decode(encode(envelope))
    assert (received.device_id, received.seq) == ("control-plane", 7)
    assert verifier.verify_envelope(received, NOW) == command
    # A replay, a forgery and a telemetry message on the command topic: logged, counted, ignored.
    forged = Envelope(received.schema, "device-b", 1, NOW, received.payload | {"signatures": []})
    telemetry = Envelope(SCHEMA_TELEMETRY, "device-b", 2, NOW, {})
    with caplog.at_level(logging.WARNING, logger="shared.mqtt.commands"):
        assert verifier.accept(received, NOW) is None
        assert verifier.accept(forged, NOW) is None
        assert verifier.accept(telemetry, NOW) is None
    assert verifier.rejected == {"ReplayedCommand": 1, "UntrustedKey": 1, "MalformedDocument": 1}
    assert len(caplog.records) == 3


def test_trust_is_read_on_every_verification(keys: KeySet) -> None:
    stores: list[TrustStore] = []

    def trust() -> TrustStore:
        stores.append(keys.trust)
        return stores[-1]

    verifier = CommandVerifier(trust, "d1", [])
    verifier.verify(sign_command(sync_for(), keys.assignment), NOW)
    verifier.verify(sign_command(sync_for(), keys.assignment), NOW)
    assert len(stores) == 2
