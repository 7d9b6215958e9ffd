"""usage_retention: the floor below which raw usage was pruned (`metersync usage prune`)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-21
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    retention = op.create_table(
        "usage_retention",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("floor_s", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_usage_retention")),
    )
    # The row exists from the start: ingest locks it (shared) in every batch, and a prune's
    # exclusive lock on it is what orders the two on PostgreSQL.
    op.bulk_insert(
        retention,
        [{"name": "usage", "floor_s": 0, "changed_at": datetime.now(UTC)}],
    )


def downgrade() -> None:
    op.drop_table("usage_retention")
