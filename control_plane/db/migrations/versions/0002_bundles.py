"""Model bundles.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create bundles."""
    op.create_table(
        "bundles",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("signer_keyid", sa.String(100), nullable=False),
        sa.Column("manifest", sa.JSON(), nullable=False),
        sa.Column("uploaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("uploaded_by", sa.String(200), nullable=False),
        sa.UniqueConstraint("name", "version", name="uq_bundles_name_version"),
    )
    op.create_index("ix_bundles_name", "bundles", ["name"])


def downgrade() -> None:
    """Drop bundles."""
    op.drop_index("ix_bundles_name", table_name="bundles")
    op.drop_table("bundles")
