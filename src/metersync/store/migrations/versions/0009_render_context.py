"""sync_state.context_since and the indexes that find customers whose render context changed

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sync_state") as batch:
        batch.add_column(sa.Column("context_since", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("link") as batch:
        batch.create_index("ix_link_updated", ["target", "updated_at"], unique=False)
    with op.batch_alter_table("usage_event") as batch:
        batch.create_index("ix_usage_event_ingested", ["ingested_at"], unique=False)
    with op.batch_alter_table("usage_ledger") as batch:
        batch.create_index("ix_usage_ledger_created", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("usage_ledger") as batch:
        batch.drop_index("ix_usage_ledger_created")
    with op.batch_alter_table("usage_event") as batch:
        batch.drop_index("ix_usage_event_ingested")
    with op.batch_alter_table("link") as batch:
        batch.drop_index("ix_link_updated")
    with op.batch_alter_table("sync_state") as batch:
        batch.drop_column("context_since")
