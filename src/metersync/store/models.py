"""The tables. Alembic migrations in `migrations/versions` must produce exactly these
(a test runs autogenerate against a migrated database and expects no difference).

Keys (subject key, customer key) are immutable identities, so the attribution and link tables
refer to records by key: a key survives a tombstone and a resurrection, and usage events name
subjects by key too.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    ForeignKey,
    Index,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from metersync.clock import utcnow
from metersync.store.types import UTCDateTime

# Deterministic constraint names, identical on SQLite and PostgreSQL, so migrations can name
# what they alter and autogenerate compares like with like.
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s",
    "pk": "pk_%(table_name)s",
}

KEY_MAX = 256
NAME_MAX = 256
DESCRIPTION_MAX = 1024
ULID_LEN = 26


def _timestamp(*, nullable: bool = False, index: bool = False) -> Column[datetime]:
    return Column(UTCDateTime(), nullable=nullable, index=index)


class SubjectRow(SQLModel, table=True):
    __tablename__ = "subject"

    id: str = Field(primary_key=True, max_length=ULID_LEN)
    key: str = Field(sa_column=Column(String(KEY_MAX), nullable=False, unique=True))
    display_name: str | None = Field(default=None, sa_column=Column(String(NAME_MAX)))
    # `metadata` is taken by SQLAlchemy's declarative base, hence `meta` in Python.
    meta: dict[str, str] = Field(
        default_factory=dict, sa_column=Column("metadata", JSON, nullable=False)
    )
    # Bumped from catalog_sequence on every change, attribution included: "what changed since N"
    # is one range scan on this index.
    change_seq: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())
    # A tombstone: the row stays so targets can see the delete, and usage keeps its subject.
    deleted_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))


class CustomerRow(SQLModel, table=True):
    __tablename__ = "customer"

    id: str = Field(primary_key=True, max_length=ULID_LEN)
    key: str = Field(sa_column=Column(String(KEY_MAX), nullable=False, unique=True))
    name: str = Field(sa_column=Column(String(NAME_MAX), nullable=False))
    description: str | None = Field(default=None, sa_column=Column(String(DESCRIPTION_MAX)))
    primary_email: str | None = Field(default=None, sa_column=Column(String(512)))
    currency: str | None = Field(default=None, sa_column=Column(String(3)))
    address_country: str | None = Field(default=None, sa_column=Column(String(2)))
    address_postal_code: str | None = Field(default=None, sa_column=Column(String(NAME_MAX)))
    address_state: str | None = Field(default=None, sa_column=Column(String(NAME_MAX)))
    address_city: str | None = Field(default=None, sa_column=Column(String(NAME_MAX)))
    address_line1: str | None = Field(default=None, sa_column=Column(String(NAME_MAX)))
    address_line2: str | None = Field(default=None, sa_column=Column(String(NAME_MAX)))
    address_phone_number: str | None = Field(default=None, sa_column=Column(String(64)))
    meta: dict[str, str] = Field(
        default_factory=dict, sa_column=Column("metadata", JSON, nullable=False)
    )
    # Created by the auto-customer rule for a lone subject and never edited by a person since:
    # such a placeholder gives its subject up to a customer that claims it (see catalog rules).
    auto_created: bool = Field(default=False, nullable=False)
    change_seq: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())
    deleted_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))


class AttributionRow(SQLModel, table=True):
    """Which customer a subject's usage belongs to. The primary key on subject_key is the rule
    "a subject belongs to at most one customer at a time", enforced by the database itself."""

    __tablename__ = "attribution"

    subject_key: str = Field(
        sa_column=Column(
            String(KEY_MAX),
            ForeignKey("subject.key"),
            primary_key=True,
        )
    )
    customer_key: str = Field(
        sa_column=Column(
            String(KEY_MAX),
            ForeignKey("customer.key"),
            nullable=False,
            index=True,
        )
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())


class CatalogSequenceRow(SQLModel, table=True):
    """A single counter row, incremented at the start of every catalog write.

    Not a database SEQUENCE: a sequence hands out numbers at call time, so a transaction that
    drew 41 can commit after one that drew 42, and a reader that saw 42 would skip 41 forever.
    Incrementing a row takes its lock until commit, so change numbers become visible in order.
    """

    __tablename__ = "catalog_sequence"

    name: str = Field(primary_key=True, max_length=32)
    value: int = Field(sa_column=Column(BigInteger, nullable=False))


class LinkKind(StrEnum):
    CUSTOMER = "customer"
    SUBJECT = "subject"


class LinkState(StrEnum):
    """Where the external record stands. Stored as text, so new states need no migration."""

    PENDING = "pending"  # known locally; nothing exists (or is routed) in the target yet
    CREATING = "creating"  # intent written before the create call; outcome not yet known
    SYNCED = "synced"  # external record matches synced_hash
    UPDATING = "updating"  # update intent written; outcome not yet known
    DELETING = "deleting"  # delete intent written; outcome not yet known
    DELETED = "deleted"  # we deleted the external record
    ARCHIVED = "archived"  # marked archived in the target, record kept
    RELEASED = "released"  # local record deleted under the `keep` policy: no longer managed
    MISSING = "missing"  # the external record vanished out of band


class LinkRow(SQLModel, table=True):
    """The mapping table: one row per (target, kind, local key) → external id."""

    __tablename__ = "link"
    __table_args__ = (
        UniqueConstraint("target", "kind", "local_key", name="uq_link_local"),
        # One external customer per local customer. Only for customers: subject rows record
        # the external customer their usage goes to, which many subjects share. NULL external
        # ids (a create in flight) do not collide on either database.
        Index(
            "uq_link_external_customer",
            "target",
            "kind",
            "external_id",
            unique=True,
            postgresql_where=text("kind = 'customer'"),
            sqlite_where=text("kind = 'customer'"),
        ),
        Index("ix_link_due", "target", "next_attempt_at"),
        # Every tick asks for unfinished intents by state: one index range, not a table scan.
        Index("ix_link_state", "target", "kind", "state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    target: str = Field(max_length=32)
    kind: str = Field(max_length=16)
    local_key: str = Field(sa_column=Column(String(KEY_MAX), nullable=False))
    external_id: str | None = Field(default=None, max_length=255)
    state: str = Field(max_length=16)
    # Hash of what we last pushed: a change is "needed" when the desired hash differs.
    synced_hash: str | None = Field(default=None, max_length=128)
    # The metadata keys we wrote, so we can unset exactly those and leave others' keys alone.
    owned_metadata_keys: list[str] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    # Bumped when the external record is recreated; part of every idempotency key.
    generation: int = Field(default=1)
    idempotency_key: str | None = Field(default=None, max_length=255)
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    attempts: int = Field(default=0)
    next_attempt_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    # What we last pushed (target-shaped fields and owned metadata): the base for field-level
    # diffs without listing the target, and for unsetting metadata keys we no longer want.
    synced_state: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # The exact payload of a write in flight (with idempotency_key): a retry after a crash
    # re-sends these very parameters, because the same key with other parameters is an error.
    intent_state: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    intent_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    synced_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())


class SyncStateRow(SQLModel, table=True):
    """Per target: how far the incremental sync has read the catalog, and when runs happened."""

    __tablename__ = "sync_state"

    target: str = Field(primary_key=True, max_length=32)
    change_cursor: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    last_tick_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    last_full_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    last_success_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    last_summary: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


metadata = SQLModel.metadata
