"""The control plane's tables as SQLAlchemy 2 typed ORM models (more arrive with later issues)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Dialect,
    Enum,
    Integer,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from control_plane.roles import Role


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on every backend.

    SQLite has no time zones and hands back naive values; storing UTC and re-attaching the
    zone on the way out keeps comparisons with `datetime.now(UTC)` valid everywhere.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


class Base(DeclarativeBase):
    """The declarative base whose metadata Alembic compares migrations against."""


class OperatorToken(Base):
    """A bearer token an operator (or a script) uses against the API; only its hash is kept."""

    __tablename__ = "operator_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    role: Mapped[Role] = mapped_column(
        Enum(
            Role,
            name="role",
            native_enum=False,
            create_constraint=True,
            length=16,
            values_callable=lambda roles: [r.value for r in roles],
        )
    )
    # SHA-256 of the secret, hex. A plain fast hash is enough here (no salt, no bcrypt/argon2):
    # the secret is 32 bytes from `secrets`, so there is no dictionary to try and 2**256
    # guesses are out of reach; slow password hashes only help with low-entropy passwords.
    # Being deterministic, it also lets authentication look the token up by index.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)


class AuditEntry(Base):
    """One change made through the control plane: who did what to which thing, before and after."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(100))
    target: Mapped[str] = mapped_column(String(200), index=True)
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class BundleRecord(Base):
    """One verified, stored model bundle: a release of a model name at a version."""

    __tablename__ = "bundles"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_bundles_name_version"),)

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)  # sha256 of the archive
    name: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    size: Mapped[int] = mapped_column(BigInteger)
    signer_keyid: Mapped[str] = mapped_column(String(100))
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    uploaded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    uploaded_by: Mapped[str] = mapped_column(String(200))
