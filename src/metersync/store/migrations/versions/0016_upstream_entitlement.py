"""upstream_entitlement: entitlement figures as an upstream source (OpenMeter) answered them

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-14

Per customer and configured feature (hubspot.entitlement_features): the entitlement's kind,
access, balance, usage and overage (decimal text) and the end of its usage period, stamped
when they last changed, for the CRM to read with OpenMeter as the source.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "upstream_entitlement",
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("customer_key", sa.String(length=256), nullable=False),
        sa.Column("feature_key", sa.String(length=64), nullable=False),
        sa.Column("held", sa.Boolean(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=True),
        sa.Column("has_access", sa.Boolean(), nullable=False),
        sa.Column("balance", sa.Text(), nullable=True),
        sa.Column("usage", sa.Text(), nullable=True),
        sa.Column("overage", sa.Text(), nullable=True),
        sa.Column("period_end", sa.DateTime(timezone=True), nullable=True),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint(
            "source", "customer_key", "feature_key", name=op.f("pk_upstream_entitlement")
        ),
    )
    op.create_index(
        "ix_upstream_entitlement_changed",
        "upstream_entitlement",
        ["source", "changed_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_upstream_entitlement_changed", table_name="upstream_entitlement")
    op.drop_table("upstream_entitlement")
