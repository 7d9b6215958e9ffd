"""entitlement_usage_hour, entitlement_usage_cursor, entitlement_snapshot: entitlement usage

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

A feature's bound usage per customer and hour, folded from the `usage` change numbers past a
cursor of its own, and snapshots of metered entitlements' balances. Both are caches of what
the usage rows determine: amounts as decimal text, recomputed rather than incremented.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "entitlement_usage_hour",
        sa.Column("feature_id", sa.String(length=26), nullable=False),
        sa.Column("customer_key", sa.String(length=256), nullable=False),
        sa.Column("hour_start", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("value", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["feature_id"], ["feature.id"], name=op.f("fk_entitlement_usage_hour_feature_id")
        ),
        sa.PrimaryKeyConstraint(
            "feature_id", "customer_key", "hour_start", name=op.f("pk_entitlement_usage_hour")
        ),
    )
    op.create_table(
        "entitlement_usage_cursor",
        sa.Column("feature_id", sa.String(length=26), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["feature_id"], ["feature.id"], name=op.f("fk_entitlement_usage_cursor_feature_id")
        ),
        sa.PrimaryKeyConstraint("feature_id", name=op.f("pk_entitlement_usage_cursor")),
    )
    op.create_table(
        "entitlement_snapshot",
        sa.Column("entitlement_id", sa.String(length=26), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("balances", sa.JSON(), nullable=False),
        sa.Column("overage", sa.Text(), nullable=False),
        sa.Column("usage_mark", sa.BigInteger(), nullable=False),
        sa.Column("max_usage_id", sa.BigInteger(), nullable=False),
        sa.Column("subjects_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["entitlement_id"],
            ["entitlement.id"],
            name=op.f("fk_entitlement_snapshot_entitlement_id"),
        ),
        sa.PrimaryKeyConstraint("entitlement_id", "at", name=op.f("pk_entitlement_snapshot")),
    )


def downgrade() -> None:
    op.drop_table("entitlement_snapshot")
    op.drop_table("entitlement_usage_cursor")
    op.drop_table("entitlement_usage_hour")
