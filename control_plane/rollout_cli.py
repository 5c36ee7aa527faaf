"""`edgefleet rollout ...`: start, follow and steer rollouts from the command line."""

from __future__ import annotations

import argparse
import asyncio
import json
from typing import Any

from control_plane.client import ControlPlaneClient
from control_plane.operator_command import command, print_json
from shared.table import format_rows

ACTIONS = ("pause", "resume", "promote", "abort", "rollback")
FINAL_STATES = ("completed", "aborted", "rolled_back")


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add `rollout create|ls|status|pause|resume|promote|abort|rollback`."""
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
    rc.set_defaults(func=command(_rollout_create))
    rls = rollout_commands.add_parser("ls", parents=[common], help="list rollouts")
    rls.add_argument("--state", choices=["running", "paused", *FINAL_STATES])
    rls.set_defaults(func=command(_rollout_ls))
    status = rollout_commands.add_parser("status", parents=[common], help="show one rollout")
    status.add_argument("id", type=int)
    status.add_argument("--watch", action="store_true", help="follow it until it finishes")
    status.set_defaults(func=command(_rollout_status))
    for action in ACTIONS:
        sub = rollout_commands.add_parser(action, parents=[common], help=f"{action} a rollout")
        sub.add_argument("id", type=int)
        sub.set_defaults(func=command(_rollout_action), action=action)


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
        print_json(answer)
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
        print_json(rollout)
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
