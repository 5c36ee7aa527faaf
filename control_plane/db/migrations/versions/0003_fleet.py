"""Devices and enrollment, assignments, telemetry, events and rollouts.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "device_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(length=50), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("name", sa.String(length=100), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("device_id", "seq", name="uq_events_device_seq"),
    )
    with op.batch_alter_table("device_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_events_device_id"), ["device_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_device_events_time"), ["time"], unique=False)

    op.create_table(
        "devices",
        sa.Column("id", sa.String(length=128), nullable=False),
        sa.Column("region", sa.String(length=100), nullable=True),
        sa.Column("enrolled_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("agent_version", sa.String(length=50), nullable=True),
        sa.Column("hardware", sa.JSON(), nullable=True),
        sa.Column("models", sa.JSON(), nullable=False),
        sa.Column("backend_class", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_devices_backend_class"), ["backend_class"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_devices_online"), ["online"], unique=False)
        batch_op.create_index(batch_op.f("ix_devices_region"), ["region"], unique=False)

    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("region", sa.String(length=100), nullable=True),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("used_by", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("token_hash"),
    )
    op.create_table(
        "telemetry_rollups",
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("bucket_s", sa.Integer(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("latency_counts", sa.JSON(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "model", "version", "bucket_start"),
    )
    op.create_table(
        "telemetry_samples",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("backend", sa.String(length=100), nullable=True),
        sa.Column("interval_s", sa.Float(), nullable=False),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        sa.Column("latency_counts", sa.JSON(), nullable=False),
        sa.Column("throughput_rps", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "device_id", "seq", "model", "version", name="uq_telemetry_device_seq_model_version"
        ),
    )
    with op.batch_alter_table("telemetry_samples", schema=None) as batch_op:
        batch_op.create_index(
            "ix_telemetry_model_version_time", ["model", "version", "time"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_telemetry_samples_device_id"), ["device_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_telemetry_samples_time"), ["time"], unique=False)

    op.create_table(
        "assignments",
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("serial", sa.BigInteger(), nullable=False),
        sa.Column("document", sa.LargeBinary(), nullable=False),
        sa.Column("etag", sa.String(length=80), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id"),
    )
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_assignments_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "desired_models",
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("set_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["digest"],
            ["bundles.digest"],
        ),
        sa.PrimaryKeyConstraint("device_id", "model"),
    )
    with op.batch_alter_table("desired_models", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_desired_models_digest"), ["digest"], unique=False)

    op.create_table(
        "device_certificates",
        sa.Column("serial", sa.String(length=64), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("issued_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("not_after", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("pem", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("serial"),
    )
    with op.batch_alter_table("device_certificates", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_device_certificates_device_id"), ["device_id"], unique=False
        )

    op.create_table(
        "device_groups",
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("group", sa.String(length=100), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id", "group"),
    )
    with op.batch_alter_table("device_groups", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_device_groups_group"), ["group"], unique=False)

    op.create_table(
        "device_labels",
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("key", sa.String(length=100), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("device_id", "key"),
    )
    with op.batch_alter_table("device_labels", schema=None) as batch_op:
        batch_op.create_index("ix_device_labels_key_value", ["key", "value"], unique=False)

    op.create_table(
        "presence_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("online", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("presence_history", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_presence_history_device_id"), ["device_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_presence_history_time"), ["time"], unique=False)

    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=300), nullable=False),
        sa.Column("strategy", sa.JSON(), nullable=False),
        sa.Column("gates", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("current_wave", sa.Integer(), nullable=False),
        sa.Column("wave_started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=200), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["digest"],
            ["bundles.digest"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_rollouts_model"), ["model"], unique=False)
        batch_op.create_index(batch_op.f("ix_rollouts_state"), ["state"], unique=False)

    op.create_table(
        "rollout_devices",
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.String(length=128), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("previous_digest", sa.String(length=64), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("assigned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("rollout_id", "device_id"),
    )
    with op.batch_alter_table("rollout_devices", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_rollout_devices_device_id"), ["device_id"], unique=False
        )

    op.create_table(
        "rollout_waves",
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("gate_results", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(["rollout_id"], ["rollouts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("rollout_id", "index"),
    )


def downgrade() -> None:
    """Undo this revision."""
    op.drop_table("rollout_waves")
    with op.batch_alter_table("rollout_devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollout_devices_device_id"))

    op.drop_table("rollout_devices")
    with op.batch_alter_table("rollouts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_rollouts_state"))
        batch_op.drop_index(batch_op.f("ix_rollouts_model"))

    op.drop_table("rollouts")
    with op.batch_alter_table("presence_history", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_presence_history_time"))
        batch_op.drop_index(batch_op.f("ix_presence_history_device_id"))

    op.drop_table("presence_history")
    with op.batch_alter_table("device_labels", schema=None) as batch_op:
        batch_op.drop_index("ix_device_labels_key_value")

    op.drop_table("device_labels")
    with op.batch_alter_table("device_groups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_groups_group"))

    op.drop_table("device_groups")
    with op.batch_alter_table("device_certificates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_certificates_device_id"))

    op.drop_table("device_certificates")
    with op.batch_alter_table("desired_models", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_desired_models_digest"))

    op.drop_table("desired_models")
    with op.batch_alter_table("assignments", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_assignments_expires_at"))

    op.drop_table("assignments")
    with op.batch_alter_table("telemetry_samples", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_telemetry_samples_time"))
        batch_op.drop_index(batch_op.f("ix_telemetry_samples_device_id"))
        batch_op.drop_index("ix_telemetry_model_version_time")

    op.drop_table("telemetry_samples")
    op.drop_table("telemetry_rollups")
    op.drop_table("enrollment_tokens")
    with op.batch_alter_table("devices", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_devices_region"))
        batch_op.drop_index(batch_op.f("ix_devices_online"))
        batch_op.drop_index(batch_op.f("ix_devices_backend_class"))

    op.drop_table("devices")
    with op.batch_alter_table("device_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_device_events_time"))
        batch_op.drop_index(batch_op.f("ix_device_events_device_id"))

    op.drop_table("device_events")
