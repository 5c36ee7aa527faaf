"""The control plane's tables as SQLAlchemy 2 typed ORM models."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
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


# INTEGER columns (ids, versions) hold 32 signed bits on PostgreSQL, 64 on SQLite. A larger
# number names nothing stored, and the drivers refuse to bind it (aiosqlite: OverflowError, a
# 500; asyncpg: an error that reads as an unavailable database, a 503), so the API checks the
# numbers it is given before they reach a query.
INTEGER_MAX = 2**31 - 1


def fits_integer(value: int) -> bool:
    """Whether `value` fits an INTEGER column on every backend."""
    return -INTEGER_MAX - 1 <= value <= INTEGER_MAX


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


class EnrollmentToken(Base):
    """A one-time token a device presents to enroll; groups, labels and region are preset."""

    __tablename__ = "enrollment_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 hex, as tokens
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    groups: Mapped[list[str]] = mapped_column(JSON, default=list)
    labels: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    region: Mapped[str | None] = mapped_column(String(100), default=None)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    used_by: Mapped[str | None] = mapped_column(String(128), default=None)  # the device id


class Device(Base):
    """An enrolled device: its identity, what it reported last, and whether it is online."""

    __tablename__ = "devices"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    region: Mapped[str | None] = mapped_column(String(100), default=None, index=True)
    enrolled_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    public_key: Mapped[str] = mapped_column(Text)  # PEM (SubjectPublicKeyInfo)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    online: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    last_seen_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    # From the retained status message: agent version, hardware, models and their backends.
    agent_version: Mapped[str | None] = mapped_column(String(50), default=None)
    hardware: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    models: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    # gpu, openvino, arm-cpu, x86-cpu, or unknown until the first status: canary strata.
    backend_class: Mapped[str] = mapped_column(String(32), default="unknown", index=True)


class DeviceGroup(Base):
    """A device's membership of a named group (group commands, rollout targets)."""

    __tablename__ = "device_groups"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    group: Mapped[str] = mapped_column(String(100), primary_key=True, index=True)


class DeviceLabel(Base):
    """One `key=value` label of a device (label-selector rollout targets)."""

    __tablename__ = "device_labels"
    __table_args__ = (Index("ix_device_labels_key_value", "key", "value"),)

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    value: Mapped[str] = mapped_column(String(200))


class DeviceCertificate(Base):
    """An X.509 certificate the control plane's CA issued to a device; revocable."""

    __tablename__ = "device_certificates"

    serial: Mapped[str] = mapped_column(String(64), primary_key=True)  # hex
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    not_after: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    pem: Mapped[str] = mapped_column(Text)


class DesiredModel(Base):
    """What one device should run for one model; assignments are signed from these rows."""

    __tablename__ = "desired_models"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    digest: Mapped[str] = mapped_column(ForeignKey("bundles.digest"), index=True)
    set_by: Mapped[str] = mapped_column(String(200))  # "rollout:12", or an operator
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AssignmentRecord(Base):
    """The signed assignment document last issued to a device."""

    __tablename__ = "assignments"

    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True
    )
    serial: Mapped[int] = mapped_column(BigInteger)
    document: Mapped[bytes] = mapped_column(LargeBinary)
    etag: Mapped[str] = mapped_column(String(80))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class PresenceChange(Base):
    """A device going online or offline, from its retained status message and last will."""

    __tablename__ = "presence_history"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id", ondelete="CASCADE"), index=True)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    online: Mapped[bool] = mapped_column(Boolean)


class TelemetrySample(Base):
    """One model version's figures from one telemetry message (which covers several).

    (device_id, seq, model, version) is unique, so a message delivered twice (QoS 1) is stored
    once; during a probation both versions of a model report in one message.
    """

    __tablename__ = "telemetry_samples"
    __table_args__ = (
        UniqueConstraint(
            "device_id", "seq", "model", "version", name="uq_telemetry_device_seq_model_version"
        ),
        Index("ix_telemetry_model_version_time", "model", "version", "time"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)  # the device's clock
    model: Mapped[str] = mapped_column(String(200))
    version: Mapped[int] = mapped_column(Integer)
    backend: Mapped[str | None] = mapped_column(String(100), default=None)
    interval_s: Mapped[float] = mapped_column(Float)
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    latency_counts: Mapped[list[int]] = mapped_column(JSON)  # per LATENCY_BUCKETS bucket
    throughput_rps: Mapped[float] = mapped_column(Float)


class TelemetryRollup(Base):
    """Telemetry older than the raw retention, summed per device, model, version and bucket."""

    __tablename__ = "telemetry_rollups"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    bucket_s: Mapped[int] = mapped_column(Integer)
    requests: Mapped[int] = mapped_column(BigInteger)
    errors: Mapped[int] = mapped_column(BigInteger)
    latency_counts: Mapped[list[int]] = mapped_column(JSON)
    samples: Mapped[int] = mapped_column(Integer)


class DeviceEvent(Base):
    """One event a device published (downloads, activations, probations, reverts, commands)."""

    __tablename__ = "device_events"
    __table_args__ = (UniqueConstraint("device_id", "seq", name="uq_events_device_seq"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128), index=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    time: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    kind: Mapped[str] = mapped_column(String(50))
    model: Mapped[str | None] = mapped_column(String(200), default=None)
    version: Mapped[int | None] = mapped_column(Integer, default=None)
    name: Mapped[str | None] = mapped_column(String(100), default=None)  # e.g. the lifecycle state
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)


class Rollout(Base):
    """Rolling one model version out to a target, wave by wave, behind gates.

    `state`: running, paused, completed, aborted, rolled_back. `strategy` and `gates` are the
    JSON the operator gave (normalised); `plan` lists the wave sizes fixed at creation.
    """

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(primary_key=True)
    model: Mapped[str] = mapped_column(String(200), index=True)
    version: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(ForeignKey("bundles.digest"))
    target: Mapped[str] = mapped_column(String(300))  # group:G, label:k=v, device:ID[,ID...]
    strategy: Mapped[dict[str, Any]] = mapped_column(JSON)
    gates: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(20), index=True)
    current_wave: Mapped[int] = mapped_column(Integer, default=0)
    wave_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    reason: Mapped[str | None] = mapped_column(Text, default=None)  # why it paused or stopped
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    created_by: Mapped[str] = mapped_column(String(200))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class RolloutWave(Base):
    """One wave of a rollout (wave 0 is the canary when the strategy has one)."""

    __tablename__ = "rollout_waves"

    rollout_id: Mapped[int] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    index: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(20))  # pending, running, passed, failed
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    gate_results: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)


class RolloutDevice(Base):
    """One device of a rollout: its wave, what it ran before, and how far it got.

    `state`: pending, assigned, active (reported serving the version), failed, rolled_back.
    """

    __tablename__ = "rollout_devices"

    rollout_id: Mapped[int] = mapped_column(
        ForeignKey("rollouts.id", ondelete="CASCADE"), primary_key=True
    )
    device_id: Mapped[str] = mapped_column(
        ForeignKey("devices.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    wave: Mapped[int] = mapped_column(Integer)
    previous_digest: Mapped[str | None] = mapped_column(String(64), default=None)
    state: Mapped[str] = mapped_column(String(20))
    assigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), default=None)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
