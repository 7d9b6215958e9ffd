"""The states a link and a ledger entry pass through.

Plain enums with no database in them: the store keeps them in its columns (as text, so a new
state needs no migration), and the pure planners decide on them without importing the store.
"""

from __future__ import annotations

from enum import StrEnum


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


class LedgerState(StrEnum):
    PENDING = "pending"  # written before the call; re-sent with the same identifier until known
    DELIVERED = "delivered"  # the target took it (or already had it: a duplicate identifier)
    LATE = "late"  # older than the target accepts, held by late_usage = "report"
    FAILED = "failed"  # refused for good (last_error says why); the delta stays unpushed
