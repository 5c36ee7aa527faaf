"""Operator commands against a running control plane: push, models, devices, groups, tokens.

    edgefleet push BUNDLE
    edgefleet models ls
    edgefleet devices ls [--group G] [--label k=v] [--status online|offline] ... | show ID
    edgefleet groups ls | add GROUP DEVICE... | remove GROUP DEVICE...
    edgefleet enroll-token create [--group G] [--label k=v] [--region R] [--ttl SECONDS]
    edgefleet rollout ...   (`control_plane.rollout_cli`)
    edgefleet sim ...       (`control_plane.sim_cli`)

Every command takes `--cp URL --token T` (or `EDGEFLEET_CP` / `EDGEFLEET_TOKEN`), `--ca-file`
(or `EDGEFLEET_CA_FILE`) for an https:// control plane with a private CA, and `--json` for
machine-readable output; lists print tables, uploads and rollouts show progress.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from control_plane import rollout_cli, sim_cli
from control_plane.client import (
    ApiCallFailed,
    ControlPlaneClient,
)
from control_plane.operator_command import command, common_options, parse_pair, print_json
from shared.table import format_rows


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add push, models, devices, groups, enroll-token, rollout and sim."""
    common = common_options()

    push = subparsers.add_parser(
        "push",
        parents=[common],
        help="upload a signed model bundle to the control plane",
        description="Upload a bundle made by `edgefleet bundle build`. The control plane checks "
        "its release signature against the key list before storing it.",
    )
    push.add_argument("bundle", type=Path, metavar="BUNDLE")
    push.set_defaults(func=command(_push))

    models = subparsers.add_parser("models", help="model versions in the registry")
    models_commands = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    ls = models_commands.add_parser("ls", parents=[common], help="list models and versions")
    ls.set_defaults(func=command(_models_ls))

    devices = subparsers.add_parser("devices", help="enrolled devices")
    devices_commands = devices.add_subparsers(
        dest="devices_command", metavar="COMMAND", required=True
    )
    dls = devices_commands.add_parser("ls", parents=[common], help="list devices (filters)")
    dls.add_argument("--group")
    dls.add_argument("--label", metavar="KEY=VALUE")
    dls.add_argument("--status", choices=["online", "offline"])
    dls.add_argument("--backend", help="gpu, openvino, arm-cpu, x86-cpu")
    dls.add_argument("--model", help="devices assigned or running this model")
    dls.add_argument("--limit", type=int, default=100)
    dls.add_argument("--offset", type=int, default=0)
    dls.set_defaults(func=command(_devices_ls))
    show = devices_commands.add_parser("show", parents=[common], help="one device's inventory")
    show.add_argument("device_id", metavar="ID")
    show.set_defaults(func=command(_devices_show))

    groups = subparsers.add_parser("groups", help="device groups")
    groups_commands = groups.add_subparsers(dest="groups_command", metavar="COMMAND", required=True)
    gls = groups_commands.add_parser("ls", parents=[common], help="groups with device counts")
    gls.set_defaults(func=command(_groups_ls))
    for name, verb in (("add", "add devices to"), ("remove", "remove devices from")):
        change = groups_commands.add_parser(name, parents=[common], help=f"{verb} a group")
        change.add_argument("group", metavar="GROUP")
        change.add_argument("devices", nargs="+", metavar="DEVICE")
        change.set_defaults(func=command(_groups_change), adding=name == "add")

    enroll = subparsers.add_parser("enroll-token", help="one-time device enrollment tokens")
    enroll_commands = enroll.add_subparsers(dest="enroll_command", metavar="COMMAND", required=True)
    create = enroll_commands.add_parser(
        "create",
        parents=[common],
        help="create a token and print it",
        description="Create a one-time enrollment token. Devices that enroll with it join the "
        "given groups and get the labels and region. Give it to `edgefleet agent enroll`.",
    )
    create.add_argument("--group", action="append", default=[], help="repeat for several")
    create.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--region")
    create.add_argument("--ttl", type=float, metavar="SECONDS", help="lifetime (default 24 h)")
    create.set_defaults(func=command(_enroll_create))

    rollout_cli.register(subparsers, common)
    sim_cli.register(subparsers, common)


async def _push(client: ControlPlaneClient, args: argparse.Namespace) -> int:
    path: Path = args.bundle
    if not await asyncio.to_thread(path.is_file):
        raise ApiCallFailed(f"{path} is not a file: give a bundle from `edgefleet bundle build`")
    interactive = sys.stderr.isatty() and not args.json
    last = [0.0]

    def progress(sent: int, total: int) -> None:
        now = time.monotonic()
        if sent == total or now - last[0] >= 0.5:
            last[0] = now
            end = "\n" if sent == total else ""
            percent = 100 * sent / total if total else 100
            print(
                f"\ruploading {path.name}: {sent / 1e6:.1f} of {total / 1e6:.1f} MB "
                f"({percent:.0f}%)",
                end=end,
                file=sys.stderr,
                flush=True,
            )

    answer = await client.upload(path, progress if interactive else None)
    if args.json:
        print_json(answer)
    else:
        print(
            f"{answer['name']} version {answer['version']} stored "
            f"(digest {answer['digest'][:12]}, signed by {answer['signer_keyid'][:12]})"
        )
    return 0


async def _models_ls(client: ControlPlaneClient, args: argparse.Namespace) -> int:
    answer = await client.get("/models")
    if args.json:
        print_json(answer)
        return 0
    rows = [
        [
            model["name"],
            str(v["version"]),
            v["digest"][:12],
            _size(v["size"]),
            v["uploaded_at"][:19],
            v["uploaded_by"],
        ]
        for model in answer["models"]
        for v in model["versions"]
    ]
    print(format_rows(["MODEL", "VERSION", "DIGEST", "SIZE", "UPLOADED", "BY"], rows))
    return 0


async def _devices_ls(client: ControlPlaneClient, args: argparse.Namespace) -> int:
    params = {
        key: str(value)
        for key, value in (
            ("group", args.group),
            ("label", args.label),
            ("status", args.status),
            ("backend", args.backend),
            ("model", args.model),
            ("limit", args.limit),
            ("offset", args.offset),
        )
        if value is not None
    }
    answer = await client.get("/devices", params)
    if args.json:
        print_json(answer)
        return 0
    rows = [
        [
            d["id"],
            "online" if d.get("online") else "offline",
            d.get("backend_class") or "-",
            ",".join(d.get("groups") or []) or "-",
            ",".join(
                f"{m.get('model')}:{m.get('version')}"
                for m in d.get("models") or []
                if m.get("serving") is not False
            )
            or "-",
            (d.get("last_seen_at") or "-")[:19],
        ]
        for d in answer["devices"]
    ]
    print(format_rows(["DEVICE", "STATUS", "BACKEND", "GROUPS", "MODELS", "LAST SEEN"], rows))
    total = answer.get("total", len(rows))
    print(f"\n{len(rows)} of {total} devices", file=sys.stderr)
    return 0


async def _devices_show(client: ControlPlaneClient, args: argparse.Namespace) -> int:
    device = await client.get(f"/devices/{args.device_id}")
    if args.json:
        print_json(device)
        return 0
    hardware = device.get("hardware") or {}
    lines = [
        ("device", device["id"]),
        ("status", "online" if device.get("online") else "offline"),
        ("last seen", device.get("last_seen_at") or "-"),
        ("region", device.get("region") or "-"),
        ("groups", ", ".join(device.get("groups") or []) or "-"),
        ("labels", ", ".join(f"{k}={v}" for k, v in (device.get("labels") or {}).items()) or "-"),
        ("agent", device.get("agent_version") or "-"),
        ("backend class", device.get("backend_class") or "-"),
        ("cpu", f"{hardware.get('cpu_model', '-')} ({hardware.get('logical_cores', '?')} cores)"),
        ("gpus", ", ".join(hardware.get("gpus") or []) or "-"),
        (
            "runtimes",
            ", ".join(f"{k} {v}" for k, v in (hardware.get("runtimes") or {}).items()) or "-",
        ),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key.ljust(width)}  {value}")
    models = device.get("models") or []
    if models:
        print()
        rows = [
            [
                str(m.get("model")),
                str(m.get("version")),
                str(m.get("state")),
                "no (kept for revert)" if m.get("serving") is False else "yes",
                str(m.get("backend")),
            ]
            for m in models
        ]
        print(format_rows(["MODEL", "VERSION", "STATE", "SERVING", "BACKEND"], rows))
    return 0


async def _groups_ls(client: ControlPlaneClient, args: argparse.Namespace) -> int:
    answer = await client.get("/groups")
    if args.json:
        print_json(answer)
        return 0
    rows = [
        [g["name"], str(g.get("devices", 0)), str(g.get("online", 0)), str(g.get("offline", 0))]
        for g in answer["groups"]
    ]
    print(format_rows(["GROUP", "DEVICES", "ONLINE", "OFFLINE"], rows))
    return 0


async def _groups_change(client: ControlPlaneClient, args: argparse.Namespace) -> int:
    changed = []
    for device_id in args.devices:
        device = await client.get(f"/devices/{device_id}")
        groups = list(device.get("groups") or [])
        if args.adding and args.group not in groups:
            groups.append(args.group)
        elif not args.adding and args.group in groups:
            groups.remove(args.group)
        else:
            continue
        changed.append(await client.patch(f"/devices/{device_id}", {"groups": sorted(groups)}))
    if args.json:
        print_json({"changed": changed})
    else:
        verb = "added to" if args.adding else "removed from"
        print(
            f"{len(changed)} device(s) {verb} {args.group}; "
            f"{len(args.devices) - len(changed)} already were"
        )
    return 0


async def _enroll_create(client: ControlPlaneClient, args: argparse.Namespace) -> int:
    labels = dict(parse_pair(label) for label in args.label)
    body: dict[str, Any] = {"groups": args.group, "labels": labels}
    if args.region:
        body["region"] = args.region
    if args.ttl is not None:
        body["ttl_s"] = args.ttl
    answer = await client.post("/enroll-tokens", body)
    if args.json:
        print_json(answer)
        return 0
    print(answer["secret"])
    expires = (answer.get("token") or {}).get("expires_at", "?")
    print(
        f"one-time enrollment token, valid until {expires}; on the device run:\n"
        f"  edgefleet agent enroll --cp {client.url} --token <token> --state /var/lib/edgefleet",
        file=sys.stderr,
    )
    return 0


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"
