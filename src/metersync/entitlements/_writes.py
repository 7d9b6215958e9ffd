"""Features, entitlements, grants and resets: the writes and the reads by id or key, with
OpenMeter's rules. The doors (CLI, HTTP API) call these; the values come from `_values`.

- A feature's key names one live feature. A feature with a meter may narrow it by group_by
  values; only dimensions the meter groups by can be filtered. Deleting archives it.
- A customer has at most one live entitlement per feature (409 for a second; the database's
  partial unique index holds it under concurrency too). Only SUM and COUNT meters can be
  metered: a balance burns down a quantity that adds up over time.
- Override deletes the live entitlement and creates the new one in one transaction: the old
  one ends where the new one starts.
- Grants are voided, never removed: a value at an earlier time still sees them. A void is
  now, and refused for a grant voided already or expired.
- A reset is at a whole minute, not in the future, and not before the last reset or the
  measurement start.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select
from ulid import ULID

from metersync.catalog.meters import Aggregation, Meter
from metersync.catalog.schemas import parse
from metersync.clock import utcnow
from metersync.entitlements._inputs import (
    EntitlementCreate,
    FeatureCreate,
    GrantCreate,
    MeteredCreate,
    ResetInput,
    StaticCreate,
    entitlement_input,
)
from metersync.entitlements._model import (
    Entitlement,
    EntitlementGrant,
    Expiration,
    Feature,
    Kind,
    UsageReset,
)
from metersync.entitlements._periods import UsagePeriod, truncate_minute
from metersync.entitlements._reads import entitlements_of, pick
from metersync.entitlements._reads import owner as customer_of
from metersync.entitlements._records import entitlement_of, feature_of, grant_of, reset_of
from metersync.errors import Conflict, FieldProblem, InvalidInput, NotFound, PreconditionFailed
from metersync.store import (
    CustomerRow,
    EntitlementResetRow,
    EntitlementRow,
    FeatureRow,
    GrantRow,
    Store,
)
from metersync.store.entitlement_usage import drop_snapshots

METERED_AGGREGATIONS = (Aggregation.SUM, Aggregation.COUNT)


class EntitlementBook:
    """The Python API for features, entitlements, grants and resets."""

    def __init__(self, store: Store, meters: Sequence[Meter]) -> None:
        self.store = store
        self.meters = {m.slug: m for m in meters}

    # -- features ------------------------------------------------------------------------------

    def create_feature(self, data: FeatureCreate | dict[str, Any]) -> Feature:
        given = data if isinstance(data, FeatureCreate) else parse(FeatureCreate, data)
        filters = given.group_filters
        if given.meter_slug is not None:
            meter = self.meters.get(given.meter_slug)
            if meter is None:
                known = ", ".join(sorted(self.meters)) or "none"
                raise InvalidInput(
                    [FieldProblem("meterSlug", f"no meter {given.meter_slug!r} (meters: {known})")]
                )
            unknown = sorted(set(filters) - set(meter.settings.group_by))
            if unknown:
                raise InvalidInput(
                    [
                        FieldProblem(
                            "meterGroupByFilters",
                            f"meter {meter.slug!r} does not group by {', '.join(unknown)}",
                        )
                    ]
                )
        now = utcnow()
        row = FeatureRow(
            id=str(ULID()),
            key=given.key,
            name=given.name,
            meter_slug=given.meter_slug,
            group_filters=filters,
            meta=dict(given.metadata),
            created_at=now,
            updated_at=now,
        )
        try:
            with self.store.session() as session:
                if _live_feature(session, given.key) is not None:
                    raise Conflict(f"feature {given.key!r} already exists")
                session.add(row)
                session.flush()
                return feature_of(row)
        except IntegrityError:  # created by another writer between the check and the insert
            raise Conflict(f"feature {given.key!r} already exists") from None

    def list_features(self, *, include_archived: bool = False) -> list[Feature]:
        query = select(FeatureRow).order_by(col(FeatureRow.created_at), col(FeatureRow.id))
        if not include_archived:
            query = query.where(col(FeatureRow.archived_at).is_(None))
        with self.store.read_session() as session:
            return [feature_of(row) for row in session.exec(query)]

    def get_feature(self, id_or_key: str) -> Feature:
        with self.store.read_session() as session:
            return feature_of(_feature(session, id_or_key))

    def archive_feature(self, id_or_key: str) -> Feature:
        with self.store.session() as session:
            row = _feature(session, id_or_key)
            if row.archived_at is None:
                row.archived_at = row.updated_at = utcnow()
                session.add(row)
                session.flush()
            return feature_of(row)

    # -- entitlements --------------------------------------------------------------------------

    def create_entitlement(
        self, customer: str, data: EntitlementCreate | dict[str, Any]
    ) -> Entitlement:
        given = data if not isinstance(data, dict) else entitlement_input(data)
        with self.store.session() as session:
            return self._create(session, _live_customer(session, customer), given)

    def override_entitlement(
        self, customer: str, entitlement: str, data: EntitlementCreate | dict[str, Any]
    ) -> Entitlement:
        """Replace the live entitlement (by id or feature key) with a new one, at once."""
        given = data if not isinstance(data, dict) else entitlement_input(data)
        with self.store.session() as session:
            owner = _live_customer(session, customer)
            old = _entitlement_row(session, owner, entitlement)
            old.deleted_at = old.updated_at = utcnow()
            session.add(old)
            session.flush()
            return self._create(session, owner, given, at=old.deleted_at)

    def delete_entitlement(self, entitlement_id: str, *, customer: str | None = None) -> None:
        with self.store.session() as session:
            owner = _customer(session, customer) if customer is not None else None
            row = _entitlement_row(session, owner, entitlement_id, by_feature=False)
            if row.deleted_at is not None:
                # A second delete would move the end of access it already ended.
                raise NotFound(f"entitlement {entitlement_id!r} was deleted at {row.deleted_at}")
            row.deleted_at = row.updated_at = utcnow()
            session.add(row)

    def get_entitlement(
        self, entitlement: str, *, customer: str | None = None, at: datetime | None = None
    ) -> Entitlement:
        """By id, or (with a customer) by id or feature key: the live one, or the one live at
        `at`."""
        with self.store.read_session() as session:
            if customer is not None:
                # The rule the values read by (`_reads.pick`), one place for "live at".
                who = customer_of(session, customer)
                return pick(entitlements_of(session, who), entitlement, at, who)
            row = _entitlement_row(session, None, entitlement)
            return entitlement_of(row, _customer_id(session, row.customer_key))

    def list_entitlements(
        self,
        *,
        customer: str | None = None,
        feature: str | None = None,
        include_deleted: bool = False,
    ) -> list[Entitlement]:
        query = select(EntitlementRow, CustomerRow.id).join(
            CustomerRow, col(CustomerRow.key) == col(EntitlementRow.customer_key)
        )
        with self.store.read_session() as session:
            if customer is not None:
                query = query.where(EntitlementRow.customer_key == _customer(session, customer).key)
            if feature is not None:
                query = query.where(
                    or_(
                        col(EntitlementRow.feature_key) == feature,
                        col(EntitlementRow.feature_id) == feature,
                    )
                )
            if not include_deleted:
                query = query.where(col(EntitlementRow.deleted_at).is_(None))
            query = query.order_by(col(EntitlementRow.created_at), col(EntitlementRow.id))
            return [entitlement_of(row, customer_id) for row, customer_id in session.exec(query)]

    def _create(
        self,
        session: Session,
        owner: CustomerRow,
        given: EntitlementCreate,
        *,
        at: datetime | None = None,
    ) -> Entitlement:
        now = at or utcnow()
        feature = _feature(session, given.feature_id or given.feature_key or "", live=True)
        if given.feature_id and given.feature_key and feature.key != given.feature_key:
            raise InvalidInput(
                [FieldProblem("featureKey", f"feature {given.feature_id} is {feature.key!r}")]
            )
        row = EntitlementRow(
            id=str(ULID()),
            kind=given.type,
            customer_key=owner.key,
            feature_id=feature.id,
            feature_key=feature.key,
            meta=dict(given.metadata),
            created_at=now,
            updated_at=now,
        )
        if given.usage_period is not None:
            row.usage_interval = given.usage_period.interval
            # No anchor: periods count from an explicit measureUsageFrom time, or from now.
            measured = getattr(given, "measure_usage_from", None)
            default = measured if isinstance(measured, datetime) else now
            row.usage_anchor = truncate_minute(given.usage_period.anchor or default)
        if isinstance(given, MeteredCreate):
            self._metered(row, feature, given, now)
        elif isinstance(given, StaticCreate):
            row.config = given.config
        if _live_entitlement(session, owner.key, feature.id) is not None:
            raise Conflict(
                f"customer {owner.key!r} already has an entitlement to {feature.key!r}: "
                "override it or delete it first"
            )
        session.add(row)
        try:
            session.flush()
        except IntegrityError:
            raise Conflict(
                f"customer {owner.key!r} already has an entitlement to {feature.key!r}"
            ) from None
        if isinstance(given, MeteredCreate):
            issue = given.issue_terms
            if issue is not None:
                # OpenMeter's issueAfterReset: a grant that every reset restores to its amount.
                session.add(
                    _grant_row(
                        row.id,
                        GrantCreate(
                            amount=issue.amount,
                            priority=issue.priority,
                            effective_at=row.measure_usage_from or now,
                            min_rollover_amount=issue.amount,
                            max_rollover_amount=issue.amount,
                        ),
                        now,
                    )
                )
            for grant in given.grants:
                session.add(_grant_row(row.id, grant, now))
            session.flush()
        return entitlement_of(row, owner.id)

    def _metered(
        self, row: EntitlementRow, feature: FeatureRow, given: MeteredCreate, now: datetime
    ) -> None:
        meter = self.meters.get(feature.meter_slug or "")
        if meter is None:
            raise InvalidInput(
                [
                    FieldProblem(
                        "featureKey",
                        f"feature {feature.key!r} has no meter"
                        if feature.meter_slug is None
                        else f"feature {feature.key!r}'s meter {feature.meter_slug!r} "
                        "is not configured",
                    )
                ]
            )
        if meter.aggregation not in METERED_AGGREGATIONS:
            raise InvalidInput(
                [
                    FieldProblem(
                        "featureKey",
                        f"meter {meter.slug!r} aggregates by {meter.aggregation.value}: "
                        "a metered entitlement needs a SUM or COUNT meter",
                    )
                ]
            )
        assert row.usage_interval is not None and row.usage_anchor is not None
        period = UsagePeriod.of(row.usage_interval, row.usage_anchor)
        start = given.measure_usage_from
        if start is None or start == "NOW":
            measured = truncate_minute(now)
        elif start == "CURRENT_PERIOD_START":
            measured = period.period_at(truncate_minute(now)).start
        else:
            measured = truncate_minute(start)
        row.measure_usage_from = measured
        row.is_soft_limit = given.is_soft_limit
        row.preserve_overage_at_reset = given.preserve_overage_at_reset
        issue = given.issue_terms
        if issue is not None:
            row.issue_amount = str(issue.amount)
            row.issue_priority = issue.priority

    # -- grants --------------------------------------------------------------------------------

    def create_grant(
        self, customer: str, entitlement: str, data: GrantCreate | dict[str, Any]
    ) -> EntitlementGrant:
        given = data if isinstance(data, GrantCreate) else parse(GrantCreate, data)
        with self.store.session() as session:
            owner = _live_customer(session, customer)
            ent = _entitlement_row(session, owner, entitlement)
            if ent.kind != Kind.METERED:
                raise InvalidInput(
                    [FieldProblem("entitlement", f"a {ent.kind} entitlement has no grants")]
                )
            row = _grant_row(ent.id, given, utcnow())
            session.add(row)
            drop_snapshots(session, ent.id)  # balances change from the grant's time on
            session.flush()
            return grant_of(row)

    def list_grants(
        self,
        *,
        customer: str | None = None,
        entitlement: str | None = None,
        include_deleted: bool = False,
    ) -> list[EntitlementGrant]:
        query = select(GrantRow).join(
            EntitlementRow, col(EntitlementRow.id) == col(GrantRow.entitlement_id)
        )
        with self.store.read_session() as session:
            owner = _customer(session, customer) if customer is not None else None
            if entitlement is not None:
                ent = _entitlement_row(session, owner, entitlement)
                query = query.where(GrantRow.entitlement_id == ent.id)
            elif owner is not None:
                query = query.where(EntitlementRow.customer_key == owner.key)
            if not include_deleted:
                query = query.where(col(GrantRow.voided_at).is_(None))
            query = query.order_by(col(GrantRow.created_at), col(GrantRow.id))
            return [grant_of(row) for row in session.exec(query)]

    def void_grant(self, grant_id: str) -> EntitlementGrant:
        now = truncate_minute(utcnow())
        with self.store.session() as session:
            row = session.get(GrantRow, grant_id)
            if row is None:
                raise NotFound(f"grant {grant_id!r} does not exist")
            if row.voided_at is not None:
                raise Conflict(f"grant {grant_id!r} was voided already, at {row.voided_at}")
            if row.expires_at is not None and row.expires_at <= now:
                raise Conflict(f"grant {grant_id!r} expired at {row.expires_at}")
            row.voided_at = row.updated_at = now
            session.add(row)
            drop_snapshots(session, row.entitlement_id)
            session.flush()
            return grant_of(row)

    # -- resets --------------------------------------------------------------------------------

    def record_reset(
        self, customer: str, entitlement: str, data: ResetInput | dict[str, Any]
    ) -> UsageReset:
        given = data if isinstance(data, ResetInput) else parse(ResetInput, data)
        now = utcnow()
        at = truncate_minute(given.effective_at or now)
        if at > now:
            raise InvalidInput([FieldProblem("effectiveAt", f"{at} is in the future")])
        with self.store.session() as session:
            owner = _live_customer(session, customer)
            ent = _entitlement_row(session, owner, entitlement)
            if ent.kind != Kind.METERED:
                raise InvalidInput(
                    [FieldProblem("entitlement", f"a {ent.kind} entitlement has no usage")]
                )
            floor = ent.measure_usage_from
            last = session.exec(
                select(EntitlementResetRow.reset_at)
                .where(EntitlementResetRow.entitlement_id == ent.id)
                .order_by(col(EntitlementResetRow.reset_at).desc())
                .limit(1)
            ).first()
            floor = max(t for t in (floor, last) if t is not None) if (floor or last) else None
            if floor is not None and at <= floor:
                raise InvalidInput(
                    [
                        FieldProblem(
                            "effectiveAt",
                            f"{at} is not after the last reset or the start of measurement "
                            f"({floor})",
                        )
                    ]
                )
            preserve = given.preserve_overage
            row = EntitlementResetRow(
                id=str(ULID()),
                entitlement_id=ent.id,
                reset_at=at,
                preserve_overage=ent.preserve_overage_at_reset if preserve is None else preserve,
                retain_anchor=given.retain_anchor,
                created_at=now,
            )
            session.add(row)
            drop_snapshots(session, ent.id)
            session.flush()
            return reset_of(row)

    def resets_of(self, entitlement_id: str) -> list[UsageReset]:
        with self.store.read_session() as session:
            rows = session.exec(
                select(EntitlementResetRow)
                .where(EntitlementResetRow.entitlement_id == entitlement_id)
                .order_by(col(EntitlementResetRow.reset_at))
            )
            return [reset_of(row) for row in rows]


# -- lookups -------------------------------------------------------------------------------------


def _grant_row(entitlement_id: str, given: GrantCreate, now: datetime) -> GrantRow:
    effective = _ceil_minute(given.effective_at)
    expiration = None
    if given.expiration is not None:
        expiration = Expiration(given.expiration.duration, given.expiration.count)
    recurrence = given.recurrence
    return GrantRow(
        id=str(ULID()),
        entitlement_id=entitlement_id,
        amount=str(given.amount),
        priority=given.priority,
        effective_at=effective,
        expiration_duration=None if expiration is None else expiration.duration,
        expiration_count=None if expiration is None else expiration.count,
        expires_at=None if expiration is None else expiration.after(effective),
        min_rollover=str(given.min_rollover_amount),
        max_rollover=None if given.max_rollover_amount is None else str(given.max_rollover_amount),
        recurrence_interval=None if recurrence is None else recurrence.interval,
        recurrence_anchor=(
            None if recurrence is None else truncate_minute(recurrence.anchor or effective)
        ),
        meta=dict(given.metadata),
        created_at=now,
        updated_at=now,
    )


def _ceil_minute(moment: datetime) -> datetime:
    # OpenMeter: "effectiveAt … will be ceiled to metering windowSize (minute)".
    floor = truncate_minute(moment)
    return floor if floor == moment else floor + timedelta(minutes=1)


def _customer(session: Session, id_or_key: str) -> CustomerRow:
    row = session.exec(select(CustomerRow).where(CustomerRow.key == id_or_key)).first()
    if row is None:
        row = session.get(CustomerRow, id_or_key)
    if row is None:
        raise NotFound(f"customer {id_or_key!r} does not exist")
    return row


def _live_customer(session: Session, id_or_key: str) -> CustomerRow:
    row = _customer(session, id_or_key)
    if row.deleted_at is not None:
        raise PreconditionFailed(f"customer {id_or_key!r} is deleted")
    return row


def _customer_id(session: Session, customer_key: str) -> str:
    row = session.exec(select(CustomerRow).where(CustomerRow.key == customer_key)).first()
    return row.id if row is not None else customer_key


def _live_feature(session: Session, key: str) -> FeatureRow | None:
    return session.exec(
        select(FeatureRow).where(FeatureRow.key == key, col(FeatureRow.archived_at).is_(None))
    ).first()


def _feature(session: Session, id_or_key: str, *, live: bool = False) -> FeatureRow:
    row = session.get(FeatureRow, id_or_key) or _live_feature(session, id_or_key)
    if row is None:
        raise NotFound(f"feature {id_or_key!r} does not exist")
    if live and row.archived_at is not None:
        raise NotFound(f"feature {id_or_key!r} is archived")
    return row


def _live_entitlement(
    session: Session, customer_key: str, feature_id: str
) -> EntitlementRow | None:
    return session.exec(
        select(EntitlementRow).where(
            EntitlementRow.customer_key == customer_key,
            EntitlementRow.feature_id == feature_id,
            col(EntitlementRow.deleted_at).is_(None),
        )
    ).first()


def _entitlement_row(
    session: Session,
    owner: CustomerRow | None,
    id_or_feature: str,
    *,
    by_feature: bool = True,
) -> EntitlementRow:
    """For a write: by id (of the customer's, if one is given); or, for a customer, by feature
    key, the live entitlement. (Reads at a time go through `_reads.pick`.)"""
    row = session.get(EntitlementRow, id_or_feature)
    if row is not None and (owner is None or row.customer_key == owner.key):
        return row
    if owner is not None and by_feature:
        query = select(EntitlementRow).where(
            EntitlementRow.customer_key == owner.key, EntitlementRow.feature_key == id_or_feature
        )
        query = query.where(col(EntitlementRow.deleted_at).is_(None))
        found = session.exec(query).first()
        if found is not None:
            return found
    whose = f" of customer {owner.key!r}" if owner is not None else ""
    raise NotFound(f"entitlement {id_or_feature!r}{whose} does not exist")
