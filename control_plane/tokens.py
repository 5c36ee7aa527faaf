"""Operator tokens: issue a secret once, keep only its hash, authenticate, revoke."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from control_plane import audit
from control_plane.db.models import OperatorToken, utcnow
from control_plane.errors import UnknownToken
from control_plane.roles import Role, allows

__all__ = [
    "TOKEN_PREFIX",
    "Role",
    "allows",
    "authenticate",
    "create_token",
    "describe",
    "get_token",
    "hash_secret",
    "issue_token",
    "list_tokens",
    "revoke",
]

# Makes a leaked token recognisable to secret scanners and to people reading logs.
TOKEN_PREFIX = "ef_"
SECRET_BYTES = 32


def hash_secret(secret: str) -> str:
    """The stored form of a token: SHA-256, hex (see `OperatorToken.token_hash` for why)."""
    return hashlib.sha256(secret.encode()).hexdigest()


async def issue_token(session: AsyncSession, name: str, role: Role) -> tuple[OperatorToken, str]:
    """Add a new token; return its row (id assigned) and the secret, which is never stored."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    token = OperatorToken(name=name, role=role, token_hash=hash_secret(secret))
    session.add(token)
    await session.flush()
    return token, secret


async def create_token(session: AsyncSession, name: str, role: Role) -> str:
    """Add a new token and return its secret; this is the only time it can be seen."""
    _, secret = await issue_token(session, name, role)
    return secret


async def authenticate(session: AsyncSession, secret: str) -> OperatorToken | None:
    """The live token whose secret this is (its last use recorded), or None."""
    if not secret.startswith(TOKEN_PREFIX):
        return None
    # Looking up by hash needs no constant-time comparison: timing reveals at most how much
    # of a hash matched, and hashes of guesses say nothing about the real secret.
    token = await session.scalar(
        select(OperatorToken).where(
            OperatorToken.token_hash == hash_secret(secret),
            OperatorToken.revoked_at.is_(None),
        )
    )
    if token is not None:
        token.last_used_at = utcnow()
    return token


async def get_token(session: AsyncSession, token_id: int) -> OperatorToken:
    """The token `token_id`, or `UnknownToken`."""
    token = await session.get(OperatorToken, token_id)
    if token is None:
        raise UnknownToken(f"no operator token has id {token_id}")
    return token


async def revoke(session: AsyncSession, token_id: int) -> OperatorToken:
    """Revoke the token `token_id` (already revoked: left as it was); `UnknownToken` if none."""
    token = await get_token(session, token_id)
    if token.revoked_at is None:
        token.revoked_at = utcnow()
    return token


async def issue_audited(
    session: AsyncSession, actor: str, name: str, role: Role
) -> tuple[OperatorToken, str]:
    """Issue a token and audit it in the same transaction (the API, dashboard and CLI way)."""
    token, secret = await issue_token(session, name, role)
    await audit.record(session, actor, "token.create", f"token:{token.id}", None, describe(token))
    return token, secret


async def revoke_audited(session: AsyncSession, actor: str, token_id: int) -> OperatorToken:
    """Revoke a token and audit it; one already revoked changes (and audits) nothing."""
    token = await get_token(session, token_id)
    if token.revoked_at is None:
        before = describe(token)
        await revoke(session, token_id)
        await audit.record(
            session, actor, "token.revoke", f"token:{token.id}", before, describe(token)
        )
    return token


async def list_tokens(session: AsyncSession) -> Sequence[OperatorToken]:
    """Every token, oldest first."""
    return (await session.scalars(select(OperatorToken).order_by(OperatorToken.id))).all()


def describe(token: OperatorToken) -> dict[str, Any]:
    """A token as the audit log records it: never the secret or its hash."""
    return {
        "id": token.id,
        "name": token.name,
        "role": token.role.value,
        "revoked_at": token.revoked_at.isoformat() if token.revoked_at else None,
    }
