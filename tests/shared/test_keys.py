"""Ed25519 keys: signatures, key ids, and key files (modes, passphrases, clear errors)."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.keys import PrivateKey, PublicKey, load_public, save_public
from shared.trust_errors import KeyFileError, MalformedDocument


@pytest.fixture
def open_umask() -> Iterator[None]:
    """Run with umask 0, so only the mode given at creation keeps a file private."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_signature_verifies_only_for_its_key_and_data() -> None:
    key, other = PrivateKey.generate(), PrivateKey.generate()
    signature = key.sign(b"data")
    assert len(signature) == 64
    assert key.public.verify(signature, b"data")
    assert not key.public.verify(signature, b"datA")
    assert not other.public.verify(signature, b"data")
    assert not key.public.verify(b"\0" * 64, b"data")


def test_the_key_id_is_the_sha256_of_the_raw_key() -> None:
    public = PrivateKey.generate().public
    assert len(public.raw) == 32
    assert public.keyid == hashlib.sha256(public.raw).hexdigest()


def test_the_repr_of_a_private_key_reveals_nothing() -> None:
    assert repr(PrivateKey.generate()) == "PrivateKey()"


def test_public_key_json_round_trips() -> None:
    public = PrivateKey.generate().public
    assert PublicKey.from_json(public.as_json()) == public


def test_public_key_json_with_a_wrong_key_id_is_refused() -> None:
    data = PrivateKey.generate().public.as_json()
    data["keyid"] = PrivateKey.generate().public.keyid
    with pytest.raises(MalformedDocument, match=r"key.keyid: [0-9a-f]{16} is not the id"):
        PublicKey.from_json(data)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"keytype": "rsa"}, r"key.keytype: expected 'ed25519'"),
        ({"public": "abcd"}, "key.public: not 32 bytes of hex"),
        ({"extra": 1}, "key.extra: unknown field"),
    ],
)
def test_malformed_public_key_json_is_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(MalformedDocument, match=message):
        PublicKey.from_json({**PrivateKey.generate().public.as_json(), **change})


@pytest.mark.usefixtures("open_umask")
@pytest.mark.parametrize("passphrase", [None, b"correct horse"])
def test_a_saved_key_loads_back_and_is_private(tmp_path: Path, passphrase: bytes | None) -> None:
    key = PrivateKey.generate()
    path = tmp_path / "release.key"
    key.save(path, passphrase)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert PrivateKey.load(path, passphrase).public == key.public
    assert [p.name for p in tmp_path.iterdir()] == ["release.key"]  # no temporary left


def test_an_encrypted_key_file_holds_no_plain_key(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    PrivateKey.generate().save(path, b"secret")
    assert path.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")


def test_saving_replaces_a_key_atomically(tmp_path: Path) -> None:
    path = tmp_path / "release.key"
    PrivateKey.generate().save(path)
    second = PrivateKey.generate()
    second.save(path)
    assert PrivateKey.load(path).public == second.public


@pytest.mark.parametrize(
    ("saved", "given", "message"),
    [
        (b"right", b"wrong", "wrong passphrase"),
        (b"right", None, "the key is encrypted; a passphrase is needed"),
        (None, b"unneeded", "the key is not encrypted, but a passphrase was given"),
    ],
)
def test_passphrase_problems_are_named(
    tmp_path: Path, saved: bytes | None, given: bytes | None, message: str
) -> None:
    path = tmp_path / "root.key"
    PrivateKey.generate().save(path, saved)
    with pytest.raises(KeyFileError, match=f"root.key: {message}"):
        PrivateKey.load(path, given)


def test_loading_the_wrong_kind_of_file_is_named(tmp_path: Path) -> None:
    public = tmp_path / "root.pub"
    save_public(public, PrivateKey.generate().public)
    with pytest.raises(KeyFileError, match="holds a public key, not a private key"):
        PrivateKey.load(public)
    garbage = tmp_path / "notes.txt"
    garbage.write_text("hello")
    with pytest.raises(KeyFileError, match=r"notes.txt: not a PKCS#8 PEM private key"):
        PrivateKey.load(garbage)
    with pytest.raises(KeyFileError, match=r"missing.key: cannot read: No such file"):
        PrivateKey.load(tmp_path / "missing.key")


def test_a_key_of_another_algorithm_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ec.key"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    with pytest.raises(KeyFileError, match="not an Ed25519 key"):
        PrivateKey.load(path)


def test_a_public_key_file_round_trips(tmp_path: Path) -> None:
    public = PrivateKey.generate().public
    path = tmp_path / "root.pub"
    save_public(path, public)
    assert path.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert load_public(path) == public


def test_a_private_key_is_not_a_public_key_file(tmp_path: Path) -> None:
    path = tmp_path / "root.key"
    PrivateKey.generate().save(path)
    with pytest.raises(KeyFileError, match=r"root.key: not a PEM public key"):
        load_public(path)
