"""The key list and the trust store: bootstrap, update, rotation of every role, rollback."""

from __future__ import annotations

import json

import pytest

from shared.keylist import KeyList, SignedKeyList, TrustStore, sign_key_list
from shared.keys import PrivateKey
from shared.trust_errors import BadSignature, KeyListRollback, MalformedDocument, UntrustedKey
from tests.shared.builders import KeySet


def rotate_root(keys: KeySet, new_root: PrivateKey, *signers: PrivateKey) -> bytes:
    return sign_key_list(keys.key_list.rotated(2000.0, root=new_root.public), list(signers))


def test_bootstrap_trusts_a_list_signed_by_the_pinned_root(keys: KeySet) -> None:
    store = TrustStore.bootstrap(keys.root.public, keys.document)
    assert store.key_list == keys.key_list
    assert store.release_key(keys.release.public.keyid) == keys.release.public
    assert store.assignment_key(keys.assignment.public.keyid) == keys.assignment.public
    assert store.to_document() == keys.document


def test_the_signed_document_is_canonical_json_with_base64_signatures(keys: KeySet) -> None:
    document = json.loads(keys.document)
    assert set(document) == {"signed", "signatures"}
    assert document["signed"]["version"] == 1
    [signature] = document["signatures"]
    assert signature["keyid"] == keys.root.public.keyid
    assert len(signature["sig"]) == 88  # 64 bytes of base64


def test_bootstrap_refuses_another_pinned_root(keys: KeySet) -> None:
    stranger = PrivateKey.generate().public
    with pytest.raises(
        UntrustedKey, match=f"not signed by the trusted root key {stranger.keyid[:16]}"
    ):
        TrustStore.bootstrap(stranger, keys.document)


def test_a_key_list_signed_by_a_non_root_key_is_refused(keys: KeySet) -> None:
    forged = sign_key_list(keys.key_list, [keys.release])
    with pytest.raises(UntrustedKey, match=f"signed by {keys.release.public.keyid[:16]}"):
        TrustStore.bootstrap(keys.root.public, forged)
    with pytest.raises(UntrustedKey, match="not signed by the trusted root key"):
        keys.trust.update(sign_key_list(keys.key_list.rotated(2000.0), [keys.release]))


def test_a_changed_field_breaks_the_root_signature(keys: KeySet) -> None:
    document = json.loads(keys.document)
    document["signed"]["issued_at"] = 1001.0
    with pytest.raises(BadSignature, match="key list version 1: the signature by the trusted root"):
        TrustStore.bootstrap(keys.root.public, json.dumps(document).encode())


def test_an_added_release_key_breaks_the_root_signature(keys: KeySet) -> None:
    document = json.loads(keys.document)
    document["signed"]["release_keys"].append(PrivateKey.generate().public.as_json())
    with pytest.raises(BadSignature):
        TrustStore.bootstrap(keys.root.public, json.dumps(document).encode())


def test_update_accepts_a_newer_version_signed_by_the_root(keys: KeySet) -> None:
    extra = PrivateKey.generate().public
    newer = keys.key_list.rotated(2000.0, release_keys=(keys.release.public, extra))
    store = keys.trust.update(sign_key_list(newer, [keys.root]))
    assert store.key_list.version == 2
    assert store.release_key(extra.keyid) == extra
    assert keys.trust.key_list.version == 1  # stores are immutable


def test_an_equal_or_older_version_is_a_rollback(keys: KeySet) -> None:
    newer = sign_key_list(keys.key_list.rotated(2000.0), [keys.root])
    store = keys.trust.update(newer)
    with pytest.raises(KeyListRollback, match="version 2 is not newer than the trusted version 2"):
        store.update(newer)
    with pytest.raises(KeyListRollback, match="version 1 is not newer than the trusted version 2"):
        store.update(keys.document)


def test_a_rotated_out_release_key_is_no_longer_trusted(keys: KeySet) -> None:
    new_release = PrivateKey.generate()
    rotated = keys.key_list.rotated(2000.0, release_keys=(new_release.public,))
    store = keys.trust.update(sign_key_list(rotated, [keys.root]))
    assert store.release_key(new_release.public.keyid) == new_release.public
    with pytest.raises(UntrustedKey, match="dropped from the key list after version 1"):
        store.release_key(keys.release.public.keyid)


def test_a_rotated_out_assignment_key_is_no_longer_trusted(keys: KeySet) -> None:
    new_assignment = PrivateKey.generate()
    rotated = keys.key_list.rotated(2000.0, assignment_keys=(new_assignment.public,))
    store = keys.trust.update(sign_key_list(rotated, [keys.root]))
    assert store.assignment_key(new_assignment.public.keyid) == new_assignment.public
    with pytest.raises(UntrustedKey, match="no longer trusts it"):
        store.assignment_key(keys.assignment.public.keyid)


def test_a_key_dropped_on_a_fresh_bootstrap_is_simply_unknown(keys: KeySet) -> None:
    rotated = keys.key_list.rotated(2000.0, release_keys=())
    store = TrustStore.bootstrap(keys.root.public, sign_key_list(rotated, [keys.root]))
    with pytest.raises(UntrustedKey, match="is not a release key in key list version 2"):
        store.release_key(keys.release.public.keyid)


def test_a_root_rotation_needs_both_the_old_and_the_new_root(keys: KeySet) -> None:
    new_root = PrivateKey.generate()
    with pytest.raises(UntrustedKey, match="not signed by the new root key it names"):
        keys.trust.update(rotate_root(keys, new_root, keys.root))
    with pytest.raises(UntrustedKey, match="not signed by the trusted root key"):
        keys.trust.update(rotate_root(keys, new_root, new_root))
    store = keys.trust.update(rotate_root(keys, new_root, keys.root, new_root))
    assert store.key_list.root == new_root.public


def test_after_a_root_rotation_only_the_new_root_signs(keys: KeySet) -> None:
    new_root = PrivateKey.generate()
    store = keys.trust.update(rotate_root(keys, new_root, keys.root, new_root))
    third = store.key_list.rotated(3000.0)
    with pytest.raises(UntrustedKey, match="not signed by the trusted root key"):
        store.update(sign_key_list(third, [keys.root]))
    assert store.update(sign_key_list(third, [new_root])).key_list.version == 3
    with pytest.raises(UntrustedKey, match="dropped from the key list after version 1"):
        store.release_key(keys.root.public.keyid)


def test_bootstrap_accepts_a_rotated_list_pinned_to_either_root(keys: KeySet) -> None:
    new_root = PrivateKey.generate()
    document = rotate_root(keys, new_root, keys.root, new_root)
    for pinned in (keys.root.public, new_root.public):
        assert TrustStore.bootstrap(pinned, document).key_list.root == new_root.public


def test_a_persisted_store_bootstraps_again(keys: KeySet) -> None:
    new_root = PrivateKey.generate()
    store = keys.trust.update(rotate_root(keys, new_root, keys.root, new_root))
    again = TrustStore.bootstrap(store.key_list.root, store.to_document())
    assert again.key_list == store.key_list


def test_a_key_may_hold_only_one_role(keys: KeySet) -> None:
    with pytest.raises(MalformedDocument, match="listed as the root key and again as a release"):
        KeyList(1, 0.0, keys.root.public, (keys.root.public,), ())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda d: d["signed"].update(version=0),
            r"keylist.signed.version: expected an integer >= 1",
        ),
        (lambda d: d["signed"].update(version=True), "keylist.signed.version: expected an integer"),
        (lambda d: d["signed"].update(extra=1), "keylist.signed.extra: unknown field"),
        (lambda d: d["signed"].pop("root"), "keylist.signed.root: missing"),
        (lambda d: d["signed"].update(type="x"), "keylist.signed.type: expected"),
        (lambda d: d["signatures"][0].pop("sig"), r"keylist.signatures\[0\].sig: missing"),
        (lambda d: d.update(signatures={}), "keylist.signatures: expected a list"),
    ],
)
def test_a_malformed_key_list_names_the_field(keys: KeySet, change: object, message: str) -> None:
    document = json.loads(keys.document)
    change(document)  # type: ignore[operator]
    with pytest.raises(MalformedDocument, match=message):
        SignedKeyList.parse(json.dumps(document).encode())


def test_garbage_is_a_malformed_key_list() -> None:
    with pytest.raises(MalformedDocument, match="keylist: not JSON"):
        SignedKeyList.parse(b"<html>")
