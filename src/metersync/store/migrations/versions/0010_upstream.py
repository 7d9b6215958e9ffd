"""upstream_customer and upstream_usage: what an upstream source (OpenMeter) last showed

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "upstream_customer",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("local_key", sa.String(length=256), nullable=False),
        sa.Column("upstream_id", sa.String(length=255), nullable=False),
        sa.Column("upstream_updated_at", sa.String(length=64), nullable=True),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("source", "local_key", name=op.f("pk_upstream_customer")),
    )
    op.create_table(
        "upstream_usage",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("meter", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("window_s", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("window_start", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("value", sa.Float(precision=53), nullable=False),
        sa.Column("latest_us", sa.BigInteger(), nullable=False),
        sa.Column("customer_key", sa.String(length=256), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "source",
            "meter",
            "subject",
            "window_s",
            "window_start",
            name=op.f("pk_upstream_usage"),
        ),
    )
    with op.batch_alter_table("upstream_usage") as batch:
        batch.create_index("ix_upstream_usage_changed", ["source", "changed_at"], unique=False)
        batch.create_index(
            "ix_upstream_usage_customer",
            ["source", "meter", "customer_key", "window_start"],
            unique=False,
        )


def downgrade() -> None:
    with op.batch_alter_table("upstream_usage") as batch:
        batch.drop_index("ix_upstream_usage_customer")
        batch.drop_index("ix_upstream_usage_changed")
    op.drop_table("upstream_usage")
    op.drop_table("upstream_customer")
