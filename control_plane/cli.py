"""`edgefleet cp ...`: migrate the database, manage operator tokens, serve the API.

The database is the SQLite file in `--data`, unless `--db` or `EDGEFLEET_CP_DATABASE_URL`
names another (a PostgreSQL URL with a password belongs in the environment, not in `ps`).
Only the parsers live here: every `edgefleet` command builds them, so the commands themselves
(and SQLAlchemy, Alembic, aiohttp's server) are imported from `control_plane.admin_commands`
only when a `cp` command runs.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable
from pathlib import Path

from control_plane.roles import Role

DATABASE_URL_ENV = "EDGEFLEET_CP_DATABASE_URL"


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `cp migrate`, `cp token create|list|revoke` and `cp serve`."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data", type=Path, required=True, help="the control plane's data dir")
    common.add_argument(
        "--db", help=f"database URL (default: ${DATABASE_URL_ENV}, else SQLite in --data)"
    )
    cp = subparsers.add_parser("cp", help="control plane administration")
    groups = cp.add_subparsers(dest="cp_command", metavar="COMMAND")

    migrate = groups.add_parser("migrate", parents=[common], help="bring the database to head")
    migrate.set_defaults(func=_later("migrate"))

    token = groups.add_parser("token", help="operator tokens")
    token_commands = token.add_subparsers(dest="token_command", metavar="COMMAND")
    create = token_commands.add_parser("create", parents=[common], help="issue a token")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--name", default="", help="who or what the token is for")
    create.set_defaults(func=_later("create_token"))
    listing = token_commands.add_parser("list", parents=[common], help="list tokens")
    listing.set_defaults(func=_later("list_tokens"))
    revoke = token_commands.add_parser("revoke", parents=[common], help="revoke a token")
    revoke.add_argument("id", type=int, help="the token's id (see `cp token list`)")
    revoke.set_defaults(func=_later("revoke_token"))

    serve = groups.add_parser(
        "serve",
        help="serve the REST API until SIGINT/SIGTERM",
        description="Serve the REST API (and, with --mqtt, ingest device reports and send "
        "commands). Settings come from --config (TOML), EDGEFLEET_CP_* variables and these "
        "flags; see docs/operations.md.",
    )
    serve.add_argument("--config", type=Path, help="settings file (TOML); flags override it")
    serve.add_argument(
        "--data", type=Path, help="the control plane's data dir (default: $EDGEFLEET_CP_DATA_DIR)"
    )
    serve.add_argument(
        "--db", help=f"database URL (default: ${DATABASE_URL_ENV}, else SQLite in --data)"
    )
    serve.add_argument(
        "--host",
        help="address to listen on (default: 127.0.0.1); any other than loopback needs "
        "--tls-cert or --behind-tls-proxy",
    )
    serve.add_argument("--port", type=int, help="port to listen on (default: 8080)")
    serve.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="serve HTTPS (TLS 1.2 or newer) with this certificate chain (PEM, leaf first)",
    )
    serve.add_argument(
        "--tls-key",
        type=Path,
        metavar="FILE",
        help="the private key of --tls-cert (PEM; default: in the --tls-cert file)",
    )
    serve.add_argument(
        "--behind-tls-proxy",
        action="store_true",
        default=None,
        help="a proxy or load balancer in front terminates TLS: serve plain HTTP on a "
        "non-loopback --host all the same",
    )
    serve.add_argument(
        "--keys",
        type=Path,
        help="key directory from `edgefleet keys init` (default: $EDGEFLEET_CP_KEYS_DIR); "
        "only root.pub, keylist.json and assignment.key are read",
    )
    serve.add_argument(
        "--mqtt", metavar="URL", help="broker for ingest and commands, e.g. mqtt://127.0.0.1:1883"
    )
    serve.add_argument(
        "--public-url",
        metavar="URL",
        help="how devices reach this API (default: https://HOST:PORT with --tls-cert, else "
        "http://HOST:PORT)",
    )
    serve.set_defaults(func=_later("serve"))


def _later(name: str) -> Callable[[argparse.Namespace], int]:
    """The command `name` of `control_plane.admin_commands`, imported when it runs."""

    def run(args: argparse.Namespace) -> int:
        commands = importlib.import_module("control_plane.admin_commands")
        command: Callable[[argparse.Namespace], int] = getattr(commands, name)
        return command(args)

    return run
