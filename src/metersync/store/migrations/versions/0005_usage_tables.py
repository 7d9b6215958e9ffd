"""usage_event, usage_value and usage_ledger: events as ingested, their meter values, and the
ledger of usage reports pushed to targets

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_event",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("source", sa.String(length=512), nullable=False),
        sa.Column("event_id", sa.String(length=512), nullable=False),
        sa.Column("type", sa.String(length=256), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.Text(), nullable=True),
        sa.Column("ingested_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_event")),
        sa.UniqueConstraint("source", "event_id", name="uq_usage_event_source_id"),
    )
    op.create_table(
        "usage_ledger",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("target", sa.String(length=32), nullable=False),
        sa.Column("customer_key", sa.String(length=256), nullable=False),
        sa.Column("meter", sa.String(length=64), nullable=False),
        sa.Column("window_start", sa.BigInteger(), nullable=False),
        sa.Column("window_s", sa.BigInteger(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.Column("identifier", sa.String(length=100), nullable=False),
        sa.Column("external_customer_id", sa.String(length=255), nullable=False),
        sa.Column("event_name", sa.String(length=100), nullable=False),
        sa.Column("timestamp", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_ledger")),
        sa.UniqueConstraint(
            "target",
            "customer_key",
            "meter",
            "window_start",
            "revision",
            name="uq_usage_ledger_report",
        ),
        sa.UniqueConstraint("target", "identifier", name="uq_usage_ledger_identifier"),
    )
    with op.batch_alter_table("usage_ledger", schema=None) as batch_op:
        batch_op.create_index("ix_usage_ledger_state", ["target", "state"], unique=False)

    op.create_table(
        "usage_value",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("source", sa.String(length=512), nullable=False),
        sa.Column("event_id", sa.String(length=512), nullable=False),
        sa.Column("meter", sa.String(length=64), nullable=False),
        sa.Column("subject", sa.String(length=256), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Float(precision=53), nullable=True),
        sa.Column("value_text", sa.Text(), nullable=True),
        sa.Column("groups", sa.Text(), nullable=True),
        sa.Column("customer_key", sa.String(length=256), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_value")),
        sa.UniqueConstraint("source", "event_id", "meter", name="uq_usage_value_event_meter"),
    )
    with op.batch_alter_table("usage_value", schema=None) as batch_op:
        batch_op.create_index(
            "ix_usage_value_meter_customer_time", ["meter", "customer_key", "time_us"], unique=False
        )
        batch_op.create_index("ix_usage_value_unbound", ["customer_key", "subject"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("usage_value", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_value_unbound")
        batch_op.drop_index("ix_usage_value_meter_customer_time")

    op.drop_table("usage_value")
    with op.batch_alter_table("usage_ledger", schema=None) as batch_op:
        batch_op.drop_index("ix_usage_ledger_state")

    op.drop_table("usage_ledger")
    op.drop_table("usage_event")
