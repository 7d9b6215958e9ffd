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

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlmodel import Session, col, select
from ulid import ULID

from metersync.catalog.schemas import (
    CustomerCreate,
    CustomerUpdate,
    SubjectUpsert,
    parse,
    parse_key,
)
from metersync.catalog.views import ChangeSet, Customer, Outcome, Subject, WriteResult
from metersync.clock import utcnow
from metersync.errors import Conflict, NotFound
from metersync.store import (
    AttributionRow,
    CatalogSequenceRow,
    CustomerRow,
    LinkKind,
    LinkRow,
    LinkState,
    Store,
    SubjectRow,
    UsageRow,
)
from metersync.store.engine import CATALOG_SEQUENCE

_CUSTOMER_FIELDS = (
    "id",
    "key",
    "name",
    "description",
    "primary_email",
    "currency",
    "address_country",
    "address_postal_code",
    "address_state",
    "address_city",
    "address_line1",
    "address_line2",
    "address_phone_number",
    "meta",
    "auto_created",
    "change_seq",
    "created_at",
    "updated_at",
    "deleted_at",
)

# Customer columns set from a CustomerCreate / CustomerUpdate, by the input field they come from.
_ADDRESS_COLUMNS = {
    "country": "address_country",
    "postal_code": "address_postal_code",
    "state": "address_state",
    "city": "address_city",
    "line1": "address_line1",
    "line2": "address_line2",
    "phone_number": "address_phone_number",
}
_SCALAR_COLUMNS = {
    "name": "name",
    "description": "description",
    "primary_email": "primary_email",
    "currency": "currency",
    "metadata": "meta",
}


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
            tx = _Write(session, self.store.next_change_seq(session))
            outcome = tx.upsert_subject(upsert, auto_customer=give_customer)
            return WriteResult(outcome, tx.subject_view(upsert.key), tuple(tx.notes))

    def create_subjects(self, keys: Iterable[str]) -> list[str]:
        """Create the subjects among `keys` the catalog has never had (tombstones are left
        deleted), each by the same rules as upsert_subject, in one transaction: what event
        ingest needs for the unknown subjects of a batch. Returns the keys created."""
        wanted = [parse_key(k) for k in sorted(set(keys))]
        created: list[str] = []
        with self.store.session() as session:
            tx = _Write(session, self.store.next_change_seq(session))
            for key in wanted:
                if tx.subject_row(key) is None:
                    tx.upsert_subject(SubjectUpsert(key=key), auto_customer=self.auto_customer)
                    created.append(key)
        return created

    def delete_subject(self, key: str) -> WriteResult[Subject]:
        key = parse_key(key)
        with self.store.session() as session:
            tx = _Write(session, self.store.next_change_seq(session))
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
            found = _subjects(session, keys=[key], include_deleted=True)
        if not found:
            raise NotFound(f"subject {key!r} does not exist")
        if found[0].is_deleted and not include_deleted:
            raise _deleted("subject", found[0])
        return found[0]

    def list_subjects(self, *, include_deleted: bool = False) -> list[Subject]:
        with self.store.read_session() as session:
            return _subjects(session, include_deleted=include_deleted)

    # -- customers -------------------------------------------------------------------------------

    def create_customer(self, data: CustomerCreate | Mapping[str, Any]) -> WriteResult[Customer]:
        """Create a customer; an existing live customer with the same key is a Conflict."""
        create = data if isinstance(data, CustomerCreate) else parse(CustomerCreate, data)
        with self.store.session() as session:
            tx = _Write(session, self.store.next_change_seq(session))
            existing = tx.customer_row(create.customer_key)
            if existing is not None and existing.deleted_at is None:
                if not existing.auto_created:
                    raise Conflict(f"customer {create.customer_key!r} already exists")
                # The placeholder of a lone subject becomes the customer a person now describes:
                # same record, so a target that already has it updates it instead of duplicating.
                tx.update_customer(existing, _replacing(create))
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
            tx = _Write(session, self.store.next_change_seq(session))
            existing = tx.customer_row(create.customer_key)
            if existing is None or existing.deleted_at is not None:
                tx.create_customer(create, reuse=existing)
                outcome = Outcome.CREATED
            else:
                changed = tx.update_customer(existing, _replacing(create))
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
            tx = _Write(session, self.store.next_change_seq(session))
            row = tx.customer_row(key)
            if row is None or row.deleted_at is not None:
                raise NotFound(f"customer {key!r} does not exist")
            changed = tx.update_customer(row, update)
            outcome = Outcome.UPDATED if changed else Outcome.UNCHANGED
            return WriteResult(outcome, tx.customer_view(key), tuple(tx.notes))

    def delete_customer(self, key: str) -> WriteResult[Customer]:
        key = parse_key(key)
        with self.store.session() as session:
            tx = _Write(session, self.store.next_change_seq(session))
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
            found = _customers(session, keys=[key], include_deleted=True)
        if not found:
            raise NotFound(f"customer {key!r} does not exist")
        if found[0].is_deleted and not include_deleted:
            raise _deleted("customer", found[0])
        return found[0]

    def list_customers(self, *, include_deleted: bool = False) -> list[Customer]:
        with self.store.read_session() as session:
            return _customers(session, include_deleted=include_deleted)

    def high_water(self) -> int:
        """The latest change number: what an up-to-date reader's cursor would be."""
        with self.store.read_session() as session:
            return _high_water(session)

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
                found += _customers(session, keys=wanted[start : start + 500], include_deleted=True)
        return found

    # -- change feed -----------------------------------------------------------------------------

    def changes_since(self, change_seq: int, *, include_subjects: bool = True) -> ChangeSet:
        """Subjects and customers changed after `change_seq`, tombstones included.

        Read in one snapshot, and `high_water` is the counter as that snapshot sees it: every
        change not yet visible will carry a larger number, so "since high_water" misses nothing.
        """
        with self.store.read_session() as session:
            high_water = _high_water(session)
            subjects = (
                _subjects(session, since=change_seq, include_deleted=True)
                if include_subjects
                else []
            )
            customers = _customers(session, since=change_seq, include_deleted=True)
        return ChangeSet(subjects=subjects, customers=customers, high_water=high_water)


def _high_water(session: Session) -> int:
    value = session.exec(
        select(CatalogSequenceRow.value).where(CatalogSequenceRow.name == CATALOG_SEQUENCE)
    ).one()
    return int(value)


def _deleted(kind: str, record: Subject | Customer) -> NotFound:
    assert record.deleted_at is not None
    when = record.deleted_at.isoformat(timespec="seconds")
    return NotFound(f"{kind} {record.key!r} was deleted at {when}", tombstone=True)


class _Write:
    """One catalog write transaction: the rows it touches all get the same change number."""

    def __init__(self, session: Session, change_seq: int) -> None:
        self.session = session
        self.change_seq = change_seq
        self.now: datetime = utcnow()
        self.notes: list[str] = []

    # -- lookups

    def subject_row(self, key: str) -> SubjectRow | None:
        return self.session.exec(select(SubjectRow).where(SubjectRow.key == key)).first()

    def customer_row(self, key: str) -> CustomerRow | None:
        return self.session.exec(select(CustomerRow).where(CustomerRow.key == key)).first()

    def attribution(self, subject_key: str) -> AttributionRow | None:
        return self.session.get(AttributionRow, subject_key)

    def subjects_of(self, customer_key: str) -> list[str]:
        rows = self.session.exec(
            select(AttributionRow.subject_key).where(AttributionRow.customer_key == customer_key)
        )
        return list(rows)

    def subject_view(self, key: str) -> Subject:
        self.session.flush()
        return _subjects(self.session, keys=[key], include_deleted=True)[0]

    def customer_view(self, key: str) -> Customer:
        self.session.flush()
        return _customers(self.session, keys=[key], include_deleted=True)[0]

    def touch(self, row: SubjectRow | CustomerRow) -> None:
        row.change_seq = self.change_seq
        row.updated_at = self.now
        self.session.add(row)

    # -- subjects

    def upsert_subject(self, upsert: SubjectUpsert, *, auto_customer: bool) -> Outcome:
        given = upsert.given()
        row = self.subject_row(upsert.key)
        if row is None or row.deleted_at is not None:
            row = self.create_subject(upsert.key, reuse=row)
            if "display_name" in given:
                row.display_name = upsert.display_name
            if "metadata" in given:
                row.meta = dict(upsert.metadata or {})
            self.session.flush()
            if auto_customer:
                self.give_customer(row)
            return Outcome.CREATED

        changed = False
        if "display_name" in given and row.display_name != upsert.display_name:
            row.display_name = upsert.display_name
            changed = True
            self.follow_placeholder_name(row)
        if "metadata" in given and row.meta != (upsert.metadata or {}):
            row.meta = dict(upsert.metadata or {})
            changed = True
        if changed:
            self.touch(row)
        return Outcome.UPDATED if changed else Outcome.UNCHANGED

    def create_subject(self, key: str, *, reuse: SubjectRow | None = None) -> SubjectRow:
        """A new subject, or a tombstoned one brought back as new."""
        row = reuse or SubjectRow(id="", key=key, change_seq=self.change_seq)
        row.id = str(ULID())
        row.display_name = None
        row.meta = {}
        row.created_at = self.now
        row.deleted_at = None
        self.touch(row)
        return row

    def delete_subject(self, row: SubjectRow) -> None:
        link = self.attribution(row.key)
        owner = self.customer_row(link.customer_key) if link is not None else None
        self.detach(row.key)
        row.deleted_at = self.now
        self.touch(row)
        if owner is not None and owner.auto_created:
            self._release(owner, why=f"lost its subject {row.key!r}, which was deleted")

    def give_customer(self, subject: SubjectRow) -> None:
        """The auto-customer rule, for a subject that has just come into being."""
        if self.attribution(subject.key) is not None:
            return
        customer = self.customer_row(subject.key)
        if customer is None or customer.deleted_at is not None:
            customer = self._new_customer_row(subject.key, reuse=customer)
            customer.name = subject.display_name or subject.key
            customer.auto_created = True
            self.session.flush()
            self.notes.append(f"created customer {subject.key!r} for subject {subject.key!r}")
        else:
            if customer.auto_created:
                # A placeholder kept from an earlier life of this subject: named after it again.
                customer.name = subject.display_name or subject.key
            self.touch(customer)
            self.notes.append(f"attributed subject {subject.key!r} to customer {subject.key!r}")
        self.session.add(
            AttributionRow(subject_key=subject.key, customer_key=customer.key, created_at=self.now)
        )

    def follow_placeholder_name(self, subject: SubjectRow) -> None:
        # A placeholder is named after its subject; keep it so while nobody has edited it.
        link = self.attribution(subject.key)
        if link is None or link.customer_key != subject.key:
            return
        customer = self.customer_row(link.customer_key)
        if customer is None or not customer.auto_created:
            return
        if self.subjects_of(customer.key) != [subject.key]:
            return
        name = subject.display_name or subject.key
        if customer.name != name:
            customer.name = name
            self.touch(customer)

    def detach(self, subject_key: str) -> None:
        link = self.attribution(subject_key)
        if link is None:
            return
        customer = self.customer_row(link.customer_key)
        self.session.delete(link)
        if customer is not None:
            self.touch(customer)

    # -- customers

    def _new_customer_row(self, key: str, *, reuse: CustomerRow | None) -> CustomerRow:
        """A new customer row, or a tombstoned one cleared and brought back as new."""
        row = reuse or CustomerRow(id="", key=key, name=key, change_seq=self.change_seq)
        row.id = str(ULID())
        for column in [*_SCALAR_COLUMNS.values(), *_ADDRESS_COLUMNS.values()]:
            if column not in ("name", "meta"):
                setattr(row, column, None)
        row.meta = {}
        row.auto_created = False
        row.created_at = self.now
        row.deleted_at = None
        self.touch(row)
        return row

    def create_customer(self, create: CustomerCreate, *, reuse: CustomerRow | None) -> None:
        row = self._new_customer_row(create.customer_key, reuse=reuse)
        _apply(row, _replacing(create))
        self.session.flush()
        self.claim(row, create.subject_keys)

    def update_customer(self, row: CustomerRow, update: CustomerUpdate) -> bool:
        changed = _apply(row, update)
        if "usage_attribution" in update.given():
            changed = self.claim(row, update.subject_keys) or changed
        if changed:
            self.make_real(row)
        return changed

    def make_real(self, row: CustomerRow) -> None:
        """A person has now shaped this customer: it is no longer a placeholder."""
        row.auto_created = False
        self.touch(row)

    def delete_customer(self, row: CustomerRow) -> None:
        subject_keys = self.subjects_of(row.key)
        # Usage its subjects produced while they were this customer's, and not pushed yet,
        # stays this customer's: the push flushes it before the target's customer goes.
        if subject_keys:
            self.session.execute(
                update(UsageRow)
                .where(
                    col(UsageRow.customer_key).is_(None),
                    col(UsageRow.subject).in_(subject_keys),
                )
                .values(customer_key=row.key)
            )
        for subject_key in subject_keys:
            self.detach(subject_key)
            subject = self.subject_row(subject_key)
            if subject is not None:
                self.touch(subject)
        row.deleted_at = self.now
        self.touch(row)

    def claim(self, customer: CustomerRow, subject_keys: list[str]) -> bool:
        """Make `subject_keys` exactly the customer's subjects. Returns whether anything moved."""
        current = set(self.subjects_of(customer.key))
        wanted = list(dict.fromkeys(subject_keys))
        taken = {
            row.subject_key: row
            for row in self.session.exec(
                select(AttributionRow).where(
                    col(AttributionRow.subject_key).in_(wanted),
                    AttributionRow.customer_key != customer.key,
                )
            )
        }
        placeholders: dict[str, CustomerRow] = {}
        conflicts: list[str] = []
        for subject_key, link in taken.items():
            owner = self.customer_row(link.customer_key)
            if owner is not None and owner.auto_created:
                placeholders[owner.key] = owner
            else:
                conflicts.append(
                    f"subject {subject_key!r} already belongs to customer {link.customer_key!r}"
                )
        if conflicts:
            raise Conflict(
                "; ".join(conflicts)
                + f": cannot attribute it to customer {customer.key!r} (a subject belongs to one "
                "customer at a time; remove it from the other customer first)"
            )

        for subject_key in wanted:
            subject = self.subject_row(subject_key)
            if subject is None or subject.deleted_at is not None:
                self.create_subject(subject_key, reuse=subject)
        self.session.flush()

        for subject_key in current.difference(wanted):
            self.detach(subject_key)
            self._touch_subject(subject_key)
        for subject_key in wanted:
            if subject_key in current:
                continue
            moved = taken.get(subject_key)
            if moved is not None:
                previous = placeholders[moved.customer_key]
                moved.customer_key = customer.key
                self.session.add(moved)
                self.touch(previous)
            else:
                self.session.add(
                    AttributionRow(
                        subject_key=subject_key, customer_key=customer.key, created_at=self.now
                    )
                )
            self._touch_subject(subject_key)
        self.session.flush()

        for placeholder in placeholders.values():
            self._release(placeholder, why=f"gave its subject to {customer.key!r}")
        return current != set(wanted)

    def _touch_subject(self, key: str) -> None:
        subject = self.subject_row(key)
        if subject is not None:
            self.touch(subject)

    def _release(self, placeholder: CustomerRow, *, why: str) -> None:
        """A placeholder left without subjects is deleted, unless a target has seen it (then
        deleting it would delete a record someone may already be billing)."""
        if self.subjects_of(placeholder.key):
            return
        if self._is_linked(placeholder.key):
            self.notes.append(
                f"auto-created customer {placeholder.key!r} {why} and was kept, because it "
                "already exists in a target; delete it yourself if unwanted"
            )
            return
        placeholder.deleted_at = self.now
        self.touch(placeholder)
        self.notes.append(f"auto-created customer {placeholder.key!r} {why} and was removed")

    def _is_linked(self, customer_key: str) -> bool:
        found = self.session.exec(
            select(LinkRow.id).where(
                LinkRow.kind == LinkKind.CUSTOMER,
                LinkRow.local_key == customer_key,
                LinkRow.state != LinkState.DELETED,
            )
        ).first()
        return found is not None


def _replacing(create: CustomerCreate) -> CustomerUpdate:
    """A whole record as an update that sets every field, so left-out fields are cleared."""
    # model_dump writes every field, None included, so every field (and every address field)
    # counts as given and is replaced.
    return CustomerUpdate.model_validate(create.model_dump(exclude={"key", "deleted_at"}))


def _apply(row: CustomerRow, update: CustomerUpdate) -> bool:
    """Set the columns the update gives; returns whether any value changed."""
    given = update.given()
    values: dict[str, Any] = {}
    for field, column in _SCALAR_COLUMNS.items():
        if field in given:
            value = getattr(update, field)
            values[column] = dict(value or {}) if field == "metadata" else value
    if "billing_address" in given:
        address = update.billing_address
        for field, column in _ADDRESS_COLUMNS.items():
            if address is None:
                values[column] = None
            elif field in address.model_fields_set:
                values[column] = getattr(address, field)
    changed = False
    for column, value in values.items():
        if getattr(row, column) != value:
            setattr(row, column, value)
            changed = True
    return changed


@dataclass(frozen=True)
class _Filter:
    """The one filter both record kinds share: by keys, by change number, tombstones or not.

    A change feed comes in change order (so a reader can stop anywhere and resume); anything
    else in key order.
    """

    keys: list[str] | None = None
    since: int | None = None
    include_deleted: bool = False

    def apply(self, query: Any, model: type[SubjectRow] | type[CustomerRow]) -> Any:
        # `query` is any SELECT over `model` (SQLAlchemy's Select types do not unify here).
        if self.keys is not None:
            query = query.where(col(model.key).in_(self.keys))
        if self.since is not None:
            query = query.where(col(model.change_seq) > self.since)
        if not self.include_deleted:
            query = query.where(col(model.deleted_at).is_(None))
        if self.since is not None:
            return query.order_by(col(model.change_seq), col(model.key))
        return query.order_by(col(model.key))


def _subjects(
    session: Session,
    *,
    keys: Iterable[str] | None = None,
    since: int | None = None,
    include_deleted: bool = False,
) -> list[Subject]:
    query = select(SubjectRow, AttributionRow.customer_key).outerjoin(
        AttributionRow, col(AttributionRow.subject_key) == col(SubjectRow.key)
    )
    where = _Filter(None if keys is None else list(keys), since, include_deleted)
    rows = session.exec(where.apply(query, SubjectRow))
    return [Subject.from_row(row, customer_key) for row, customer_key in rows]


def _customers(
    session: Session,
    *,
    keys: Iterable[str] | None = None,
    since: int | None = None,
    include_deleted: bool = False,
) -> list[Customer]:
    where = _Filter(None if keys is None else list(keys), since, include_deleted)
    # Plain labelled columns, not ORM entities: the rows are only read, and a full reconcile
    # reads 100,000 of them (identity-map bookkeeping would cost seconds and hundreds of MB).
    columns: list[Any] = [col(getattr(CustomerRow, name)).label(name) for name in _CUSTOMER_FIELDS]
    rows: list[Any] = list(session.exec(where.apply(select(*columns), CustomerRow)))
    if not rows:
        return []
    # The same filter through a join, not an IN list of the keys just read: a change feed over
    # 100,000 customers would pass SQLite's limit on bound parameters.
    attribution = select(AttributionRow.customer_key, AttributionRow.subject_key).join(
        CustomerRow, col(CustomerRow.key) == col(AttributionRow.customer_key)
    )
    subject_keys: dict[str, list[str]] = defaultdict(list)
    for customer_key, subject_key in session.exec(where.apply(attribution, CustomerRow)):
        subject_keys[customer_key].append(subject_key)
    return [Customer.from_row(row, subject_keys[row.key]) for row in rows]
