"""Reading subjects and customers as records: by keys, by change number (the change feed), with
tombstones or without, and the catalog's latest change number."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session, col, select

from metersync.catalog.views import Customer, Subject
from metersync.store import AttributionRow, CatalogSequenceRow, CustomerRow, SubjectRow
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


def read_high_water(session: Session) -> int:
    value = session.exec(
        select(CatalogSequenceRow.value).where(CatalogSequenceRow.name == CATALOG_SEQUENCE)
    ).one()
    return int(value)


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


def read_subjects(
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


def read_customers(
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
