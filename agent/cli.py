"""`edgefleet agent ...`: serve local models and probe this device's accelerators."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from shared.errors import EdgeFleetError
from shared.table import format_rows

log = logging.getLogger(__name__)

ENROLL_TOKEN_ENV = "EDGEFLEET_ENROLL_TOKEN"
# `agent run`'s setting; `agent enroll` reads it too, so one variable serves both.
ALLOW_PLAIN_TRANSPORT_ENV = "EDGEFLEET_AGENT_ALLOW_PLAIN_TRANSPORT"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `agent` command group."""
    agent = subparsers.add_parser(
        "agent",
        help="run the edge agent or inspect this device",
        description="Run the edge agent or inspect this device.",
    )
    commands = agent.add_subparsers(dest="agent_command", metavar="COMMAND", required=True)

    serve = commands.add_parser(
        "serve",
        help="serve local model files over the Open Inference Protocol (development mode)",
        description=(
            "Serve local model files over the Open Inference Protocol (KServe v2, compatible "
            "with tritonclient). This is the development mode: files are served as they are, "
            "without signature checks. Several files for one model are variants of it; the "
            "agent measures each and serves the fastest."
        ),
        epilog="example: edgefleet agent serve --model mlp=models/mlp.onnx,models/mlp.tflite",
    )
    serve.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME=PATH[,PATH...]",
        help="a model to serve; repeat for several models",
    )
    _add_common_options(serve)
    serve.add_argument(
        "--policy",
        choices=["latency", "throughput"],
        help="what the accelerator selection optimises (default latency)",
    )
    serve.add_argument(
        "--pin",
        action="append",
        default=[],
        metavar="NAME=RUNTIME[/DEVICE]",
        help="skip measuring and use this backend, e.g. mlp=onnxruntime/CPU",
    )
    serve.add_argument(
        "--selection-budget",
        type=float,
        metavar="SECONDS",
        help="time to spend measuring the candidates of each model (default 3)",
    )
    serve.add_argument("--max-batch-size", type=int, help="largest merged batch (default 32)")
    serve.add_argument(
        "--max-queue-delay-us",
        type=int,
        help="how long a request may wait for others to batch with (default 0)",
    )
    serve.add_argument(
        "--max-queue-size",
        type=int,
        help="queued requests per model before answering 503 (default 256)",
    )
    serve.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="intra-op threads per runtime session (default: the runtime's)",
    )
    serve.add_argument("--cpu-affinity", metavar="CPUS", help="pin the agent to CPUs, e.g. 0,1")
    serve.set_defaults(func=_serve)

    run = commands.add_parser(
        "run",
        help="production mode: serve the signed bundles that the device's assignment names",
        description=(
            "Production mode. Follow the signed assignment (a control-plane URL or a file), "
            "download, verify and activate the bundles it names, and serve only those. Settings "
            "come from --config (TOML), EDGEFLEET_AGENT_* variables and these flags."
        ),
        epilog=(
            "example: edgefleet agent run --config /etc/edgefleet/agent.toml  "
            "(see docs/agent.md, section 'Production mode')"
        ),
    )
    _add_common_options(run)
    run.add_argument("--assignment", help="assignment URL (https://...) or file path")
    run.add_argument(
        "--cp-ca",
        metavar="FILE",
        help="CA certificates (PEM) of the control plane's HTTPS (bundles.ca_file; default: "
        "the one `agent enroll --cp-ca` stored, else the system's)",
    )
    run.add_argument("--root-key", help="the pinned root public key (root.pub)")
    run.add_argument("--keylist", help="the signed key list (keylist.json)")
    run.set_defaults(func=_run)

    enroll = commands.add_parser(
        "enroll",
        help="enroll this device with a control plane, using a one-time token",
        description=(
            "Make this device's key, have the control plane certify it (a one-time enrollment "
            "token authenticates the request), verify the key list against the root key, and "
            "store the identity in the state directory, where `agent run --state` finds it."
        ),
        epilog="example: edgefleet agent enroll --cp https://cp.example.com --token efe_... "
        "--state /var/lib/edgefleet --root-key root.pub  (see docs/operations.md)",
    )
    enroll.add_argument("--cp", required=True, metavar="URL", help="the control plane's URL")
    enroll.add_argument(
        "--token", help=f"the enrollment token (default: ${ENROLL_TOKEN_ENV}, kept out of `ps`)"
    )
    enroll.add_argument(
        "--state", "--state-dir", dest="state_dir", type=Path, required=True, metavar="DIR"
    )
    enroll.add_argument("--device-id", help="this device's id (default: the host name)")
    enroll.add_argument(
        "--root-key",
        type=Path,
        metavar="FILE",
        help="the root public key to pin (root.pub); without it the control plane's root key "
        "is trusted on first use",
    )
    enroll.add_argument(
        "--cp-ca",
        type=Path,
        metavar="FILE",
        help="the CA certificates (PEM) that the control plane's HTTPS certificate chains to, "
        "when it is a private CA; stored for `agent run` (default: the system's trusted CAs)",
    )
    enroll.add_argument(
        "--allow-plain-transport",
        action="store_true",
        help="accept a plain http:// --cp whose host is not loopback (only on a network you "
        f"trust; default: ${ALLOW_PLAIN_TRANSPORT_ENV})",
    )
    enroll.add_argument("--force", action="store_true", help="replace an existing identity")
    enroll.set_defaults(func=_enroll)

    probe = commands.add_parser(
        "probe",
        help="show this device's hardware and runtimes, or measure a model's backends",
        description=(
            "Show the CPU, memory, GPUs and inference runtimes of this device. With --model, "
            "also measure every backend that can run the file(s) and show which one wins."
        ),
    )
    probe.add_argument("--json", action="store_true", help="print JSON instead of tables")
    probe.add_argument(
        "--model",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="a model file to measure; repeat to compare variants of one model",
    )
    probe.add_argument("--policy", choices=["latency", "throughput"], default="latency")
    probe.add_argument(
        "--budget",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="measuring time for the model (default 3)",
    )
    probe.add_argument("--max-batch-size", type=int, default=32)
    probe.set_defaults(func=_probe)


def _add_common_options(parser: argparse.ArgumentParser) -> None:
    """Options `serve` and `run` share: settings file, state, endpoint, identity, MQTT."""
    parser.add_argument("--config", type=Path, help="settings file (TOML); flags override it")
    parser.add_argument(
        "--state",
        "--state-dir",
        dest="state_dir",
        type=Path,
        help="state directory: identity (from `agent enroll`), selection cache, bundle store, "
        "state file, event log, outbox",
    )
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to bind (default 8000)")
    parser.add_argument("--device-id", help="this device's id (default: the host name)")
    parser.add_argument(
        "--mqtt",
        metavar="URL",
        help="report to this broker, e.g. mqtt://127.0.0.1:1883 (default: none)",
    )
    parser.add_argument(
        "--allow-plain-transport",
        action="store_true",
        default=None,
        help="accept http:// and mqtt:// URLs whose host is not loopback (only on a network "
        "you trust; allow_plain_transport)",
    )
    parser.add_argument(
        "--telemetry-interval",
        type=float,
        metavar="SECONDS",
        help="seconds between telemetry reports (default 10)",
    )


def _common_overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    return {
        "": {
            "device_id": args.device_id,
            "state_dir": str(args.state_dir) if args.state_dir else None,
            "allow_plain_transport": args.allow_plain_transport,
        },
        "server": {"host": args.host, "port": args.port},
        "mqtt": {"url": args.mqtt, "telemetry_interval_s": args.telemetry_interval},
    }


def _parse_models(values: list[str]) -> dict[str, dict[str, Any]]:
    models: dict[str, dict[str, Any]] = {}
    for value in values:
        name, sep, paths = value.partition("=")
        if not sep or not name or not paths:
            raise SystemExit(f"--model expects NAME=PATH[,PATH...], got '{value}'")
        models[name] = {"paths": [str(Path(p).resolve()) for p in paths.split(",") if p]}
    return models


def _serve(args: argparse.Namespace) -> int:
    from agent.config import load_settings
    from agent.server.app import build_agent, serve

    models = _parse_models(args.model)
    for value in args.pin:
        name, _, pin = value.partition("=")
        if name not in models:
            raise SystemExit(f"--pin names '{name}', which no --model defines")
        models[name]["pin"] = pin
    overrides = {
        **_common_overrides(args),
        "selection": {"policy": args.policy, "budget_s": args.selection_budget},
        "batching": {
            "max_batch_size": args.max_batch_size,
            "max_queue_delay_us": args.max_queue_delay_us,
            "max_queue_size": args.max_queue_size,
        },
        "runtime": {"intra_op_threads": args.threads, "cpu_affinity": args.cpu_affinity},
    }
    try:
        settings = load_settings(args.config, os.environ, overrides, models)
        if not settings.models:
            raise SystemExit("nothing to serve: give --model NAME=PATH or a [models] section")
        agent = build_agent(settings)
    except AgentError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    asyncio.run(serve(agent))
    return 0


def _run(args: argparse.Namespace) -> int:
    from agent.identity import load_run_settings
    from agent.runner import build_production_agent
    from agent.server.app import serve

    overrides = {
        **_common_overrides(args),
        "bundles": {
            "assignment": args.assignment,
            "ca_file": args.cp_ca,
            "root_key": args.root_key,
            "keylist": args.keylist,
        },
    }
    try:
        settings = load_run_settings(args.config, os.environ, overrides)
        agent = build_production_agent(settings)
    except (AgentError, EdgeFleetError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    asyncio.run(serve(agent))
    return 0


def _enroll(args: argparse.Namespace) -> int:
    from agent.config import truthy
    from agent.enroll import EnrollOptions, enroll

    token = args.token or os.environ.get(ENROLL_TOKEN_ENV, "")
    if not token:
        print(f"error: give the enrollment token: --token or ${ENROLL_TOKEN_ENV}", file=sys.stderr)
        return 2
    options = EnrollOptions(
        cp_url=args.cp,
        token=token,
        state_dir=args.state_dir,
        device_id=args.device_id or socket.gethostname(),
        root_key=args.root_key,
        force=args.force,
        cp_ca=args.cp_ca,
        allow_plain_transport=args.allow_plain_transport
        or truthy(os.environ.get(ALLOW_PLAIN_TRANSPORT_ENV, "")),
    )
    try:
        asyncio.run(enroll(options, lambda line: print(line, file=sys.stderr, flush=True)))
    except (AgentError, EdgeFleetError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _probe(args: argparse.Namespace) -> int:
    from agent.hardware import format_table, probe_hardware
    from agent.runtimes.base import RuntimeOptions
    from agent.runtimes.registry import RuntimeRegistry
    from agent.selection import AcceleratorSelector, SelectionRequest
    from agent.selection_cache import SelectionCache

    registry = RuntimeRegistry.default()
    hardware = probe_hardware(registry)
    result: dict[str, Any] = {"hardware": hardware.as_dict()}
    if not args.json:
        print(format_table(hardware))
    if args.model:
        for path in args.model:
            if not path.is_file():
                print(f"error: model file {path} does not exist", file=sys.stderr)
                return 1
        selector = AcceleratorSelector(
            registry,
            RuntimeOptions(max_batch_size=args.max_batch_size),
            SelectionCache(None),
            hardware.fingerprint(),
        )
        request = SelectionRequest(
            model=args.model[0].stem.split(".")[0],
            paths=tuple(args.model),
            policy=args.policy,
            max_batch=args.max_batch_size,
            budget_s=args.budget,
        )
        if not args.json:
            print(
                f"\nmeasuring {len(args.model)} file(s) for about {args.budget:.0f} s ...",
                flush=True,
            )
        try:
            selection = selector.select(request)
        except AgentError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        selection.backend.unload()
        report = selection.report
        result["selection"] = report.as_json()
        if not args.json:
            rows = [
                [
                    ("* " if m.candidate == report.chosen else "  ") + m.candidate,
                    "ok" if m.ok else "failed",
                    _fmt(m.load_ms, ".1f"),
                    _fmt(m.latency_ms_p50, ".3f"),
                    _fmt(m.latency_ms_p95, ".3f"),
                    _fmt(m.throughput_rows_s, ".0f"),
                    m.error or "",
                ]
                for m in report.measurements
            ]
            print(
                format_rows(
                    [
                        "candidate",
                        "status",
                        "load ms",
                        "b1 p50 ms",
                        "b1 p95 ms",
                        f"b{args.max_batch_size} rows/s",
                        "error",
                    ],
                    rows,
                )
            )
            print(f"\nchosen for {report.policy}: {report.chosen}")
    if args.json:
        print(json.dumps(result, indent=2))
    return 0


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
