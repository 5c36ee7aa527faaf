"""What every operator command shares: its options, the API call around it, and its output.

`command(body)` turns an async `body(client, args)` into an argparse `func`: it resolves the
control plane URL and token (`--cp`/`--token`, else `EDGEFLEET_CP`/`EDGEFLEET_TOKEN`) and the CA
of its HTTPS certificate (`--ca-file`, else `EDGEFLEET_CA_FILE`), opens a `ControlPlaneClient`,
and turns an `ApiCallFailed` into one `error: ...` line and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from control_plane.client import (
    CA_FILE_ENV,
    CP_ENV,
    TOKEN_ENV,
    ApiCallFailed,
    ControlPlaneClient,
    endpoint_from,
    environment,
    tls_from,
)

Body = Callable[[ControlPlaneClient, argparse.Namespace], Awaitable[int]]


def common_options() -> argparse.ArgumentParser:
    """The parent parser of every operator command: --cp, --token, --ca-file, --json."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cp", metavar="URL", help=f"control plane URL (default: ${CP_ENV})")
    common.add_argument("--token", help=f"operator token (default: ${TOKEN_ENV})")
    common.add_argument(
        "--ca-file",
        type=Path,
        metavar="FILE",
        help="CA certificates (PEM) of an https:// control plane whose certificate a private "
        f"CA issued (default: ${CA_FILE_ENV}, else the system's trusted CAs)",
    )
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")
    return common


def command(body: Body) -> Callable[[argparse.Namespace], int]:
    """An argparse `func` that runs `body` against the control plane."""

    def run(args: argparse.Namespace) -> int:
        try:
            url, token = endpoint_from(args.cp, args.token, environment())
            tls = tls_from(args.ca_file, environment())

            async def call() -> int:
                async with ControlPlaneClient(url, token, tls=tls) as client:
                    return await body(client, args)

            return asyncio.run(call())
        except ApiCallFailed as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 130

    return run


def print_json(value: Any) -> None:
    """Print what the API answered, indented and with sorted keys."""
    print(json.dumps(value, indent=2, sort_keys=True))


def parse_pair(text: str) -> tuple[str, str]:
    """`KEY=VALUE` as a pair; `ApiCallFailed` saying what was expected."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ApiCallFailed(f"--label expects KEY=VALUE, got {text!r}")
    return key, value
