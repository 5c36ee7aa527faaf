"""`edgefleet bundle ...`: build, verify and inspect signed model bundles.

`build` lives in the agent because it runs the golden inputs through every variant with the
agent's own runtimes (`agent.bundle_builder`). `verify` needs only the public half of a key
directory (`root.pub`, `keylist.json`). `inspect` reads the manifest without checking anything
and says so.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

from agent.bundle_builder import BuildRequest, build_bundle
from agent.errors import AgentError
from agent.runtimes.registry import RuntimeRegistry
from shared.bundle import VerifiedBundle, read_unverified, verify_bundle
from shared.key_directory import KeyDirectory, passphrase_from_env
from shared.manifest import POLICIES, Manifest
from shared.table import format_rows
from shared.trust_errors import TrustError


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `bundle` command group."""
    bundle = subparsers.add_parser(
        "bundle",
        help="build, verify and inspect signed model bundles",
        description="Build, verify and inspect signed model bundles.",
    )
    commands = bundle.add_subparsers(dest="bundle_command", metavar="COMMAND", required=True)

    build = commands.add_parser(
        "build",
        help="build and sign a bundle from model files",
        description="Load every model file (each is a variant) with the installed runtimes, "
        "run the golden inputs through them to record the expected outputs (every variant "
        "must agree within the tolerance), and write a bundle signed with the release key.",
        epilog="example: edgefleet bundle build --name mlp --version 1 --model mlp.onnx "
        "--model mlp.xml --keys ./keys -o mlp-1.bundle",
    )
    build.add_argument("--name", required=True, help="model name")
    build.add_argument("--version", required=True, type=int, help="model version (integer)")
    build.add_argument(
        "--model", required=True, action="append", type=Path, metavar="FILE",
        help="a model file (.onnx, .xml with its .bin, .tflite); repeat for each variant",
    )  # fmt: skip
    build.add_argument("--keys", required=True, type=Path, metavar="DIR", help="key directory")
    build.add_argument("-o", "--output", required=True, type=Path, metavar="OUT")
    build.add_argument(
        "--golden-inputs", type=Path, metavar="FILE.npz",
        help="inputs for the golden vectors (default: deterministic random, batch 4)",
    )  # fmt: skip
    build.add_argument("--tolerance", type=float, default=1e-4, help="default 1e-4")
    build.add_argument("--policy", choices=POLICIES, default="latency")
    build.add_argument("--max-batch-size", type=int, default=32, help="default 32")
    build.add_argument(
        "--labels", action="append", default=[], metavar="[OUTPUT=]FILE",
        help="class labels, one per line, for an output (the only output when not named)",
    )  # fmt: skip
    build.add_argument("--passphrase-env", metavar="VAR", help="variable holding the passphrase")
    build.set_defaults(func=_build)

    verify = commands.add_parser(
        "verify",
        help="check a bundle's signature and every byte of it",
        description="Verify a bundle with the public keys of DIR (root.pub, keylist.json). "
        "Exits 0 with a summary when valid, 1 with the reason when not.",
    )
    verify.add_argument("bundle", metavar="OUT", type=Path)
    verify.add_argument("--keys", required=True, type=Path, metavar="DIR", help="key directory")
    verify.set_defaults(func=_verify)

    inspect = commands.add_parser(
        "inspect",
        help="show a bundle's manifest (without verifying it)",
        description="Show a bundle's manifest as tables, or as JSON. Nothing is verified.",
    )
    inspect.add_argument("bundle", metavar="OUT", type=Path)
    inspect.add_argument("--json", action="store_true", help="print the manifest as JSON")
    inspect.set_defaults(func=_inspect)


def _build(args: argparse.Namespace) -> int:
    try:
        keys = KeyDirectory(args.keys)
        trust = keys.trust_store()
        release_key = keys.load_key("release", passphrase_from_env(args.passphrase_env, os.environ))
        trust.release_key(release_key.public.keyid)  # refuse a key the devices will not trust
        request = BuildRequest(
            name=args.name,
            version=args.version,
            models=tuple(args.model),
            golden_inputs=args.golden_inputs,
            tolerance=args.tolerance,
            policy=args.policy,
            max_batch_size=args.max_batch_size,
            labels=dict(_read_labels(value) for value in args.labels),
        )
        build_bundle(request, args.output, release_key, RuntimeRegistry.default())
        verified = verify_bundle(args.output, trust)
    except (TrustError, AgentError, OSError) as exc:
        return _fail(exc)
    print(f"wrote {args.output}")
    print(_summary(verified))
    return 0


def _read_labels(value: str) -> tuple[str | None, tuple[str, ...]]:
    output, _, path = value.rpartition("=")
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return output or None, tuple(line.strip() for line in lines if line.strip())


def _verify(args: argparse.Namespace) -> int:
    try:
        verified = verify_bundle(args.bundle, KeyDirectory(args.keys).trust_store())
    except (TrustError, OSError) as exc:
        return _fail(exc)
    print(f"OK: {args.bundle} is a valid bundle")
    print(_summary(verified))
    return 0


def _summary(verified: VerifiedBundle) -> str:
    manifest = verified.manifest
    head = [
        ("model", f"{manifest.name} version {manifest.version}"),
        ("sha256", verified.digest),
        ("size", f"{verified.size} bytes"),
        ("signer", f"release key {verified.signer_keyid}"),
        ("variants", ", ".join(f"{v.file} ({v.runtime})" for v in manifest.variants)),
    ]
    return "\n".join([_pairs(head), "", _files(manifest)])


def _inspect(args: argparse.Namespace) -> int:
    try:
        unverified = read_unverified(args.bundle)
    except (TrustError, OSError) as exc:
        return _fail(exc)
    manifest = unverified.manifest
    if args.json:
        print(json.dumps(manifest.as_json(), indent=2, sort_keys=True))
        return 0
    created = datetime.datetime.fromtimestamp(manifest.created_at, datetime.UTC)
    compat = manifest.compatibility
    head = [
        ("bundle", f"{args.bundle} (NOT verified: use `edgefleet bundle verify`)"),
        ("model", manifest.name),
        ("version", str(manifest.version)),
        ("created", created.isoformat(timespec="seconds")),
        ("policy", manifest.policy),
        ("signer", f"{unverified.signer_keyid or 'unreadable'} (claimed)"),
        ("batching", f"max {manifest.batching.max_batch_size}, preferred "
                     f"{list(manifest.batching.preferred_batch_sizes) or 'any'}"),
        ("golden", f"{manifest.golden.inputs_file} -> {manifest.golden.expected_file}, "
                   f"tolerance {manifest.golden.tolerance:g}"),
        ("cpu features", ", ".join(compat.cpu_features) or "any"),
        ("min memory", f"{compat.min_memory_bytes} bytes"),
    ]  # fmt: skip
    variants = [
        (v.runtime, v.precision, v.file, ", ".join(v.devices) or "any") for v in manifest.variants
    ]
    tensors = [
        (kind, t.name, t.datatype, str(list(t.shape)))
        for kind, group in (("input", manifest.inputs), ("output", manifest.outputs))
        for t in group
    ]
    sections = [
        _pairs(head),
        _files(manifest),
        format_rows(["runtime", "precision", "file", "devices"], variants),
        format_rows(["tensor", "name", "datatype", "shape"], tensors),
        format_rows(["runtime", "minimum version"], sorted(compat.min_runtime_versions.items())),
    ]
    if manifest.labels:
        labels = [
            (out, str(len(names)), ", ".join(names)) for out, names in manifest.labels.items()
        ]
        sections.append(format_rows(["output", "labels", "names"], labels))
    print("\n\n".join(sections))
    return 0


def _pairs(rows: list[tuple[str, str]]) -> str:
    width = max(len(key) for key, _ in rows)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in rows)


def _files(manifest: Manifest) -> str:
    rows = [(f.path, str(f.size), f.sha256[:16]) for f in manifest.files]
    return format_rows(["file", "bytes", "sha256"], rows)


def _fail(error: Exception) -> int:
    reason = f"{error.filename}: {error.strerror}" if isinstance(error, OSError) else str(error)
    print(f"error: {reason}", file=sys.stderr)
    return 1
