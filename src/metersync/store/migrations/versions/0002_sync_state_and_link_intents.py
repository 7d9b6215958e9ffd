"""link: intents and last pushed state, customer-only external uniqueness; sync_state

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_CUSTOMERS_ONLY = sa.text("kind = 'customer'")


def upgrade() -> None:
    with op.batch_alter_table("link") as batch:
        batch.add_column(sa.Column("synced_state", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("intent_state", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("intent_at", sa.DateTime(timezone=True), nullable=True))
        # Subject rows share their customer's external id; only customers must be unique.
        batch.drop_constraint("uq_link_external", type_="unique")
    op.create_index(
        "uq_link_external_customer",
        "link",
        ["target", "kind", "external_id"],
        unique=True,
        postgresql_where=_CUSTOMERS_ONLY,
        sqlite_where=_CUSTOMERS_ONLY,
    )
    op.create_table(
        "sync_state",
        sa.Column("target", sa.String(length=32), nullable=False),
        sa.Column("change_cursor", sa.BigInteger(), nullable=False),
        sa.Column("last_tick_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_full_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_summary", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("target", name=op.f("pk_sync_state")),
    )


def downgrade() -> None:
    op.drop_table("sync_state")
    op.drop_index("uq_link_external_customer", table_name="link")
    with op.batch_alter_table("link") as batch:
        batch.create_unique_constraint("uq_link_external", ["target", "kind", "external_id"])
        batch.drop_column("intent_at")
        batch.drop_column("intent_state")
        batch.drop_column("synced_state")
