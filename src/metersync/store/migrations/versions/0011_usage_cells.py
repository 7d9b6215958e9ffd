"""usage change numbers, usage_cell and usage_cursor: a push reads what changed, not all history

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06

The aggregation index gains value and value_text, so that aggregating a customer's rows reads
the index alone. Rows stored before this revision carry change number 0, and no meter has a cursor yet: the
first push after the upgrade plans every cell once (as every push did before), then only what
changes.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("usage_value", "upstream_usage"):
        with op.batch_alter_table(table) as batch:
            batch.add_column(
                sa.Column("seq", sa.BigInteger(), nullable=False, server_default=sa.text("0"))
            )
    op.create_index("ix_usage_value_meter_seq", "usage_value", ["meter", "seq"])
    op.drop_index("ix_usage_value_meter_customer_time", table_name="usage_value")
    op.create_index(
        "ix_usage_value_aggregate",
        "usage_value",
        ["meter", "customer_key", "time_us", "value", "value_text"],
    )
    op.create_index(
        "ix_upstream_usage_source_meter_seq", "upstream_usage", ["source", "meter", "seq"]
    )
    op.create_table(
        "usage_cell",
        sa.Column("target", sa.String(length=32), nullable=False),
        sa.Column("meter", sa.String(length=64), nullable=False),
        sa.Column("customer_key", sa.String(length=256), nullable=False),
        sa.Column("window_start", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("due_at", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint(
            "target", "meter", "customer_key", "window_start", name=op.f("pk_usage_cell")
        ),
    )
    op.create_table(
        "usage_cursor",
        sa.Column("target", sa.String(length=32), nullable=False),
        sa.Column("meter", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("window_s", sa.BigInteger(), nullable=False),
        sa.Column("scale", sa.Float(precision=53), nullable=False),
        sa.PrimaryKeyConstraint("target", "meter", name=op.f("pk_usage_cursor")),
    )
    sequence = sa.table("catalog_sequence", sa.column("name"), sa.column("value"))
    op.bulk_insert(sequence, [{"name": "usage", "value": 0}])


def downgrade() -> None:
    op.execute("DELETE FROM catalog_sequence WHERE name = 'usage'")
    op.drop_table("usage_cursor")
    op.drop_table("usage_cell")
    op.drop_index("ix_upstream_usage_source_meter_seq", table_name="upstream_usage")
    op.drop_index("ix_usage_value_meter_seq", table_name="usage_value")
    op.drop_index("ix_usage_value_aggregate", table_name="usage_value")
    op.create_index(
        "ix_usage_value_meter_customer_time", "usage_value", ["meter", "customer_key", "time_us"]
    )
    for table in ("upstream_usage", "usage_value"):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("seq")
