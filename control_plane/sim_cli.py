"""`edgefleet sim`: run the fleet simulator (`control_plane.sim`) from the command line."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path

from control_plane.client import ApiCallFailed, endpoint_from, environment, tls_from
from control_plane.operator_command import parse_pair


def register(
    subparsers: argparse._SubParsersAction[argparse.ArgumentParser],
    common: argparse.ArgumentParser,
) -> None:
    """Add `sim`."""
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
    from control_plane.sim import FleetSimulator, SimSettings
    from control_plane.sim_reports import parse_backends, parse_behaviours

    try:
        url, token = endpoint_from(args.cp, args.token, environment())
        settings = SimSettings(
            cp_url=url,
            token=token,
            tls=tls_from(args.ca_file, environment()),
            devices=args.devices,
            mqtt_url=args.mqtt,
            state_dir=args.state,
            prefix=args.prefix,
            groups=tuple(args.group),
            labels=dict(parse_pair(label) for label in args.label),
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
