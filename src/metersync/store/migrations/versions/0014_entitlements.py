"""feature, entitlement, entitlement_grant and entitlement_reset: customer-based entitlements

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06

Amounts are decimal text, so that balances are figured exactly. A feature is archived, an
entitlement deleted, a grant voided, never removed: a value at an earlier time still reads
them. Partial unique indexes keep one live feature per key and one live entitlement per
customer and feature.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NOT_ARCHIVED = sa.text("archived_at IS NULL")
_NOT_DELETED = sa.text("deleted_at IS NULL")


def _stamp(name: str, *, nullable: bool = False) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "feature",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("meter_slug", sa.String(length=64), nullable=True),
        sa.Column("group_filters", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        _stamp("created_at"),
        _stamp("updated_at"),
        _stamp("archived_at", nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feature")),
    )
    op.create_index(
        "ix_feature_key_live",
        "feature",
        ["key"],
        unique=True,
        sqlite_where=_NOT_ARCHIVED,
        postgresql_where=_NOT_ARCHIVED,
    )
    op.create_table(
        "entitlement",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("customer_key", sa.String(length=256), nullable=False),
        sa.Column("feature_id", sa.String(length=26), nullable=False),
        sa.Column("feature_key", sa.String(length=64), nullable=False),
        sa.Column("usage_interval", sa.String(length=64), nullable=True),
        _stamp("usage_anchor", nullable=True),
        _stamp("measure_usage_from", nullable=True),
        sa.Column("is_soft_limit", sa.Boolean(), nullable=False),
        sa.Column("preserve_overage_at_reset", sa.Boolean(), nullable=False),
        sa.Column("issue_amount", sa.String(length=64), nullable=True),
        sa.Column("issue_priority", sa.Integer(), nullable=True),
        sa.Column("config", sa.Text(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        _stamp("created_at"),
        _stamp("updated_at"),
        _stamp("deleted_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["customer_key"], ["customer.key"], name=op.f("fk_entitlement_customer_key")
        ),
        sa.ForeignKeyConstraint(
            ["feature_id"], ["feature.id"], name=op.f("fk_entitlement_feature_id")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entitlement")),
    )
    op.create_index(
        "ix_entitlement_customer_feature_live",
        "entitlement",
        ["customer_key", "feature_id"],
        unique=True,
        sqlite_where=_NOT_DELETED,
        postgresql_where=_NOT_DELETED,
    )
    op.create_index("ix_entitlement_feature_id", "entitlement", ["feature_id"])
    op.create_table(
        "entitlement_grant",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("entitlement_id", sa.String(length=26), nullable=False),
        sa.Column("amount", sa.String(length=64), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        _stamp("effective_at"),
        sa.Column("expiration_duration", sa.String(length=8), nullable=True),
        sa.Column("expiration_count", sa.Integer(), nullable=True),
        _stamp("expires_at", nullable=True),
        sa.Column("min_rollover", sa.String(length=64), nullable=False),
        sa.Column("max_rollover", sa.String(length=64), nullable=True),
        sa.Column("recurrence_interval", sa.String(length=64), nullable=True),
        _stamp("recurrence_anchor", nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        _stamp("created_at"),
        _stamp("updated_at"),
        _stamp("voided_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["entitlement_id"],
            ["entitlement.id"],
            name=op.f("fk_entitlement_grant_entitlement_id"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entitlement_grant")),
    )
    op.create_index("ix_entitlement_grant_entitlement_id", "entitlement_grant", ["entitlement_id"])
    op.create_table(
        "entitlement_reset",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("entitlement_id", sa.String(length=26), nullable=False),
        _stamp("reset_at"),
        sa.Column("preserve_overage", sa.Boolean(), nullable=False),
        sa.Column("retain_anchor", sa.Boolean(), nullable=False),
        _stamp("created_at"),
        sa.ForeignKeyConstraint(
            ["entitlement_id"],
            ["entitlement.id"],
            name=op.f("fk_entitlement_reset_entitlement_id"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_entitlement_reset")),
        sa.UniqueConstraint("entitlement_id", "reset_at", name="uq_entitlement_reset_at"),
    )


def downgrade() -> None:
    op.drop_table("entitlement_reset")
    op.drop_index("ix_entitlement_grant_entitlement_id", table_name="entitlement_grant")
    op.drop_table("entitlement_grant")
    op.drop_index("ix_entitlement_feature_id", table_name="entitlement")
    op.drop_index("ix_entitlement_customer_feature_live", table_name="entitlement")
    op.drop_table("entitlement")
    op.drop_index("ix_feature_key_live", table_name="feature")
    op.drop_table("feature")
