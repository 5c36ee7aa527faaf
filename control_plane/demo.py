"""`edgefleet demo`: the whole system on one machine, from signing keys to a served inference.

An MQTT broker, the control plane (SQLite) and one enrolled agent run as child processes with
their logs in `DIR/logs` (the steps: `control_plane.demo_steps`; starting, recording and
stopping the children: `control_plane.demo_processes`). Once the sample model answers, the demo
prints the dashboard URL with an admin token and curl examples, then runs until Ctrl-C or
SIGTERM, when it stops the children newest first and exits 0. A second run reuses the keys,
the database, the enrollment and the pushed version; `--fresh` starts over. `make demo` is this
command after installing everything.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import os
import shutil
import signal
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from control_plane.demo_inference import MODEL
from control_plane.demo_processes import DemoError, DemoProcesses, port_in_use, stop_stale
from control_plane.demo_settings import DemoSettings
from control_plane.demo_steps import DEVICE_ID, DemoSteps, Ready
from shared.errors import EdgeFleetError
from shared.mqtt.broker import LOOPBACK, find_program

READY_LINE = "The demo is ready"
MARKER = ".edgefleet-demo"  # only a directory holding it is wiped by --fresh
LEGACY = {"models", "state"}  # what `make demo` left before this command existed: adopted
PID_FILE = "demo-pids.json"
BROKERS = ("auto", "mosquitto", "embedded")
DEMO_PACING = {
    "EDGEFLEET_AGENT_BUNDLES_PROBATION_DURATION_S": "5",
    "EDGEFLEET_CP_ROLLOUT_TICK_S": "1",
}
# systemd's notification variables are the demo's own; its children are not the unit's service.
NOT_INHERITED = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `demo` command."""
    parser = subparsers.add_parser(
        "demo",
        help="run a broker, the control plane and an agent serving a signed sample model",
        description="Make keys, start an MQTT broker and the control plane (SQLite), enroll and "
        "start one agent, build, sign, push and roll out the sample model, check an inference "
        "with tritonclient, print the dashboard URL with a sign-in token, and run until Ctrl-C. "
        "Running it again reuses what the last run made. EDGEFLEET_CP_* and EDGEFLEET_AGENT_* "
        "variables reach the control plane and the agent.",
    )
    parser.add_argument(
        "--dir", type=Path, default=Path(".demo"), help="where everything is kept (.demo)"
    )
    parser.add_argument("--host", default=LOOPBACK, help="address the services bind (127.0.0.1)")
    parser.add_argument("--cp-port", type=_port, default=8080, help="control plane (8080)")
    parser.add_argument("--agent-port", type=_port, default=8000, help="agent (8000)")
    parser.add_argument("--mqtt-port", type=_port, default=1883, help="MQTT broker (1883)")
    parser.add_argument(
        "--broker",
        choices=BROKERS,
        default="auto",
        help="auto: Mosquitto when it is installed, else the embedded amqtt broker",
    )
    parser.add_argument(
        "--fresh", action="store_true", help="delete the demo directory first and start over"
    )
    parser.set_defaults(func=_command)


def _port(text: str) -> int:
    port = int(text)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a TCP port (1-65535)")
    return port


def _command(args: argparse.Namespace) -> int:
    if args.log_level != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)  # the migration narrates itself
    try:
        settings = DemoSettings(
            directory=args.dir,
            host=args.host,
            cp_port=args.cp_port,
            agent_port=args.agent_port,
            mqtt_port=args.mqtt_port,
            mosquitto=choose_broker(args.broker, find_program("mosquitto")),
        )
        env = child_environment(os.environ, embedded_broker=settings.mosquitto is None)
        return asyncio.run(run_demo(settings, env, args.fresh, sys.stdout))
    except (EdgeFleetError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def choose_broker(choice: str, mosquitto: str | None) -> str | None:
    """The Mosquitto program to run, or None for the embedded broker; `DemoError` if neither."""
    if choice != "embedded" and mosquitto is not None:
        return mosquitto
    if choice == "mosquitto":
        raise DemoError(
            "Mosquitto is not installed (apt-get install mosquitto); or use --broker embedded"
        )
    if importlib.util.find_spec("amqtt") is None:
        raise DemoError(
            "no MQTT broker: install Mosquitto (apt-get install mosquitto) or the embedded one "
            "(pip install 'edgefleet[broker]')"
        )
    return None


def child_environment(env: Mapping[str, str], embedded_broker: bool) -> dict[str, str]:
    """The children's environment: this one, MQTT 3.1.1 for the embedded broker, no buffering."""
    children = {k: v for k, v in env.items() if k not in NOT_INHERITED}
    children["PYTHONUNBUFFERED"] = "1"  # a log tail in an error message is up to date
    # Demo pacing (unless the caller chose): v1 leaves probation and its rollout completes within
    # seconds, so the demo is ready only once v1 is committed (see `DemoSteps.roll_out`).
    for name, value in DEMO_PACING.items():
        children.setdefault(name, value)
    if embedded_broker:  # amqtt speaks only MQTT 3.1.1
        children["EDGEFLEET_CP_MQTT_PROTOCOL"] = "4"
        children["EDGEFLEET_AGENT_MQTT_PROTOCOL"] = "4"
    return children


async def run_demo(settings: DemoSettings, env: Mapping[str, str], fresh: bool, out: TextIO) -> int:
    """Start everything, print the summary, run until SIGINT/SIGTERM; stop everything."""
    left = await asyncio.to_thread(prepare_directory, settings, fresh)
    if left:
        out.write(f"stopped what a previous run left running: {', '.join(left)}\n")
    processes = DemoProcesses(settings.directory / PID_FILE, env)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    stopping = asyncio.create_task(stop.wait())
    tasks: list[asyncio.Task[Any]] = [stopping]
    try:
        startup = asyncio.create_task(DemoSteps(settings, processes, out).run())
        tasks.append(startup)
        await asyncio.wait({startup, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            return 0
        out.write(summary(settings, startup.result()))
        out.flush()
        died = asyncio.create_task(processes.exited())
        tasks.append(died)
        await asyncio.wait({died, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            return 0
        raise DemoError(died.result().describe_exit())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        out.write("\nstopping ...\n")
        out.flush()
        stopped = await processes.stop_all()
        if stopped:
            out.write(f"stopped {', '.join(stopped)}\n")
        out.flush()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


def prepare_directory(settings: DemoSettings, fresh: bool) -> list[str]:
    """Stop a previous run's leftovers, wipe for --fresh, check the ports (blocking).

    Returns the names of the processes stopped.
    """
    directory = settings.directory
    marker = directory / MARKER
    foreign = {p.name for p in directory.iterdir()} - LEGACY if directory.is_dir() else set()
    if foreign and not marker.exists():
        raise DemoError(
            f"{directory} holds files the demo did not write (it has no {MARKER}): remove it, "
            "or choose another --dir"
        )
    left = stop_stale(directory / PID_FILE)
    if fresh and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    marker.touch()
    check_ports(settings)
    return left


def check_ports(settings: DemoSettings) -> None:
    """`DemoError` naming the port and the option to change it, when a port is taken."""
    wanted = (
        ("control plane", settings.host, settings.cp_port, "--cp-port", "CP_PORT"),
        ("agent", settings.host, settings.agent_port, "--agent-port", "AGENT_PORT"),
        ("MQTT broker", LOOPBACK, settings.mqtt_port, "--mqtt-port", "MQTT_PORT"),
    )
    if len({port for _, _, port, _, _ in wanted}) < len(wanted):
        raise DemoError("--cp-port, --agent-port and --mqtt-port must be three different ports")
    for what, host, port, option, variable in wanted:
        if port_in_use(host, port):
            raise DemoError(
                f"port {port} on {host}, which the {what} needs, is in use by another program: "
                f"stop that program, or choose another port with {option} N "
                f"(make demo {variable}=N)"
            )


def summary(settings: DemoSettings, ready: Ready) -> str:
    """Where everything is, how to try it, and how to stop it."""
    cp, token = settings.cp_url, ready.token
    agent = f"http://{settings.agent_address}"
    lines = [
        "",
        f"Dashboard      {cp}/",
        f"  sign in with {token}",
        f"Control plane  {cp}/api/v1  (SQLite in {settings.cp_data})",
        f"Agent          {agent}/v2  (device {DEVICE_ID}, rollout {ready.rollout})",
        f"MQTT broker    {settings.mqtt_url}  ({ready.broker})",
        f"Logs           {settings.logs}/",
        "",
        "Try, in another terminal:",
        f"  curl -s {agent}/v2/models/{MODEL}",
        f"  curl -s -X POST -H 'Content-Type: application/json' -d @{settings.request_file} "
        f"{agent}/v2/models/{MODEL}/infer",
        f"  curl -s -H 'Authorization: Bearer {token}' {cp}/api/v1/devices",
        f"  python examples/infer_mlp.py --url {settings.agent_address}",
        f"  EDGEFLEET_CP={cp} EDGEFLEET_TOKEN={token} edgefleet rollout ls",
        "",
        f"{READY_LINE}. Ctrl-C stops everything.",
        "",
    ]
    return "\n".join(lines)
