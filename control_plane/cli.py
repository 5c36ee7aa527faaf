"""`edgefleet cp ...`: migrate the database, manage operator tokens, serve the API.

The database is the SQLite file in `--data`, unless `--db` or `EDGEFLEET_CP_DATABASE_URL`
names another (a PostgreSQL URL with a password belongs in the environment, not in `ps`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane import audit, tokens
from control_plane.api.app import serve
from control_plane.db.engine import (
    create_engine_for,
    default_database_url,
    open_session,
    redact,
    sqlite_file,
)
from control_plane.db.migrate import check_current, upgrade
from control_plane.errors import ControlPlaneError, SchemaOutOfDate
from control_plane.roles import Role
from control_plane.settings import ControlPlaneSettings

DATABASE_URL_ENV = "EDGEFLEET_CP_DATABASE_URL"
CLI_ACTOR = "cli"


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
    migrate.set_defaults(func=_command(_migrate, show_migrations=True))

    token = groups.add_parser("token", help="operator tokens")
    token_commands = token.add_subparsers(dest="token_command", metavar="COMMAND")
    create = token_commands.add_parser("create", parents=[common], help="issue a token")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--name", default="", help="who or what the token is for")
    create.set_defaults(func=_command(_create))
    listing = token_commands.add_parser("list", parents=[common], help="list tokens")
    listing.set_defaults(func=_command(_list))
    revoke = token_commands.add_parser("revoke", parents=[common], help="revoke a token")
    revoke.add_argument("id", type=int, help="the token's id (see `cp token list`)")
    revoke.set_defaults(func=_command(_revoke))

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
    serve.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default: 8080)")
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
        help="how devices reach this API (default: http://HOST:PORT)",
    )
    serve.set_defaults(func=_serve)


def database_url(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    """The database to use: --db, then the environment, then SQLite in --data."""
    url: str | None = args.db or env.get(DATABASE_URL_ENV)
    return url or default_database_url(args.data)


def _command(
    body: Callable[[argparse.Namespace, str], Coroutine[Any, Any, int]],
    show_migrations: bool = False,
) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        if not show_migrations and args.log_level != "DEBUG":
            # The schema check would log Alembic's "Context impl ..." lines on every command.
            logging.getLogger("alembic").setLevel(logging.WARNING)
        try:
            return asyncio.run(body(args, database_url(args, os.environ)))
        except ControlPlaneError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    return run


async def _migrate(args: argparse.Namespace, url: str) -> int:
    args.data.mkdir(parents=True, exist_ok=True)
    print(f"migrating {redact(url)} ...", file=sys.stderr)
    await upgrade(url)
    print("database is at the newest schema", file=sys.stderr)
    return 0


async def _in_session(url: str, work: Callable[[AsyncSession], Awaitable[int]]) -> int:
    """Run `work` in one transaction on a database that is at the newest schema."""
    file = sqlite_file(url)
    # Checked first so a typo in --data reports a missing database instead of creating one.
    if file is not None and not await asyncio.to_thread(file.exists):
        raise SchemaOutOfDate(f"no database at {redact(url)}; run `edgefleet cp migrate` first")
    if not await check_current(url):
        raise SchemaOutOfDate(
            f"{redact(url)} is not at the newest schema; run `edgefleet cp migrate` first"
        )
    engine = create_engine_for(url)
    try:
        async with open_session(engine) as session:
            return await work(session)
    finally:
        await engine.dispose()


async def _create(args: argparse.Namespace, url: str) -> int:
    async def work(session: AsyncSession) -> int:
        token, secret = await tokens.issue_token(session, args.name, Role(args.role))
        await audit.record(
            session, CLI_ACTOR, "token.create", f"token:{token.id}", None, tokens.describe(token)
        )
        print(secret)
        print(
            f"token {token.id} ({token.role.value}) created; store it now, "
            "it cannot be shown again",
            file=sys.stderr,
        )
        return 0

    return await _in_session(url, work)


async def _list(args: argparse.Namespace, url: str) -> int:
    async def work(session: AsyncSession) -> int:
        rows = [
            (
                str(t.id),
                t.name or "-",
                t.role.value,
                _when(t.created_at),
                _when(t.last_used_at),
                _when(t.revoked_at),
            )
            for t in await tokens.list_tokens(session)
        ]
        header = ("ID", "NAME", "ROLE", "CREATED", "LAST USED", "REVOKED")
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        for row in [header, *rows]:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        return 0

    return await _in_session(url, work)


async def _revoke(args: argparse.Namespace, url: str) -> int:
    async def work(session: AsyncSession) -> int:
        token = await tokens.get_token(session, args.id)
        if token.revoked_at is not None:
            print(f"token {token.id} was already revoked at {_when(token.revoked_at)}")
            return 0
        before = tokens.describe(token)
        await tokens.revoke(session, token.id)
        after = tokens.describe(token)
        await audit.record(session, CLI_ACTOR, "token.revoke", f"token:{token.id}", before, after)
        print(f"token {token.id} revoked", file=sys.stderr)
        return 0

    return await _in_session(url, work)


def _serve(args: argparse.Namespace) -> int:
    if args.log_level != "DEBUG":
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        settings = ControlPlaneSettings.build(
            os.environ,
            args.config,
            data_dir=args.data,
            database_url=args.db,
            host=args.host,
            port=args.port,
            keys_dir=args.keys,
            mqtt_url=args.mqtt,
            public_url=args.public_url,
        )
        asyncio.run(serve(settings))
    except ControlPlaneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the address is taken or cannot be bound
        print(f"error: cannot listen: {error}", file=sys.stderr)
        return 1
    return 0


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment is not None else "-"
