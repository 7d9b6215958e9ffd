"""usage_value: the unbound-usage index holds only unbound rows, in the order they were stored

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06

Binding walks unbound rows in id order, a bounded slice per statement: the old index on
(customer_key, subject) made every binding statement over a large import scan the table on
PostgreSQL (a slice of subjects is spread over every page of a table stored in arrival order),
and every stored row stayed in it after binding. Partial, on (id, subject): ingest appends to
it, binding removes from it, and a tick reads only what waits.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_UNBOUND = sa.text("customer_key IS NULL")


def upgrade() -> None:
    op.drop_index("ix_usage_value_unbound", table_name="usage_value")
    op.create_index(
        "ix_usage_value_unbound",
        "usage_value",
        ["id", "subject"],
        sqlite_where=_UNBOUND,
        postgresql_where=_UNBOUND,
    )


def downgrade() -> None:
    op.drop_index("ix_usage_value_unbound", table_name="usage_value")
    op.create_index("ix_usage_value_unbound", "usage_value", ["customer_key", "subject"])
