"""Operator tokens: issue, authenticate, revoke, and the secret never stored in clear."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from control_plane.db.engine import open_session, sqlite_file
from control_plane.errors import InvalidRole, UnknownToken
from control_plane.tokens import (
    Role,
    allows,
    authenticate,
    create_token,
    hash_secret,
    list_tokens,
    revoke,
)


async def test_the_right_secret_authenticates_and_is_marked_used(engine: AsyncEngine) -> None:
    async with open_session(engine) as session:
        secret = await create_token(session, "ci", Role.OPERATOR)
    assert secret.startswith("ef_")
    assert len(secret) > 40
    async with open_session(engine) as session:
        token = await authenticate(session, secret)
    assert token is not None
    assert (token.name, token.role) == ("ci", Role.OPERATOR)
    assert token.last_used_at is not None
    assert token.last_used_at.tzinfo is not None


async def test_wrong_secrets_do_not_authenticate(engine: AsyncEngine) -> None:
    async with open_session(engine) as session:
        secret = await create_token(session, "ci", Role.VIEWER)
        assert await authenticate(session, secret + "x") is None
        assert await authenticate(session, "ef_" + "A" * 43) is None
        assert await authenticate(session, secret.removeprefix("ef_")) is None
        assert await authenticate(session, "") is None


async def test_a_revoked_token_no_longer_authenticates(engine: AsyncEngine) -> None:
    async with open_session(engine) as session:
        secret = await create_token(session, "laptop", Role.ADMIN)
        (token,) = await list_tokens(session)
    async with open_session(engine) as session:
        revoked = await revoke(session, token.id)
        first_revocation = revoked.revoked_at
        assert first_revocation is not None
        assert (await revoke(session, token.id)).revoked_at == first_revocation
    async with open_session(engine) as session:
        assert await authenticate(session, secret) is None


async def test_revoking_an_unknown_token_fails(engine: AsyncEngine) -> None:
    with pytest.raises(UnknownToken):
        async with open_session(engine) as session:
            await revoke(session, 404)


async def test_the_secret_is_not_stored_in_clear(engine: AsyncEngine, database_url: str) -> None:
    async with open_session(engine) as session:
        secret = await create_token(session, "ci", Role.OPERATOR)
    await engine.dispose()  # checkpoints the WAL; the -wal file is read too in case it did not
    database = sqlite_file(database_url)
    if database is not None:
        stored = await asyncio.to_thread(_read_database_files, database)
    else:  # a server's files are out of reach: every column of every row, as text
        async with engine.connect() as connection:
            rows = await connection.execute(text("SELECT t::text FROM operator_tokens t"))
            stored = "".join(rows.scalars()).encode()
    assert secret.encode() not in stored
    assert secret.removeprefix("ef_").encode() not in stored
    assert hash_secret(secret).encode() in stored  # the grep does see what is stored


def _read_database_files(database: Path) -> bytes:
    paths = [database, database.with_name(database.name + "-wal")]
    return b"".join(p.read_bytes() for p in paths if p.exists())


def test_roles_are_ordered_viewer_operator_admin() -> None:
    assert Role.VIEWER < Role.OPERATOR < Role.ADMIN
    assert sorted([Role.ADMIN, Role.VIEWER, Role.OPERATOR]) == [
        Role.VIEWER,
        Role.OPERATOR,
        Role.ADMIN,
    ]
    assert allows(Role.ADMIN, Role.OPERATOR)
    assert allows(Role.OPERATOR, Role.OPERATOR)
    assert not allows(Role.VIEWER, Role.OPERATOR)
    assert not allows(Role.OPERATOR, Role.ADMIN)


def test_role_names_parse() -> None:
    assert Role.parse("admin") is Role.ADMIN
    with pytest.raises(InvalidRole, match="known: viewer, operator, admin"):
        Role.parse("root")
