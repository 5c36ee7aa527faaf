"""`edgefleet keys ...`: create and rotate the keys that sign key lists, bundles, assignments.

The directory layout is described in `shared.key_directory`. Passphrases come only from an
environment variable named by `--passphrase-env`, never from the command line (argv is
visible to every user of the machine through `ps`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from shared.key_directory import KeyDirectory, passphrase_from_env
from shared.keys import short_id
from shared.trust_errors import TrustError

_PASSPHRASE_HELP = "encrypt/decrypt private keys with the passphrase held by this variable"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `keys` command group."""
    keys = subparsers.add_parser(
        "keys",
        help="create and rotate signing keys",
        description="Create and rotate the Ed25519 keys that sign key lists, bundles and "
        "assignments.",
    )
    commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)

    init = commands.add_parser(
        "init",
        help="create a root, a release and an assignment key and the signed key list",
        description="Create root.key, release.key, assignment.key (mode 0600), root.pub and "
        "keylist.json (version 1, signed by the root key) in DIR.",
    )
    init.add_argument("directory", metavar="DIR", type=Path)
    init.add_argument("--force", action="store_true", help="replace keys already in DIR")
    init.add_argument("--passphrase-env", metavar="VAR", help=_PASSPHRASE_HELP)
    init.set_defaults(func=_init)

    rotate = commands.add_parser(
        "rotate",
        help="replace one key and sign the next key list version",
        description="Replace the release, assignment or root key with a new one and write the "
        "next keylist.json, signed by the current root (and by the new root when it is the "
        "root that changes). The replaced key is kept as <role>.key.<N> and the previous list "
        "as keylist.<N>.json; the new list no longer trusts the replaced key.",
    )
    rotate.add_argument("directory", metavar="DIR", type=Path)
    role = rotate.add_mutually_exclusive_group(required=True)
    for name in ("release", "assignment", "root"):
        role.add_argument(
            f"--{name}", dest="role", action="store_const", const=name, help=f"rotate {name}.key"
        )
    rotate.add_argument("--passphrase-env", metavar="VAR", help=_PASSPHRASE_HELP)
    rotate.set_defaults(func=_rotate)


def _init(args: argparse.Namespace) -> int:
    directory = KeyDirectory(args.directory)
    existing = directory.existing()
    if existing and not args.force:
        return _fail(f"{args.directory} already holds {', '.join(existing)}; --force replaces them")
    try:
        passphrase = passphrase_from_env(args.passphrase_env, os.environ)
        key_list = directory.create(time.time(), passphrase)
    except (TrustError, OSError) as exc:
        return _fail(str(exc))
    print(f"key list version 1 written to {args.directory / 'keylist.json'}")
    print(f"  root        {key_list.root.keyid}  root.key (pin root.pub on devices)")
    print(f"  release     {key_list.release_keys[0].keyid}  release.key")
    print(f"  assignment  {key_list.assignment_keys[0].keyid}  assignment.key")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    try:
        passphrase = passphrase_from_env(args.passphrase_env, os.environ)
        rotation = KeyDirectory(args.directory).rotate(args.role, time.time(), passphrase)
    except (TrustError, OSError) as exc:
        return _fail(str(exc))
    old = ", ".join(short_id(key.keyid) for key in rotation.replaced) or "none"
    print(f"key list version {rotation.after.version} written (was {rotation.before.version})")
    print(f"  {rotation.role} key {old} -> {short_id(rotation.new_key.keyid)}")
    if rotation.kept is not None:
        print(f"  the replaced private key is kept in {rotation.kept.name}")
    if rotation.role == "root":
        print("  root.pub holds the new root key; the list is signed by the old and new roots")
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1
