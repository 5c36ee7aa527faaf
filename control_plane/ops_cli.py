"""Operator commands against a running control plane: push, models, devices, groups, rollouts.

    edgefleet push BUNDLE
    edgefleet models ls
    edgefleet devices ls [--group G] [--label k=v] [--status online|offline] ... | show ID
    edgefleet groups ls | add GROUP DEVICE... | remove GROUP DEVICE...
    edgefleet enroll-token create [--group G] [--label k=v] [--region R] [--ttl SECONDS]
    edgefleet rollout create --model NAME --version N --target group:G|label:k=v|device:ID ...
    edgefleet rollout ls | status ID [--watch] | pause|resume|promote|abort|rollback ID
    edgefleet sim --devices N [--behaviour 2:errors=0.3] ...   (`control_plane.sim`)

Every command takes `--cp URL --token T` (or `EDGEFLEET_CP` / `EDGEFLEET_TOKEN`) and `--json`
for machine-readable output; lists print tables, uploads and rollouts show progress.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from control_plane.client import (
    CP_ENV,
    TOKEN_ENV,
    ApiCallFailed,
    ControlPlaneClient,
    endpoint_from,
    environment,
)
from shared.table import format_rows

Body = Callable[[ControlPlaneClient, argparse.Namespace], Awaitable[int]]
ACTIONS = ("pause", "resume", "promote", "abort", "rollback")
FINAL_STATES = ("completed", "aborted", "rolled_back")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add push, models, devices, groups, enroll-token, rollout and sim."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cp", metavar="URL", help=f"control plane URL (default: ${CP_ENV})")
    common.add_argument("--token", help=f"operator token (default: ${TOKEN_ENV})")
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")

    push = subparsers.add_parser(
        "push",
        parents=[common],
        help="upload a signed model bundle to the control plane",
        description="Upload a bundle made by `edgefleet bundle build`. The control plane checks "
        "its release signature against the key list before storing it.",
    )
    push.add_argument("bundle", type=Path, metavar="BUNDLE")
    push.set_defaults(func=_command(_push))

    models = subparsers.add_parser("models", help="model versions in the registry")
    models_commands = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    ls = models_commands.add_parser("ls", parents=[common], help="list models and versions")
    ls.set_defaults(func=_command(_models_ls))

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
    dls.set_defaults(func=_command(_devices_ls))
    show = devices_commands.add_parser("show", parents=[common], help="one device's inventory")
    show.add_argument("device_id", metavar="ID")
    show.set_defaults(func=_command(_devices_show))

    groups = subparsers.add_parser("groups", help="device groups")
    groups_commands = groups.add_subparsers(dest="groups_command", metavar="COMMAND", required=True)
    gls = groups_commands.add_parser("ls", parents=[common], help="groups with device counts")
    gls.set_defaults(func=_command(_groups_ls))
    for name, verb in (("add", "add devices to"), ("remove", "remove devices from")):
        change = groups_commands.add_parser(name, parents=[common], help=f"{verb} a group")
        change.add_argument("group", metavar="GROUP")
        change.add_argument("devices", nargs="+", metavar="DEVICE")
        change.set_defaults(func=_command(_groups_change), adding=name == "add")

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
    create.set_defaults(func=_command(_enroll_create))

    rollout = subparsers.add_parser(
        "rollout",
        help="roll model versions out to devices",
        description="Roll a model version out: all at once, or a canary stratified by backend "
        "followed by waves, with gates on activation failures, error rate and p95 latency.",
    )
    rollout_commands = rollout.add_subparsers(
        dest="rollout_command", metavar="COMMAND", required=True
    )
    rc = rollout_commands.add_parser(
        "create",
        parents=[common],
        help="start a rollout",
        epilog="example: edgefleet rollout create --model mlp --version 2 --target group:eu "
        "--strategy canary --canary 10%% --waves 50%%,100%% --wait 300",
    )
    rc.add_argument("--model", required=True)
    rc.add_argument("--version", type=int, required=True)
    rc.add_argument("--target", required=True, help="group:G, label:k=v, device:ID[,ID] or all")
    rc.add_argument(
        "--strategy",
        choices=["all", "canary"],
        help="default: canary when --canary or --waves is given, else all",
    )
    rc.add_argument("--canary", help="canary size: a percentage (10%%) or a device count")
    rc.add_argument("--waves", help="comma-separated cumulative percentages or counts")
    rc.add_argument("--rate", type=int, metavar="N", help="at most N new devices per minute")
    rc.add_argument("--wait", type=float, metavar="SECONDS", help="observe each wave (300)")
    rc.add_argument("--activation-timeout", type=float, metavar="SECONDS")
    rc.add_argument("--max-failure-pct", type=float)
    rc.add_argument("--max-error-rate", type=float)
    rc.add_argument("--max-p95-ratio", type=float)
    rc.add_argument("--min-requests", type=int)
    rc.add_argument("--on-failure", choices=["rollback", "pause"])
    rc.add_argument("--watch", action="store_true", help="follow it until it finishes")
    rc.set_defaults(func=_command(_rollout_create))
    rls = rollout_commands.add_parser("ls", parents=[common], help="list rollouts")
    rls.add_argument("--state", choices=["running", "paused", *FINAL_STATES])
    rls.set_defaults(func=_command(_rollout_ls))
    status = rollout_commands.add_parser("status", parents=[common], help="show one rollout")
    status.add_argument("id", type=int)
    status.add_argument("--watch", action="store_true", help="follow it until it finishes")
    status.set_defaults(func=_command(_rollout_status))
    for action in ACTIONS:
        sub = rollout_commands.add_parser(action, parents=[common], help=f"{action} a rollout")
        sub.add_argument("id", type=int)
        sub.set_defaults(func=_command(_rollout_action), action=action)

    sim = subparsers.add_parser(
        "sim",
        parents=[common],
        help="simulate a fleet of agents against a control plane (scale and gate tests)",
        description="Enroll N lightweight simulated agents and run them: presence, signed "
        "assignment long polls, lifecycle events and telemetry, with scripted behaviour per "
        "model version. No model is loaded.",
        epilog="example: edgefleet sim --devices 1000 --group sim --backends x86-cpu=7,arm-cpu=2,"
        "gpu=1 --behaviour 2:errors=0.3 --state .sim",
    )
    sim.add_argument("--devices", type=int, required=True, metavar="N")
    sim.add_argument("--mqtt", metavar="URL", help="broker (default: what enrollment answers)")
    sim.add_argument("--state", type=Path, help="keep enrolled identities here for reuse")
    sim.add_argument("--prefix", default="sim", help="device ids are PREFIX-00000 ...")
    sim.add_argument("--group", action="append", default=[], help="groups to enroll into")
    sim.add_argument("--label", action="append", default=[], metavar="KEY=VALUE")
    sim.add_argument(
        "--backends", default="x86-cpu", help="backend classes with weights, e.g. x86-cpu=7,gpu=1"
    )
    sim.add_argument(
        "--behaviour",
        action="append",
        default=[],
        metavar="VERSION:SPEC",
        help="e.g. 2:fail=30 (30%% of devices fail to activate v2), 2:errors=0.2, "
        "2:latency=12 (median ms), 2:activation=3 (seconds)",
    )
    sim.add_argument("--telemetry-interval", type=float, default=10.0, metavar="SECONDS")
    sim.add_argument("--rps", type=float, default=5.0, help="requests per second per model")
    sim.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    sim.set_defaults(func=_sim)


def _sim(args: argparse.Namespace) -> int:
    from control_plane.sim import (
        FleetSimulator,
        SimSettings,
        parse_backends,
        parse_behaviours,
    )

    try:
        url, token = endpoint_from(args.cp, args.token, environment())
        settings = SimSettings(
            cp_url=url,
            token=token,
            devices=args.devices,
            mqtt_url=args.mqtt,
            state_dir=args.state,
            prefix=args.prefix,
            groups=tuple(args.group),
            labels=dict(_pair(label) for label in args.label),
            backends=parse_backends(args.backends),
            behaviours=parse_behaviours(args.behaviour),
            telemetry_interval_s=args.telemetry_interval,
            requests_per_s=args.rps,
        )
    except (ApiCallFailed, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1

    async def run() -> None:
        simulator = FleetSimulator(settings)
        await simulator.enroll()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await simulator.run(stop, args.duration)
        print(f"stopped: {simulator.counts}", file=sys.stderr)

    try:
        asyncio.run(run())
    except ApiCallFailed as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _command(body: Body) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            url, token = endpoint_from(args.cp, args.token, environment())

            async def call() -> int:
                async with ControlPlaneClient(url, token) as client:
                    return await body(client, args)

            return asyncio.run(call())
        except ApiCallFailed as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

    return run


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


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
        _print_json(answer)
    else:
        print(
            f"{answer['name']} version {answer['version']} stored "
            f"(digest {answer['digest'][:12]}, signed by {answer['signer_keyid'][:12]})"
        )
    return 0


async def _models_ls(client: ControlPlaneClient, args: argparse.Namespace) -> int:
    answer = await client.get("/models")
    if args.json:
        _print_json(answer)
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
        _print_json(answer)
        return 0
    rows = [
        [
            d["id"],
            "online" if d.get("online") else "offline",
            d.get("backend_class") or "-",
            ",".join(d.get("groups") or []) or "-",
            ",".join(f"{m.get('model')}:{m.get('version')}" for m in d.get("models") or []) or "-",
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
        _print_json(device)
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
            [str(m.get("model")), str(m.get("version")), str(m.get("state")), str(m.get("backend"))]
            for m in models
        ]
        print(format_rows(["MODEL", "VERSION", "STATE", "BACKEND"], rows))
    return 0


async def _groups_ls(client: ControlPlaneClient, args: argparse.Namespace) -> int:
    answer = await client.get("/groups")
    if args.json:
        _print_json(answer)
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
        _print_json({"changed": changed})
    else:
        verb = "added to" if args.adding else "removed from"
        print(
            f"{len(changed)} device(s) {verb} {args.group}; "
            f"{len(args.devices) - len(changed)} already were"
        )
    return 0


async def _enroll_create(client: ControlPlaneClient, args: argparse.Namespace) -> int:
    labels = dict(_pair(label) for label in args.label)
    body: dict[str, Any] = {"groups": args.group, "labels": labels}
    if args.region:
        body["region"] = args.region
    if args.ttl is not None:
        body["ttl_s"] = args.ttl
    answer = await client.post("/enroll-tokens", body)
    if args.json:
        _print_json(answer)
        return 0
    print(answer["secret"])
    expires = (answer.get("token") or {}).get("expires_at", "?")
    print(
        f"one-time enrollment token, valid until {expires}; on the device run:\n"
        f"  edgefleet agent enroll --cp {client.url} --token <token> --state /var/lib/edgefleet",
        file=sys.stderr,
    )
    return 0


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ApiCallFailed(f"--label expects KEY=VALUE, got {text!r}")
    return key, value


async def _rollout_create(client: ControlPlaneClient, args: argparse.Namespace) -> int:
    kind = args.strategy or ("canary" if args.canary or args.waves else "all")
    strategy: dict[str, Any] = {"kind": kind}
    if args.canary is not None:
        strategy["canary"] = args.canary
    if args.waves:
        strategy["waves"] = [w.strip() for w in args.waves.split(",") if w.strip()]
    if args.rate is not None:
        strategy["rate_per_minute"] = args.rate
    if args.wait is not None:
        strategy["wait_s"] = args.wait
    if args.activation_timeout is not None:
        strategy["activation_timeout_s"] = args.activation_timeout
    gates = {
        key: value
        for key, value in (
            ("max_failure_pct", args.max_failure_pct),
            ("max_error_rate", args.max_error_rate),
            ("max_p95_ratio", args.max_p95_ratio),
            ("min_requests", args.min_requests),
            ("on_failure", args.on_failure),
        )
        if value is not None
    }
    body = {
        "model": args.model,
        "version": args.version,
        "target": args.target,
        "strategy": strategy,
        "gates": gates,
    }
    rollout = await client.post("/rollouts", body)
    if args.watch:
        return await _watch(client, rollout["id"], args.json)
    _show_rollout(rollout, args.json)
    return 0


async def _rollout_ls(client: ControlPlaneClient, args: argparse.Namespace) -> int:
    answer = await client.get("/rollouts", {"state": args.state} if args.state else None)
    if args.json:
        _print_json(answer)
        return 0
    rows = [
        [
            str(r["id"]),
            f"{r['model']}:{r['version']}",
            r["target"],
            r["state"],
            f"{min(r['current_wave'] + 1, len(r['waves']))}/{len(r['waves'])}",
            _progress(r["devices"]),
            r["created_at"][:19],
        ]
        for r in answer["rollouts"]
    ]
    print(format_rows(["ID", "VERSION", "TARGET", "STATE", "WAVE", "DEVICES", "CREATED"], rows))
    return 0


async def _rollout_status(client: ControlPlaneClient, args: argparse.Namespace) -> int:
    if args.watch:
        return await _watch(client, args.id, args.json)
    _show_rollout(await client.get(f"/rollouts/{args.id}"), args.json)
    return 0


async def _rollout_action(client: ControlPlaneClient, args: argparse.Namespace) -> int:
    rollout = await client.post(f"/rollouts/{args.id}/{args.action}")
    _show_rollout(rollout, args.json)
    return 0


async def _watch(client: ControlPlaneClient, rollout_id: int, as_json: bool) -> int:
    """Print a line whenever the rollout changes, until it reaches a final state."""
    last = ""
    while True:
        rollout = await client.get(f"/rollouts/{rollout_id}")
        line = (
            f"rollout {rollout_id}: {rollout['state']}, wave "
            f"{min(rollout['current_wave'] + 1, len(rollout['waves']))}/{len(rollout['waves'])}, "
            f"devices {_progress(rollout['devices'])}"
        )
        if line != last:
            print(json.dumps(rollout) if as_json else line, flush=True)
            last = line
        if rollout["state"] in FINAL_STATES:
            if not as_json and rollout.get("reason"):
                print(f"reason: {rollout['reason']}")
            return 0 if rollout["state"] == "completed" else 2
        await asyncio.sleep(2)


def _progress(counts: dict[str, int]) -> str:
    return (
        f"{counts.get('active', 0)} active, {counts.get('assigned', 0)} assigned, "
        f"{counts.get('failed', 0)} failed, {counts.get('rolled_back', 0)} rolled back "
        f"of {counts.get('total', 0)}"
    )


def _show_rollout(rollout: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(rollout)
        return
    print(
        f"rollout {rollout['id']}: {rollout['model']} version {rollout['version']} "
        f"to {rollout['target']} ({rollout['strategy']['kind']})"
    )
    print(
        f"state: {rollout['state']}" + (f" ({rollout['reason']})" if rollout.get("reason") else "")
    )
    print(f"devices: {_progress(rollout['devices'])}\n")
    rows = []
    for wave in rollout["waves"]:
        results = (wave.get("gate_results") or {}).get("gates", [])
        gates = "; ".join(
            f"{g['gate']} {'-' if g['value'] is None else g['value']}/{g['threshold']} "
            f"{'ok' if g['passed'] else 'FAILED'}"
            for g in results
        )
        rows.append([str(wave["index"]), str(wave["size"]), wave["state"], gates or "-"])
    print(format_rows(["WAVE", "DEVICES", "STATE", "GATES (value/threshold)"], rows))


def _size(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"
