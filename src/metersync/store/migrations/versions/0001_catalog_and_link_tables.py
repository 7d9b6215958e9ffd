"""catalog (subject, customer, attribution), change sequence, link table

Revision ID: 0001
Revises:
Create Date: 2026-11-21

Migrations use plain SQLAlchemy types, never metersync's own classes, so that a migration keeps
meaning what it meant when it was written.
"""

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _timestamps(*, deleted: bool) -> list[sa.Column[datetime]]:
    columns: list[sa.Column[datetime]] = [
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    ]
    if deleted:
        columns.append(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))
    return columns


def upgrade() -> None:
    sequence = op.create_table(
        "catalog_sequence",
        sa.Column("name", sa.String(length=32), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_catalog_sequence")),
    )
    op.bulk_insert(sequence, [{"name": "catalog", "value": 0}])

    op.create_table(
        "subject",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        *_timestamps(deleted=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subject")),
        sa.UniqueConstraint("key", name=op.f("uq_subject_key")),
    )
    op.create_index(op.f("ix_subject_change_seq"), "subject", ["change_seq"])

    op.create_table(
        "customer",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("key", sa.String(length=256), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("description", sa.String(length=1024), nullable=True),
        sa.Column("primary_email", sa.String(length=512), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("address_country", sa.String(length=2), nullable=True),
        sa.Column("address_postal_code", sa.String(length=256), nullable=True),
        sa.Column("address_state", sa.String(length=256), nullable=True),
        sa.Column("address_city", sa.String(length=256), nullable=True),
        sa.Column("address_line1", sa.String(length=256), nullable=True),
        sa.Column("address_line2", sa.String(length=256), nullable=True),
        sa.Column("address_phone_number", sa.String(length=64), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("auto_created", sa.Boolean(), nullable=False),
        sa.Column("change_seq", sa.BigInteger(), nullable=False),
        *_timestamps(deleted=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_customer")),
        sa.UniqueConstraint("key", name=op.f("uq_customer_key")),
    )
    op.create_index(op.f("ix_customer_change_seq"), "customer", ["change_seq"])

    op.create_table(
        "attribution",
        sa.Column("subject_key", sa.String(length=256), nullable=False),
        sa.Column("customer_key", sa.String(length=256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["customer_key"], ["customer.key"], name=op.f("fk_attribution_customer_key")
        ),
        sa.ForeignKeyConstraint(
            ["subject_key"], ["subject.key"], name=op.f("fk_attribution_subject_key")
        ),
        sa.PrimaryKeyConstraint("subject_key", name=op.f("pk_attribution")),
    )
    op.create_index(op.f("ix_attribution_customer_key"), "attribution", ["customer_key"])

    op.create_table(
        "link",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("target", sa.String(length=32), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("local_key", sa.String(length=256), nullable=False),
        sa.Column("external_id", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("synced_hash", sa.String(length=128), nullable=True),
        sa.Column("owned_metadata_keys", sa.JSON(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=True),
        *_timestamps(deleted=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_link")),
        sa.UniqueConstraint("target", "kind", "local_key", name="uq_link_local"),
        sa.UniqueConstraint("target", "kind", "external_id", name="uq_link_external"),
    )
    op.create_index("ix_link_due", "link", ["target", "next_attempt_at"])


def downgrade() -> None:
    op.drop_table("link")
    op.drop_table("attribution")
    op.drop_table("customer")
    op.drop_table("subject")
    op.drop_table("catalog_sequence")
