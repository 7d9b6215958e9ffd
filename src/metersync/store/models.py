"""The tables. Alembic migrations in `migrations/versions` must produce exactly these
(a test runs autogenerate against a migrated database and expects no difference).

Keys (subject key, customer key) are immutable identities, so the attribution and link tables
refer to records by key: a key survives a tombstone and a resurrection, and usage events name
subjects by key too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
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
        Index("ix_link_updated", "target", "updated_at"),
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
    # The fast path of a full reconcile. synced_seq: the catalog change number of the local
    # record we last pushed (NULL when unknown). synced_fingerprint: a short hash of the
    # record's normalised owned state as pushed, under the target's render version. A link
    # whose customer still has that change number and whose listed record still has that
    # fingerprint is in sync without loading or rendering the customer.
    synced_seq: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))
    synced_fingerprint: str | None = Field(default=None, max_length=64)


class SyncStateRow(SQLModel, table=True):
    """Per target: how far the incremental sync has read the catalog, and when runs happened."""

    __tablename__ = "sync_state"

    target: str = Field(primary_key=True, max_length=32)
    change_cursor: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    last_tick_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    last_full_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    last_success_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    last_summary: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # Targets whose records show other targets' ids or usage (sync/context.py): when the last
    # run that looked at context changes started; the next one looks from there.
    context_since: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))


class LeaseRow(SQLModel, table=True):
    """A lock that expires: who holds `name`, until when. The holder renews it while it works;
    a holder that dies stops renewing, and the lease is free once it expires (or at once, when
    the holder was a process on this host that no longer exists)."""

    __tablename__ = "lease"

    name: str = Field(primary_key=True, max_length=64)
    holder: str = Field(max_length=255)
    host: str = Field(max_length=255)
    pid: int
    acquired_at: datetime = Field(sa_column=_timestamp())
    expires_at: datetime = Field(sa_column=_timestamp())


class WebhookEventRow(SQLModel, table=True):
    """A Stripe webhook event, stored once by its id when its signature checked out, and
    processed in the background (processed_at, outcome)."""

    __tablename__ = "webhook_event"
    __table_args__ = (Index("ix_webhook_event_processed", "processed_at"),)

    id: str = Field(primary_key=True, max_length=255)
    type: str = Field(max_length=128)
    payload: str = Field(sa_column=Column(Text, nullable=False))
    received_at: datetime = Field(sa_column=_timestamp())
    processed_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    outcome: str | None = Field(default=None, sa_column=Column(Text))


# -- usage ---------------------------------------------------------------------------------------

# An integer primary key that is SQLite's rowid there (fast appends) and a bigint on PostgreSQL.
_ROW_ID = BigInteger().with_variant(Integer(), "sqlite")
SOURCE_MAX = 512
EVENT_ID_MAX = 512
EVENT_TYPE_MAX = 256


class EventRow(SQLModel, table=True):
    """A CloudEvent as ingested, once per (source, id)."""

    __tablename__ = "usage_event"
    __table_args__ = (
        UniqueConstraint("source", "event_id", name="uq_usage_event_source_id"),
        Index("ix_usage_event_ingested", "ingested_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(_ROW_ID, primary_key=True))
    source: str = Field(sa_column=Column(String(SOURCE_MAX), nullable=False))
    event_id: str = Field(sa_column=Column(String(EVENT_ID_MAX), nullable=False))
    type: str = Field(sa_column=Column(String(EVENT_TYPE_MAX), nullable=False))
    subject: str = Field(sa_column=Column(String(KEY_MAX), nullable=False))
    # Event time as integer microseconds since the epoch (UTC): windows are integer division
    # on both databases, and LATEST orders by it exactly.
    time_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    data: str | None = Field(default=None, sa_column=Column(Text))  # the `data` as JSON text
    ingested_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())


class UsageRow(SQLModel, table=True):
    """One event's value for one meter, extracted at ingest, so that aggregation is plain SQL on
    both databases. `customer_key` is bound when the usage is first pushed (the subject's
    customer then) and never changes after: pushed usage stays with the customer it went to."""

    __tablename__ = "usage_value"
    __table_args__ = (
        UniqueConstraint("source", "event_id", "meter", name="uq_usage_value_event_meter"),
        # Aggregation reads a customer's rows of a meter by time, and everything it needs is in
        # the index (value, value_text): without them every row read was a lookup of its own in
        # the table, whose rows lie in arrival order, not by customer.
        Index(
            "ix_usage_value_aggregate", "meter", "customer_key", "time_us", "value", "value_text"
        ),
        # Only the rows waiting to be bound, in the order stored: ingest appends to it, binding
        # walks it a slice at a time and removes what it binds (usage/aggregate.bind_usage).
        Index(
            "ix_usage_value_unbound",
            "id",
            "subject",
            sqlite_where=text("customer_key IS NULL"),
            postgresql_where=text("customer_key IS NULL"),
        ),
        # The push reads what changed since its cursor: rows by meter past a sequence number.
        Index("ix_usage_value_meter_seq", "meter", "seq"),
    )

    id: int | None = Field(default=None, sa_column=Column(_ROW_ID, primary_key=True))
    source: str = Field(sa_column=Column(String(SOURCE_MAX), nullable=False))
    event_id: str = Field(sa_column=Column(String(EVENT_ID_MAX), nullable=False))
    meter: str = Field(sa_column=Column(String(64), nullable=False))
    subject: str = Field(sa_column=Column(String(KEY_MAX), nullable=False))
    time_us: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Numeric meters: the number (COUNT: 1). Binary floating point: whole numbers are exact
    # up to 2**53; fractional sums are rounded once, after the meter's scale, when pushed.
    value: float | None = Field(default=None, sa_column=Column(Float(precision=53)))
    # UNIQUE_COUNT: the value as text (numbers and strings alike).
    value_text: str | None = Field(default=None, sa_column=Column(Text))
    # group_by values as JSON text, for `usage show`.
    groups: str | None = Field(default=None, sa_column=Column(Text))
    customer_key: str | None = Field(default=None, sa_column=Column(String(KEY_MAX)))
    # The usage change number (the `usage` counter) of the write that stored or bound the row:
    # the push reads rows past its cursor instead of the whole history (store.usage_cells).
    seq: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default=text("0"))
    )


class UsageCellRow(SQLModel, table=True):
    """A (meter, customer, window) of one target whose value may differ from what its ledger
    holds: changed since the push last looked, or skipped then for a reason that passes (a
    refusal's backoff, a stamp in the future). The push plans these cells and no others.
    window_start is the push's window: a calendar month's start for period-to-date meters."""

    __tablename__ = "usage_cell"

    target: str = Field(primary_key=True, max_length=32)
    meter: str = Field(sa_column=Column(String(64), primary_key=True))
    customer_key: str = Field(sa_column=Column(String(KEY_MAX), primary_key=True))
    window_start: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    # Not before (unix seconds): a refused report's backoff, or a window that has not begun.
    # NULL: due now. Cells waiting cost a tick nothing until then.
    due_at: int | None = Field(default=None, sa_column=Column(BigInteger, nullable=True))


class UsageCursorRow(SQLModel, table=True):
    """How far one target's push has collected a meter's changes (the `usage` counter). No row:
    the meter was never pushed to the target, and its first push plans every cell."""

    __tablename__ = "usage_cursor"

    target: str = Field(primary_key=True, max_length=32)
    meter: str = Field(sa_column=Column(String(64), primary_key=True))
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))
    # The window size and scale the meter is pushed under, so that a tick can refuse a changed
    # configuration without reading the meter's whole ledger (usage.push._check_unchanged).
    window_s: int = Field(sa_column=Column(BigInteger, nullable=False))
    scale: float = Field(sa_column=Column(Float(precision=53), nullable=False))


class LedgerRow(SQLModel, table=True):
    """One usage report to a target's meter: the exactly-once record. Identifier =
    hash(customer, meter, window start, revision); a row is PENDING before its call and
    DELIVERED after, and a PENDING row is only ever re-sent with its own identifier."""

    __tablename__ = "usage_ledger"
    __table_args__ = (
        UniqueConstraint(
            "target",
            "customer_key",
            "meter",
            "window_start",
            "revision",
            name="uq_usage_ledger_report",
        ),
        UniqueConstraint("target", "identifier", name="uq_usage_ledger_identifier"),
        Index("ix_usage_ledger_state", "target", "state"),
        Index("ix_usage_ledger_created", "created_at"),
    )

    id: int | None = Field(default=None, sa_column=Column(_ROW_ID, primary_key=True))
    target: str = Field(max_length=32)
    customer_key: str = Field(sa_column=Column(String(KEY_MAX), nullable=False))
    meter: str = Field(sa_column=Column(String(64), nullable=False))
    # Window start, seconds since the epoch (UTC); for period-to-date meters (MAX, LATEST,
    # UNIQUE_COUNT) the start of the calendar month.
    window_start: int = Field(sa_column=Column(BigInteger, nullable=False))
    window_s: int = Field(sa_column=Column(BigInteger, nullable=False))
    # The meter's stripe.scale when this was reported: totals under another scale would not
    # add up, so a changed scale (or window) is refused rather than billed again.
    scale: float = Field(
        default=1.0, sa_column=Column(Float(precision=53), nullable=False, server_default="1")
    )
    revision: int = Field(default=1)
    # What was sent: a delta (sum meters) or the period-to-date value (last meters), scaled.
    value: int = Field(sa_column=Column(BigInteger, nullable=False))
    # The scaled total this report brings the window to: the base of the next delta.
    total: int = Field(sa_column=Column(BigInteger, nullable=False))
    identifier: str = Field(max_length=100)
    external_customer_id: str = Field(max_length=255)
    event_name: str = Field(max_length=100)
    timestamp: int = Field(sa_column=Column(BigInteger, nullable=False))  # the event's, seconds
    state: str = Field(max_length=16)
    attempts: int = Field(default=0)
    last_error: str | None = Field(default=None, sa_column=Column(Text))
    next_attempt_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())
    delivered_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))


class UsageRetentionRow(SQLModel, table=True):
    """The retention floor of raw usage: usage_event and usage_value hold nothing before
    `floor_s` (the first second of a calendar month, UTC; 0 while nothing was pruned). One row,
    named "usage", written by the migration. `usage prune` raises it before it deletes, and
    ingest reads it in each batch's own transaction, so an event below it is refused, never
    stored into a month being pruned."""

    __tablename__ = "usage_retention"

    name: str = Field(primary_key=True, max_length=32)
    floor_s: int = Field(sa_column=Column(BigInteger, nullable=False))
    changed_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())


class UpstreamCustomerRow(SQLModel, table=True):
    """A customer as an upstream source (OpenMeter) last showed it: its id there (the meter
    query filters by it) and its updatedAt, so that a pull rewrites only what changed."""

    __tablename__ = "upstream_customer"

    source: str = Field(primary_key=True, max_length=32)
    local_key: str = Field(sa_column=Column(String(KEY_MAX), primary_key=True))
    upstream_id: str = Field(max_length=255)
    upstream_updated_at: str | None = Field(default=None, max_length=64)
    deleted: bool = Field(default=False)
    seen_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())


class UpstreamUsageRow(SQLModel, table=True):
    """A meter's value for one subject and window as the upstream source aggregated it, and
    the customer it counts for. Bound like local usage (aggregate.bind_usage): to the
    subject's customer when first pushed, and never moved after, so a subject re-attributed
    upstream does not carry its billed history to the new customer. window_s is the window's
    length (3600, 86400), or 0 for a calendar month to date: period meters are read per
    customer (`subject` is then PER_CUSTOMER and customer_key the customer)."""

    __tablename__ = "upstream_usage"
    __table_args__ = (
        Index("ix_upstream_usage_changed", "source", "changed_at"),
        Index("ix_upstream_usage_customer", "source", "meter", "customer_key", "window_start"),
        Index("ix_upstream_usage_source_meter_seq", "source", "meter", "seq"),
    )

    source: str = Field(primary_key=True, max_length=32)
    meter: str = Field(sa_column=Column(String(64), primary_key=True))
    subject: str = Field(sa_column=Column(String(KEY_MAX), primary_key=True))
    window_s: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    window_start: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    value: float = Field(sa_column=Column(Float(precision=53), nullable=False))
    latest_us: int = Field(sa_column=Column(BigInteger, nullable=False))  # µs
    customer_key: str | None = Field(default=None, sa_column=Column(String(KEY_MAX)))
    changed_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())
    # As usage_value.seq: the `usage` change number of the write that last changed the row.
    seq: int = Field(
        default=0, sa_column=Column(BigInteger, nullable=False, server_default=text("0"))
    )


class UpstreamEntitlementRow(SQLModel, table=True):
    """A customer's entitlement to a configured feature as the upstream source (OpenMeter) last
    answered it: its kind and value (has access, balance, usage, overage) and, for a metered
    one, the end of its current usage period. Amounts are decimal text (the exact figure
    OpenMeter sent, never a float). A pull rewrites a row only when its figures changed and
    stamps `changed_at` then, so a CRM tick finds the customers to render again by index.
    `held` false: the customer had the entitlement and no longer has (kept, so that the change
    is seen and the company's figures cleared)."""

    __tablename__ = "upstream_entitlement"
    __table_args__ = (Index("ix_upstream_entitlement_changed", "source", "changed_at"),)

    source: str = Field(primary_key=True, max_length=32)
    customer_key: str = Field(sa_column=Column(String(KEY_MAX), primary_key=True))
    feature_key: str = Field(sa_column=Column(String(64), primary_key=True))
    held: bool = Field(default=True)
    kind: str | None = Field(default=None, max_length=16)  # metered, boolean, static
    has_access: bool = Field(default=False)
    balance: str | None = Field(default=None, sa_column=Column(Text))
    usage: str | None = Field(default=None, sa_column=Column(Text))
    overage: str | None = Field(default=None, sa_column=Column(Text))
    period_end: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    changed_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())


metadata = SQLModel.metadata


# -- entitlements ---------------------------------------------------------------------------
# Amounts are decimal text: balances are figured in decimal arithmetic, and a float column
# would round a grant of 0.1 before the engine saw it. Both databases store text exactly.

_NOT_ARCHIVED = text("archived_at IS NULL")
_NOT_DELETED = text("deleted_at IS NULL")


class FeatureRow(SQLModel, table=True):
    """Something a customer can be entitled to: metered features name a meter (and may narrow
    it to some group_by values). Archived, never deleted: entitlements keep referring to it."""

    __tablename__ = "feature"
    __table_args__ = (
        # A key names one live feature; an archived feature's key can be taken again.
        Index(
            "ix_feature_key_live",
            "key",
            unique=True,
            sqlite_where=_NOT_ARCHIVED,
            postgresql_where=_NOT_ARCHIVED,
        ),
    )

    id: str = Field(primary_key=True, max_length=ULID_LEN)
    key: str = Field(sa_column=Column(String(64), nullable=False))
    name: str = Field(sa_column=Column(String(NAME_MAX), nullable=False))
    meter_slug: str | None = Field(default=None, sa_column=Column(String(64)))
    # group_by dimension → the one value counted (OpenMeter's meterGroupByFilters).
    group_filters: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False)
    )
    meta: dict[str, str] = Field(
        default_factory=dict, sa_column=Column("metadata", JSON, nullable=False)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())
    archived_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))


class EntitlementRow(SQLModel, table=True):
    """A customer's entitlement to a feature: metered (usage period and grants), boolean, or
    static (a JSON config). Deleted entitlements stay, with deleted_at, so that what was true
    at an earlier time can still be read; only one is live per customer and feature."""

    __tablename__ = "entitlement"
    __table_args__ = (
        Index(
            "ix_entitlement_customer_feature_live",
            "customer_key",
            "feature_id",
            unique=True,
            sqlite_where=_NOT_DELETED,
            postgresql_where=_NOT_DELETED,
        ),
        Index("ix_entitlement_feature_id", "feature_id"),
    )

    id: str = Field(primary_key=True, max_length=ULID_LEN)
    kind: str = Field(max_length=16)  # metered | boolean | static
    # By key, as attribution and links refer to customers: a customer's id changes when a
    # deleted customer is created again, its key never does.
    customer_key: str = Field(
        sa_column=Column(String(KEY_MAX), ForeignKey("customer.key"), nullable=False)
    )
    feature_id: str = Field(
        sa_column=Column(String(ULID_LEN), ForeignKey("feature.id"), nullable=False)
    )
    feature_key: str = Field(sa_column=Column(String(64), nullable=False))
    # Metered: the usage period (an interval as DAY/WEEK/MONTH/YEAR or ISO-8601, and its
    # anchor), where usage counts from, and what a reset does.
    usage_interval: str | None = Field(default=None, sa_column=Column(String(64)))
    usage_anchor: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    measure_usage_from: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    is_soft_limit: bool = Field(default=False, nullable=False)
    preserve_overage_at_reset: bool = Field(default=False, nullable=False)
    # The grant issued with the entitlement (and restored at every reset): decimal text.
    issue_amount: str | None = Field(default=None, sa_column=Column(String(64)))
    issue_priority: int | None = Field(default=None, sa_column=Column(Integer))
    # Static: the JSON config, as given.
    config: str | None = Field(default=None, sa_column=Column(Text))
    meta: dict[str, str] = Field(
        default_factory=dict, sa_column=Column("metadata", JSON, nullable=False)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())
    deleted_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))


class GrantRow(SQLModel, table=True):
    """An amount of a metered entitlement's feature, usable from effective_at until it
    expires or is voided; rolled over at each reset and restored at each recurrence."""

    __tablename__ = "entitlement_grant"
    __table_args__ = (Index("ix_entitlement_grant_entitlement_id", "entitlement_id"),)

    id: str = Field(primary_key=True, max_length=ULID_LEN)
    entitlement_id: str = Field(
        sa_column=Column(String(ULID_LEN), ForeignKey("entitlement.id"), nullable=False)
    )
    amount: str = Field(sa_column=Column(String(64), nullable=False))
    priority: int = Field(sa_column=Column(Integer, nullable=False))
    effective_at: datetime = Field(sa_column=_timestamp())
    # The expiration as given (HOUR, DAY, WEEK, MONTH or YEAR, times count), and its result.
    expiration_duration: str | None = Field(default=None, sa_column=Column(String(8)))
    expiration_count: int | None = Field(default=None, sa_column=Column(Integer))
    expires_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    min_rollover: str = Field(sa_column=Column(String(64), nullable=False))
    max_rollover: str | None = Field(default=None, sa_column=Column(String(64)))
    recurrence_interval: str | None = Field(default=None, sa_column=Column(String(64)))
    recurrence_anchor: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))
    meta: dict[str, str] = Field(
        default_factory=dict, sa_column=Column("metadata", JSON, nullable=False)
    )
    created_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())
    updated_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())
    voided_at: datetime | None = Field(default=None, sa_column=_timestamp(nullable=True))


class EntitlementResetRow(SQLModel, table=True):
    """A manual reset of a metered entitlement's usage at `reset_at`: what it did with the
    overage, and whether the usage period kept its anchor or started anew at the reset."""

    __tablename__ = "entitlement_reset"
    __table_args__ = (
        UniqueConstraint("entitlement_id", "reset_at", name="uq_entitlement_reset_at"),
    )

    id: str = Field(primary_key=True, max_length=ULID_LEN)
    entitlement_id: str = Field(
        sa_column=Column(String(ULID_LEN), ForeignKey("entitlement.id"), nullable=False)
    )
    reset_at: datetime = Field(sa_column=_timestamp())
    preserve_overage: bool = Field(nullable=False)
    retain_anchor: bool = Field(nullable=False)
    created_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())


# -- entitlement usage ---------------------------------------------------------------------
# A metered entitlement burns its customer's usage of a feature, counted as billing counts it
# (entitlements/_usage.py). These tables are caches of figures that the usage rows determine:
# dropping their rows loses nothing but time.


class EntitlementUsageHourRow(SQLModel, table=True):
    """A feature's usage bound to one customer in one hour (UTC): the sum over the hour's
    minutes of each minute's usage, as decimal text. Recomputed from the raw rows whenever a
    row of the cell changes (never incremented), so that a crash or a second refresh is
    harmless. Holds bound usage only; usage not bound yet is read live."""

    __tablename__ = "entitlement_usage_hour"

    feature_id: str = Field(
        sa_column=Column(String(ULID_LEN), ForeignKey("feature.id"), primary_key=True)
    )
    customer_key: str = Field(sa_column=Column(String(KEY_MAX), primary_key=True))
    # Seconds since the epoch, a multiple of 3600.
    hour_start: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    value: str = Field(sa_column=Column(Text, nullable=False))


class EntitlementUsageCursorRow(SQLModel, table=True):
    """How far a feature's hourly usage has folded the `usage` change numbers: every bound row
    numbered at or below `seq` is in its cell. No row (or -1): nothing folded yet."""

    __tablename__ = "entitlement_usage_cursor"

    feature_id: str = Field(
        sa_column=Column(String(ULID_LEN), ForeignKey("feature.id"), primary_key=True)
    )
    seq: int = Field(sa_column=Column(BigInteger, nullable=False))


class EntitlementSnapshotRow(SQLModel, table=True):
    """A metered entitlement's balances at `at`, so that a value computes from there on only.
    A cache: the hourly refresh drops those after a cell it changes, grant and reset writes
    drop an entitlement's all, and a reader checks the rest (store.entitlement_usage)."""

    __tablename__ = "entitlement_snapshot"

    entitlement_id: str = Field(
        sa_column=Column(String(ULID_LEN), ForeignKey("entitlement.id"), primary_key=True)
    )
    at: datetime = Field(sa_column=Column(UTCDateTime(), primary_key=True))
    # grant id → balance, decimal text.
    balances: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    overage: str = Field(sa_column=Column(Text, nullable=False))
    # The feature's usage cursor the balances were computed at.
    usage_mark: int = Field(sa_column=Column(BigInteger, nullable=False))
    # The largest usage_value id when computed: unbound rows above it are news to it.
    max_usage_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    # A hash of the customer's subject keys then: unbound usage follows the subjects.
    subjects_hash: str = Field(sa_column=Column(String(64), nullable=False))
    created_at: datetime = Field(default_factory=utcnow, sa_column=_timestamp())
