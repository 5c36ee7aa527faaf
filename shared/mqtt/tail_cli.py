"""`edgefleet mqtt tail`: print EdgeFleet messages as they arrive, for operators debugging.

Each message is printed on one line: the publisher's time (UTC), the topic, the schema, the
sequence number and the compact payload, or with `--json` one JSON object per line. A message
that is not a valid envelope for its topic is printed as MALFORMED with the field at fault and
counted; the counts are printed on exit (Ctrl-C, or after `--count` messages). Passwords come
only from an environment variable named by `--password-env`, never from the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import sys
from datetime import UTC, datetime
from pathlib import Path

from shared.mqtt.client import Message, MqttClient, MqttSettings
from shared.mqtt.envelope import Envelope, EnvelopeStats, check_topic, decode
from shared.mqtt.errors import EnvelopeError, MqttError
from shared.mqtt.topics import DEVICE_KINDS, GROUP_COMMANDS_FILTER, device_filter


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the `mqtt` command group."""
    mqtt = subparsers.add_parser(
        "mqtt", help="MQTT tools", description="Tools for EdgeFleet's MQTT messages."
    )
    commands = mqtt.add_subparsers(dest="mqtt_command", metavar="COMMAND", required=True)
    tail = commands.add_parser(
        "tail",
        help="print decoded messages as they arrive",
        description="Subscribe to EdgeFleet topics and print each message as it arrives: "
        "time, topic, schema, sequence number and payload. Malformed messages are printed "
        "and counted. Ctrl-C stops.",
    )
    tail.add_argument("--mqtt", required=True, metavar="URL", help="mqtt://host:port or mqtts://")
    tail.add_argument("--device", metavar="ID", help="only this device's topics")
    tail.add_argument("--kind", choices=DEVICE_KINDS, help="only this kind of topic")
    tail.add_argument("--username", help="broker account")
    tail.add_argument("--password-env", metavar="VAR", help="read the password from $VAR")
    tail.add_argument("--ca-file", type=Path, help="CA certificate that signs the broker's")
    tail.add_argument("--cert-file", type=Path, help="client certificate, for mutual TLS")
    tail.add_argument("--key-file", type=Path, help="the client certificate's key")
    tail.add_argument(
        "--protocol",
        type=int,
        choices=(5, 4),
        default=5,
        help="MQTT 5 (default) or 4 for 3.1.1 (the embedded broker)",
    )
    tail.add_argument("--client-id", help="default: edgefleet-tail-<random>")
    tail.add_argument("--json", action="store_true", help="print one JSON object per line")
    tail.add_argument(
        "--count",
        type=int,
        default=0,
        metavar="N",
        help="exit after N messages (default: run until Ctrl-C)",
    )
    tail.add_argument("--connect-timeout", type=float, default=10.0, metavar="SECONDS")
    tail.set_defaults(func=_tail)


def tail_filters(device: str | None, kind: str | None) -> list[str]:
    """The subscriptions for a device (or all) and a kind (or all); group commands included."""
    filters = [device_filter(device, kind)]
    if device is None and kind in (None, "cmd"):
        filters.append(GROUP_COMMANDS_FILTER)
    return filters


def _tail(args: argparse.Namespace) -> int:
    password = None
    if args.password_env:
        password = os.environ.get(args.password_env)
        if password is None:
            return _fail(f"${args.password_env} is not set")
    try:
        settings = MqttSettings(
            url=args.mqtt,
            client_id=args.client_id or f"edgefleet-tail-{secrets.token_hex(4)}",
            username=args.username,
            password=password,
            ca_file=args.ca_file,
            cert_file=args.cert_file,
            key_file=args.key_file,
            protocol=args.protocol,
        )
        filters = tail_filters(args.device, args.kind)
    except MqttError as exc:
        return _fail(str(exc))
    stats = EnvelopeStats()
    try:
        status = asyncio.run(_run(settings, filters, stats, args))
    except KeyboardInterrupt:
        status = 0
    print(
        f"{stats.accepted} messages, {stats.rejected_total} malformed"
        + "".join(f", {n} {f}" for f, n in sorted(stats.rejected.items())),
        file=sys.stderr,
    )
    return status


async def _run(
    settings: MqttSettings, filters: list[str], stats: EnvelopeStats, args: argparse.Namespace
) -> int:
    async with MqttClient(settings) as client:
        try:
            await client.wait_connected(args.connect_timeout)
            for topic_filter in filters:
                await client.subscribe(topic_filter)
        except (MqttError, TimeoutError) as exc:
            return _fail(str(exc))
        print(f"listening on {settings.url}: {', '.join(filters)}", file=sys.stderr, flush=True)
        seen = 0
        async with client.messages() as stream:
            async for message in stream:
                print(_describe(message, stats, args.json), flush=True)
                seen += 1
                if seen == args.count:
                    break
    return 0


def _describe(message: Message, stats: EnvelopeStats, as_json: bool) -> str:
    try:
        envelope = decode(message.payload)
        check_topic(envelope, message.topic)
    except EnvelopeError as exc:
        stats.rejected[exc.field] += 1
        if as_json:
            return json.dumps({"topic": message.topic, "malformed": str(exc)})
        return f"MALFORMED  {message.topic}  {exc}"
    stats.accepted += 1
    return _json_line(message, envelope) if as_json else _text_line(message, envelope)


def _text_line(message: Message, envelope: Envelope) -> str:
    when = datetime.fromtimestamp(envelope.time, UTC).isoformat(timespec="milliseconds")
    payload = json.dumps(envelope.payload, separators=(",", ":"), ensure_ascii=False)
    retained = "  (retained)" if message.retain else ""
    return f"{when}  {message.topic}  {envelope.schema}  seq={envelope.seq}{retained}  {payload}"


def _json_line(message: Message, envelope: Envelope) -> str:
    return json.dumps(
        {
            "topic": message.topic,
            "retained": message.retain,
            "schema": envelope.schema,
            "device_id": envelope.device_id,
            "seq": envelope.seq,
            "time": envelope.time,
            "payload": envelope.payload,
        },
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _fail(message: str) -> int:
    print(f"edgefleet mqtt tail: {message}", file=sys.stderr)
    return 1
