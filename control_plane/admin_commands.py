"""The `edgefleet cp` commands themselves (their parsers are in `control_plane.cli`)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from control_plane import tokens
from control_plane.api.app import serve as serve_api
from control_plane.cli import DATABASE_URL_ENV
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

CLI_ACTOR = "cli"


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
        token, secret = await tokens.issue_audited(session, CLI_ACTOR, args.name, Role(args.role))
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
        await tokens.revoke_audited(session, CLI_ACTOR, token.id)
        print(f"token {token.id} revoked", file=sys.stderr)
        return 0

    return await _in_session(url, work)


def serve(args: argparse.Namespace) -> int:
    """`cp serve`: run the API until SIGINT/SIGTERM."""
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
            tls_cert_file=args.tls_cert,
            tls_key_file=args.tls_key,
            behind_tls_proxy=args.behind_tls_proxy,
            keys_dir=args.keys,
            mqtt_url=args.mqtt,
            public_url=args.public_url,
        )
        asyncio.run(serve_api(settings))
    except ControlPlaneError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # the address is taken or cannot be bound
        print(f"error: cannot listen: {error}", file=sys.stderr)
        return 1
    return 0


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ") if moment is not None else "-"


migrate = _command(_migrate, show_migrations=True)
create_token = _command(_create)
list_tokens = _command(_list)
revoke_token = _command(_revoke)
