"""One catalog write transaction: the lookups, subject writes and customer writes that carry out
the catalog rules (see `service.py`), every row touched getting the transaction's change number."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import update
from sqlmodel import Session, col, select
from ulid import ULID

from metersync.catalog._columns import ADDRESS_COLUMNS, SCALAR_COLUMNS, apply_update, replacing
from metersync.catalog._listing import read_customers, read_subjects
from metersync.catalog.schemas import CustomerCreate, CustomerUpdate, SubjectUpsert
from metersync.catalog.views import Customer, Outcome, Subject
from metersync.clock import utcnow
from metersync.errors import Conflict
from metersync.store import (
    AttributionRow,
    CustomerRow,
    EntitlementRow,
    SubjectRow,
    UsageRow,
)
from metersync.store.links import has_live_link


class Write:
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
        return read_subjects(self.session, keys=[key], include_deleted=True)[0]

    def customer_view(self, key: str) -> Customer:
        self.session.flush()
        return read_customers(self.session, keys=[key], include_deleted=True)[0]

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
        for column in [*SCALAR_COLUMNS.values(), *ADDRESS_COLUMNS.values()]:
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
        apply_update(row, replacing(create))
        self.session.flush()
        self.claim(row, create.subject_keys)

    def update_customer(self, row: CustomerRow, update: CustomerUpdate) -> bool:
        changed = apply_update(row, update)
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
        # Its live entitlements end with it (OpenMeter's rule): a customer created again
        # under the key starts with none, and a value at an earlier time still finds them.
        self.session.execute(
            update(EntitlementRow)
            .where(
                col(EntitlementRow.customer_key) == row.key,
                col(EntitlementRow.deleted_at).is_(None),
            )
            .values(deleted_at=self.now, updated_at=self.now)
        )
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
        if has_live_link(self.session, placeholder.key):
            self.notes.append(
                f"auto-created customer {placeholder.key!r} {why} and was kept, because it "
                "already exists in a target; delete it yourself if unwanted"
            )
            return
        placeholder.deleted_at = self.now
        self.touch(placeholder)
        self.notes.append(f"auto-created customer {placeholder.key!r} {why} and was removed")
