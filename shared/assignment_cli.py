"""`edgefleet assignment ...`: write and read signed assignment documents by hand.

The control plane issues assignments for enrolled devices; this command does the same for
air-gapped devices (whose `bundles.assignment` setting is a file path) and for tests. Each
bundle named is verified against the key directory's key list first, so a device is never told
to install something that would fail verification.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from shared.assignment import Assignment, ModelAssignment, sign_assignment
from shared.atomic import write_atomic
from shared.bundle import verify_bundle
from shared.canonical import parse_json
from shared.key_directory import KeyDirectory, passphrase_from_env
from shared.trust_errors import TrustError

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `assignment` command group."""
    group = subparsers.add_parser(
        "assignment",
        help="sign or show an assignment document (air-gapped devices, tests)",
        description="Sign or show the document that tells a device which bundles to run.",
    )
    commands = group.add_subparsers(dest="assignment_command", metavar="COMMAND", required=True)
    sign = commands.add_parser(
        "sign",
        help="write a signed assignment for one device",
        description="Write an assignment for DEVICE naming each bundle's model, version, "
        "digest, size and download URL, signed with the assignment key of --keys. The serial "
        "must be above every serial the device accepted before; a rollback is a new serial "
        "that names an older bundle.",
        epilog="example: edgefleet assignment sign --keys keys --device edge-1 --serial 2 "
        "--bundle mlp-v2.bundle=https://cp.example/bundles/<digest> -o assignment.json",
    )
    sign.add_argument("--keys", type=Path, required=True, metavar="DIR", help="key directory")
    sign.add_argument("--device", required=True, help="the device id the assignment is for")
    sign.add_argument("--serial", type=int, required=True, help="must only ever increase")
    sign.add_argument(
        "--bundle",
        action="append",
        required=True,
        metavar="FILE[=URL]",
        help="a bundle to run (URL defaults to file://FILE); repeat for several models",
    )
    sign.add_argument(
        "--expires-in",
        default="7d",
        metavar="DURATION",
        help="validity, e.g. 3600s, 30m, 12h, 7d (default 7d)",
    )
    sign.add_argument("-o", "--output", type=Path, required=True)
    sign.add_argument(
        "--passphrase-env",
        metavar="VAR",
        help="decrypt assignment.key with the passphrase held by this variable",
    )
    sign.set_defaults(func=_sign)
    show = commands.add_parser("show", help="print an assignment document's contents")
    show.add_argument("document", type=Path)
    show.set_defaults(func=_show)


def parse_duration(text: str) -> float:
    """Seconds in `3600`, `3600s`, `30m`, `12h` or `7d`."""
    unit = text[-1:] if text[-1:] in _UNITS else "s"
    number = text[:-1] if text[-1:] in _UNITS else text
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r}") from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"duration must be positive: {text!r}")
    return seconds


def _sign(args: argparse.Namespace) -> int:
    keys = KeyDirectory(args.keys)
    try:
        trust = keys.trust_store()
        models = []
        for spec in args.bundle:
            path_text, _, url = spec.partition("=")
            path = Path(path_text)
            verified = verify_bundle(path, trust)
            models.append(
                ModelAssignment(
                    name=verified.manifest.name,
                    version=verified.manifest.version,
                    digest=verified.digest,
                    url=url or path.resolve().as_uri(),
                    size=verified.size,
                )
            )
        now = time.time()
        assignment = Assignment(
            device_id=args.device,
            serial=args.serial,
            issued_at=now,
            expires_at=now + parse_duration(args.expires_in),
            models=tuple(models),
        )
        passphrase = passphrase_from_env(args.passphrase_env, os.environ)
        key = keys.load_key("assignment", passphrase)
        trust.assignment_key(key.public.keyid)  # devices would refuse a key not in the list
        document = sign_assignment(assignment, key)
    except (TrustError, OSError, argparse.ArgumentTypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    write_atomic(args.output, document)
    print(f"assignment serial {args.serial} for {args.device} written to {args.output}")
    for model in models:
        print(f"  {model.name} v{model.version}  {model.digest[:16]}  {model.url}")
    return 0


def _show(args: argparse.Namespace) -> int:
    try:
        document = parse_json(args.document.read_bytes())
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(document, indent=2, sort_keys=True))
    return 0
