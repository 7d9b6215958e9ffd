"""link: synced_seq and synced_fingerprint, for the full reconcile's fast path

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-21
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Existing links get NULLs: their first full reconcile takes the slow path and fills them.
    with op.batch_alter_table("link") as batch:
        batch.add_column(sa.Column("synced_seq", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("synced_fingerprint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("link") as batch:
        batch.drop_column("synced_fingerprint")
        batch.drop_column("synced_seq")
