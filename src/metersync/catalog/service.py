"""The catalog rules: subjects, customers, and which customer each subject's usage belongs to.

Rules (from OpenMeter's and Konnect's subject and customer documents):
- A subject key is its identity: 1–256 characters, never changed. An upsert changes only the
  fields it gives. Deleting a subject leaves a tombstone, detaches it from its customer and
  keeps its usage (usage refers to subjects by key).
- A subject that comes into being without a customer gets one of the same key and name
  (`catalog.auto_customer`). If a customer with that key already exists, the subject joins it.
  Such an auto-created customer is a placeholder: until a person edits it, it gives its subject up
  to any customer that claims it, and is itself deleted once empty if no target has seen it.
- A subject belongs to at most one customer. Claiming a subject that belongs to another customer
  (other than a placeholder) is a Conflict naming both, and nothing is written.
- Deleting a customer leaves a tombstone (targets still have to delete their copy) and detaches
  its subjects, which stay live with no customer.
- Every write bumps `change_seq` on each row it changes, and only on those: writing the same data
  twice changes nothing and wakes no sync.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from sqlmodel import select

from metersync.catalog._columns import replacing
from metersync.catalog._listing import read_customers, read_high_water, read_subjects
from metersync.catalog._writes import Write
from metersync.catalog.schemas import (
    CustomerCreate,
    CustomerUpdate,
    SubjectUpsert,
    parse,
    parse_key,
)
from metersync.catalog.views import ChangeSet, Customer, Outcome, Subject, WriteResult
from metersync.errors import Conflict, NotFound
from metersync.store import CustomerRow, Store


class Catalog:
    """The Python API for subjects and customers; the CLI and the HTTP API call only this."""

    def __init__(self, store: Store, *, auto_customer: bool = True) -> None:
        self.store = store
        self.auto_customer = auto_customer

    def close(self) -> None:
        self.store.dispose()

    # -- subjects --------------------------------------------------------------------------------

    def upsert_subject(
        self, data: SubjectUpsert | Mapping[str, Any], *, auto_customer: bool | None = None
    ) -> WriteResult[Subject]:
        """Create a subject or change the fields given. `auto_customer` overrides the catalog's
        setting for this call (the importer turns it off where the file itself says which
        subjects a customer has)."""
        upsert = data if isinstance(data, SubjectUpsert) else parse(SubjectUpsert, data)
        give_customer = self.auto_customer if auto_customer is None else auto_customer
        with self.store.session() as session:
            tx = Write(session, self.store.next_change_seq(session))
            outcome = tx.upsert_subject(upsert, auto_customer=give_customer)
            return WriteResult(outcome, tx.subject_view(upsert.key), tuple(tx.notes))

    def create_subjects(self, keys: Iterable[str]) -> list[str]:
        """Create the subjects among `keys` the catalog has never had (tombstones are left
        deleted), each by the same rules as upsert_subject, in one transaction: what event
        ingest needs for the unknown subjects of a batch. Returns the keys created."""
        wanted = [parse_key(k) for k in sorted(set(keys))]
        created: list[str] = []
        with self.store.session() as session:
            tx = Write(session, self.store.next_change_seq(session))
            for key in wanted:
                if tx.subject_row(key) is None:
                    tx.upsert_subject(SubjectUpsert(key=key), auto_customer=self.auto_customer)
                    created.append(key)
        return created

    def delete_subject(self, key: str) -> WriteResult[Subject]:
        key = parse_key(key)
        with self.store.session() as session:
            tx = Write(session, self.store.next_change_seq(session))
            row = tx.subject_row(key)
            if row is None:
                raise NotFound(f"subject {key!r} does not exist")
            if row.deleted_at is not None:
                return WriteResult(Outcome.ALREADY_DELETED, tx.subject_view(key))
            tx.delete_subject(row)
            return WriteResult(Outcome.DELETED, tx.subject_view(key), tuple(tx.notes))

    def get_subject(self, key: str, *, include_deleted: bool = False) -> Subject:
        key = parse_key(key)
        with self.store.read_session() as session:
            found = read_subjects(session, keys=[key], include_deleted=True)
        if not found:
            raise NotFound(f"subject {key!r} does not exist")
        if found[0].is_deleted and not include_deleted:
            raise _deleted("subject", found[0])
        return found[0]

    def list_subjects(self, *, include_deleted: bool = False) -> list[Subject]:
        with self.store.read_session() as session:
            return read_subjects(session, include_deleted=include_deleted)

    # -- customers -------------------------------------------------------------------------------

    def create_customer(self, data: CustomerCreate | Mapping[str, Any]) -> WriteResult[Customer]:
        """Create a customer; an existing live customer with the same key is a Conflict."""
        create = data if isinstance(data, CustomerCreate) else parse(CustomerCreate, data)
        with self.store.session() as session:
            tx = Write(session, self.store.next_change_seq(session))
            existing = tx.customer_row(create.customer_key)
            if existing is not None and existing.deleted_at is None:
                if not existing.auto_created:
                    raise Conflict(f"customer {create.customer_key!r} already exists")
                # The placeholder of a lone subject becomes the customer a person now describes:
                # same record, so a target that already has it updates it instead of duplicating.
                tx.update_customer(existing, replacing(create))
                tx.make_real(existing)
                tx.notes.append(
                    f"customer {create.customer_key!r} takes over the customer auto-created "
                    "for its subject"
                )
            else:
                tx.create_customer(create, reuse=existing)
            return WriteResult(
                Outcome.CREATED, tx.customer_view(create.customer_key), tuple(tx.notes)
            )

    def put_customer(self, data: CustomerCreate | Mapping[str, Any]) -> WriteResult[Customer]:
        """Create the customer, or replace every field of the existing one (import, HTTP PUT).

        Fields the record leaves out are cleared; writing the same record again is a no-op.
        """
        create = data if isinstance(data, CustomerCreate) else parse(CustomerCreate, data)
        with self.store.session() as session:
            tx = Write(session, self.store.next_change_seq(session))
            existing = tx.customer_row(create.customer_key)
            if existing is None or existing.deleted_at is not None:
                tx.create_customer(create, reuse=existing)
                outcome = Outcome.CREATED
            else:
                changed = tx.update_customer(existing, replacing(create))
                outcome = Outcome.UPDATED if changed else Outcome.UNCHANGED
            return WriteResult(outcome, tx.customer_view(create.customer_key), tuple(tx.notes))

    def update_customer(
        self, key: str, data: CustomerUpdate | Mapping[str, Any]
    ) -> WriteResult[Customer]:
        """Replace the fields given, keep the rest."""
        key = parse_key(key)
        update = data if isinstance(data, CustomerUpdate) else parse(CustomerUpdate, data)
        if update.key is not None and update.key != key:
            raise Conflict(
                f"customer key {key!r} cannot be changed to {update.key!r}: keys are "
                "immutable (create a new customer and move the subjects instead)"
            )
        with self.store.session() as session:
            tx = Write(session, self.store.next_change_seq(session))
            row = tx.customer_row(key)
            if row is None or row.deleted_at is not None:
                raise NotFound(f"customer {key!r} does not exist")
            changed = tx.update_customer(row, update)
            outcome = Outcome.UPDATED if changed else Outcome.UNCHANGED
            return WriteResult(outcome, tx.customer_view(key), tuple(tx.notes))

    def delete_customer(self, key: str) -> WriteResult[Customer]:
        key = parse_key(key)
        with self.store.session() as session:
            tx = Write(session, self.store.next_change_seq(session))
            row = tx.customer_row(key)
            if row is None:
                raise NotFound(f"customer {key!r} does not exist")
            if row.deleted_at is not None:
                return WriteResult(Outcome.ALREADY_DELETED, tx.customer_view(key))
            tx.delete_customer(row)
            return WriteResult(Outcome.DELETED, tx.customer_view(key), tuple(tx.notes))

    def get_customer(self, key: str, *, include_deleted: bool = False) -> Customer:
        key = parse_key(key)
        with self.store.read_session() as session:
            found = read_customers(session, keys=[key], include_deleted=True)
        if not found:
            raise NotFound(f"customer {key!r} does not exist")
        if found[0].is_deleted and not include_deleted:
            raise _deleted("customer", found[0])
        return found[0]

    def list_customers(self, *, include_deleted: bool = False) -> list[Customer]:
        with self.store.read_session() as session:
            return read_customers(session, include_deleted=include_deleted)

    def high_water(self) -> int:
        """The latest change number: what an up-to-date reader's cursor would be."""
        with self.store.read_session() as session:
            return read_high_water(session)

    def customer_keys(self) -> list[str]:
        """Every customer key, tombstones included: one narrow read, nothing else loaded."""
        with self.store.read_session() as session:
            return list(session.exec(select(CustomerRow.key)))

    def customers_by_keys(self, keys: Iterable[str]) -> list[Customer]:
        """Customers (tombstones included) for the given keys, read in one snapshot."""
        wanted = sorted(set(keys))
        found: list[Customer] = []
        with self.store.read_session() as session:
            for start in range(0, len(wanted), 500):
                found += read_customers(
                    session, keys=wanted[start : start + 500], include_deleted=True
                )
        return found

    # -- change feed -----------------------------------------------------------------------------

    def changes_since(self, change_seq: int, *, include_subjects: bool = True) -> ChangeSet:
        """Subjects and customers changed after `change_seq`, tombstones included.

        Read in one snapshot, and `high_water` is the counter as that snapshot sees it: every
        change not yet visible will carry a larger number, so "since high_water" misses nothing.
        """
        with self.store.read_session() as session:
            high_water = read_high_water(session)
            subjects = (
                read_subjects(session, since=change_seq, include_deleted=True)
                if include_subjects
                else []
            )
            customers = read_customers(session, since=change_seq, include_deleted=True)
        return ChangeSet(subjects=subjects, customers=customers, high_water=high_water)


def _deleted(kind: str, record: Subject | Customer) -> NotFound:
    assert record.deleted_at is not None
    when = record.deleted_at.isoformat(timespec="seconds")
    return NotFound(f"{kind} {record.key!r} was deleted at {when}", tombstone=True)
