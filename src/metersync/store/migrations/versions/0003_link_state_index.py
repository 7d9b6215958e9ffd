"""link: index on (target, kind, state) for each tick's look-up of unfinished intents

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_link_state", "link", ["target", "kind", "state"])


def downgrade() -> None:
    op.drop_index("ix_link_state", table_name="link")
