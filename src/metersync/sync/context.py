"""Loads what a target's rendering may need beyond the customer itself (the types are in
sync.ports): other targets' external ids, the period's usage and the figures of configured
features' entitlements. A CRM company carries the Stripe customer id, current usage and
entitlement figures; the Stripe customer needs none of them.

A target names its needs (`ContextNeeds`); the sync run loads a `RenderContext` for the
customers it renders (a few queries for the whole batch, never one per customer) and finds
which customers' context changed since its last run, so that an incremental tick also
re-renders those whose catalog record did not change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Protocol

from sqlalchemy import Table, func, select

from metersync.catalog.meters import Meter
from metersync.entitlements import (
    EntitlementBook,
    EntitlementValues,
    Period,
    UsagePeriod,
    value_minute,
)
from metersync.errors import NotFound
from metersync.store import (
    CustomerRow,
    EntitlementResetRow,
    EntitlementRow,
    FeatureRow,
    GrantRow,
    Store,
)
from metersync.store.links import LinkTable, changed_customers
from metersync.sync.ports import (
    NO_CONTEXT,
    ContextNeeds,
    EntitlementFigures,
    EntitlementSource,
    PeriodUsage,
    RenderContext,
)
from metersync.times import month_start
from metersync.usage.local_aggregates import LOCAL
from metersync.usage.ports import UsageAggregates

# Rows committed out of order (a transaction that started before our last run and committed
# after it) carry timestamps before that run: re-reading this much of the past catches them.
# A customer looked at twice costs a render, never a write (its fingerprint is unchanged).
CONTEXT_OVERLAP = timedelta(minutes=5)

_ENTITLEMENTS: Table = EntitlementRow.__table__  # type: ignore[attr-defined]
_GRANTS: Table = GrantRow.__table__  # type: ignore[attr-defined]
_RESETS: Table = EntitlementResetRow.__table__  # type: ignore[attr-defined]
_FEATURES: Table = FeatureRow.__table__  # type: ignore[attr-defined]
_CUSTOMERS: Table = CustomerRow.__table__  # type: ignore[attr-defined]
# A live entitlement with its customer.
_HELD = _ENTITLEMENTS.join(_CUSTOMERS, _CUSTOMERS.c.key == _ENTITLEMENTS.c.customer_key)


class EntitlementValue(Protocol):
    """What the context reads of an entitlement's value (metersync.entitlements)."""

    @property
    def has_access(self) -> bool: ...
    @property
    def balance(self) -> Decimal | None: ...
    @property
    def usage(self) -> Decimal | None: ...
    @property
    def period(self) -> Period | None: ...


class EntitlementReads(Protocol):
    """The entitlement values the context reads: metersync.entitlements.EntitlementValues."""

    def value(
        self, customer: str, entitlement: str, at: datetime | None = None
    ) -> EntitlementValue:
        """The value of the customer's entitlement (by feature key) live at `at`; NotFound
        without one."""
        ...


def entitlement_values(store: Store, meters: Sequence[Meter]) -> EntitlementReads:
    """The entitlement engine's values over the store."""
    return EntitlementValues(EntitlementBook(store, meters), store, meters)


class ContextReader:
    """Loads render contexts from the store. `now` fixes the period (tests freeze it).
    `entitlements`: where entitlement figures come from when an upstream source keeps the
    entitlements (the pipeline chooses it); None reads the local entitlement engine through
    `values`."""

    def __init__(
        self,
        store: Store,
        needs: ContextNeeds,
        meters: Sequence[Meter],
        now: datetime,
        aggregates: UsageAggregates = LOCAL,
        values: Callable[[Store, Sequence[Meter]], EntitlementReads] = entitlement_values,
        entitlements: EntitlementSource | None = None,
    ) -> None:
        self.store = store
        self.aggregates = aggregates
        self.needs = needs
        self.all_meters = list(meters)
        self.meters = list(meters) if needs.usage else []
        self.features = tuple(dict.fromkeys(needs.entitlements))
        self.now = now
        self._values_of = values
        self._values: EntitlementReads | None = None
        self.upstream = entitlements

    def load(self, keys: Iterable[str] | None) -> RenderContext:
        """The context of `keys` (None: of every customer)."""
        if not self.needs.any:
            return NO_CONTEXT
        wanted = None if keys is None else sorted(set(keys))
        return RenderContext(
            external_ids={
                t: LinkTable(self.store, t).external_ids(wanted) for t in self.needs.links
            },
            usage=self._usage(wanted),
            entitlements=self._entitlements(wanted),
        )

    def changed_since(self, since: datetime | None, own_target: str) -> set[str]:
        """Customers whose context may differ from what the last run (started at `since`) saw:
        a needed target's link changed, this target's own link changed (usage binds to a
        customer once it is linked), usage was ingested for one of its subjects, or usage was
        pushed for it (binding happens at the push), or the figures of an entitlement it shows
        changed (see `_entitlements_changed`). A superset is fine; a miss is not."""
        if not self.needs.any or since is None:
            return set()
        after = since - CONTEXT_OVERLAP
        keys = changed_customers(self.store, [*self.needs.links, own_target], after)
        meters = self._change_meters()
        if meters:
            keys.update(self.aggregates.changed_customers(self.store, meters, after))
        if self.meters and month_start(int(since.timestamp())) != month_start(
            int(self.now.timestamp())
        ):
            # A new month: every "this month" figure starts again, with or without usage.
            keys.update(LinkTable(self.store, own_target).linked_keys())
        if self.features and self.upstream is not None:
            keys.update(self.upstream.changed_customers(self.store, self.features, after))
        elif self.features:
            keys.update(self._entitlements_changed(after))
        return keys

    # -- queries ---------------------------------------------------------------------------------

    def _change_meters(self) -> list[Meter]:
        """The meters whose new usage changes what the target shows: those of the usage figures
        and those the configured features count (even with usage figures off)."""
        if not self.features or self.upstream is not None:
            # Upstream figures change with the source's pull, not with usage stored here.
            return self.meters
        with self.store.read_session() as session:
            slugs = set(
                session.execute(
                    select(_FEATURES.c.meter_slug).where(_FEATURES.c.key.in_(self.features))
                ).scalars()
            )
        shown = {m.slug for m in self.meters}
        return [*self.meters, *(m for m in self.all_meters if m.slug in slugs - shown)]

    def _entitlements(self, keys: list[str] | None) -> dict[str, dict[str, EntitlementFigures]]:
        """The figures of the configured features' live entitlements: one value read per
        customer and configured feature it holds (the period too, for a metered one); a
        customer without an entitlement to a feature has no figures for it. With an upstream
        source, what its pull stored."""
        if not self.features:
            return {}
        if self.upstream is not None:
            return self.upstream.figures(self.store, self.features, keys)
        query = (
            select(_CUSTOMERS.c.key, _ENTITLEMENTS.c.feature_key)
            .select_from(_HELD)
            .where(
                _ENTITLEMENTS.c.feature_key.in_(self.features),
                _ENTITLEMENTS.c.deleted_at.is_(None),
                _CUSTOMERS.c.deleted_at.is_(None),
            )
        )
        if keys is not None:
            query = query.where(_CUSTOMERS.c.key.in_(keys))
        with self.store.read_session() as session:
            held = sorted({(key, feature) for key, feature in session.execute(query)})
        figures: dict[str, dict[str, EntitlementFigures]] = {}
        for key, feature in held:
            try:
                value = self._reads().value(key, feature, at=self.now)
            except NotFound:
                # Deleted (or created) since the query above: its write is seen by the next
                # run's changed_since, which renders it again.
                continue
            figures.setdefault(key, {})[feature] = EntitlementFigures(
                has_access=value.has_access,
                balance=value.balance,
                usage=value.usage,
                period_end=value.period.end if value.period is not None else None,
            )
        return figures

    def _reads(self) -> EntitlementReads:
        if self._values is None:
            self._values = self._values_of(self.store, self.all_meters)
        return self._values

    def _entitlements_changed(self, after: datetime) -> set[str]:
        """Customers whose figures of a configured feature may have changed since `after`:

        - written: an entitlement created, deleted or overridden, a grant created or voided, a
          usage reset recorded, the feature archived (their rows' timestamps);
        - with time alone: a usage period boundary, a grant taking effect, expiring or
          recurring, or usage starting to count, at a moment in (after, now].

        The second part reads the live entitlements of the configured features and their
        grants, never their history: its cost grows with them, not with time."""
        ent_t, grant_t, reset_t = _ENTITLEMENTS, _GRANTS, _RESETS
        ents, grants, resets = ent_t.c, grant_t.c, reset_t.c
        features, customers = _FEATURES.c, _CUSTOMERS.c
        mine = ents.feature_key.in_(self.features)
        held = _HELD
        written = [
            select(customers.key).select_from(held).where(mine, ents.updated_at >= after),
            select(customers.key)
            .select_from(held.join(grant_t, ents.id == grants.entitlement_id))
            .where(mine, grants.updated_at >= after),
            select(customers.key)
            .select_from(held.join(reset_t, ents.id == resets.entitlement_id))
            .where(mine, resets.created_at >= after),
            select(customers.key)
            .select_from(held.join(_FEATURES, features.id == ents.feature_id))
            .where(mine, ents.deleted_at.is_(None), features.updated_at >= after),
        ]
        # Moments up to the minute the values are read at (a value at t counts up to the next
        # whole minute), so a boundary the read already sees is never missed.
        until = value_minute(self.now)
        live = (
            select(
                customers.key,
                ents.id,
                ents.usage_interval,
                ents.usage_anchor,
                ents.measure_usage_from,
            )
            .select_from(held)
            .where(mine, ents.deleted_at.is_(None))
        )
        live_grants = (
            select(
                grants.entitlement_id,
                grants.effective_at,
                grants.expires_at,
                grants.recurrence_interval,
                grants.recurrence_anchor,
            )
            .select_from(grant_t.join(ent_t, ents.id == grants.entitlement_id))
            .where(mine, ents.deleted_at.is_(None), grants.voided_at.is_(None))
        )
        # A reset that does not keep the anchor starts the usage periods anew at itself.
        anchors = (
            select(resets.entitlement_id, func.max(resets.reset_at))
            .select_from(reset_t.join(ent_t, ents.id == resets.entitlement_id))
            .where(mine, ents.deleted_at.is_(None), resets.retain_anchor.is_(False))
            .group_by(resets.entitlement_id)
        )

        def falls_in(moment: datetime | None) -> bool:
            return moment is not None and after < _utc(moment) <= until

        def boundary_in(interval: str | None, anchor: datetime | None) -> bool:
            if interval is None or anchor is None:
                return False
            return falls_in(UsagePeriod.of(interval, _utc(anchor)).period_at(until).start)

        keys: set[str] = set()
        with self.store.read_session() as session:
            for query in written:
                keys.update(session.execute(query).scalars())
            anchored = {row[0]: row[1] for row in session.execute(anchors)}
            holder: dict[str, str] = {}
            for key, ent_id, interval, anchor, measured_from in session.execute(live):
                holder[ent_id] = key
                if (
                    falls_in(measured_from)
                    or boundary_in(interval, anchor)
                    or boundary_in(interval, anchored.get(ent_id))
                ):
                    keys.add(key)
            for ent_id, effective, expires, interval, anchor in session.execute(live_grants):
                if ent_id in holder and (
                    falls_in(effective)
                    or falls_in(expires)
                    or (_utc(effective) <= until and boundary_in(interval, anchor or effective))
                ):
                    keys.add(holder[ent_id])
        return keys

    def _usage(self, keys: list[str] | None) -> dict[str, dict[str, PeriodUsage]]:
        start = month_start(int(self.now.timestamp()))
        usage: dict[str, dict[str, PeriodUsage]] = {}
        for meter in self.meters:
            for item in self.aggregates.windows(self.store, meter, 0, customers=keys, start=start):
                latest = datetime.fromtimestamp(item.latest_us / 1_000_000, UTC)
                usage.setdefault(item.customer_key, {})[meter.slug] = PeriodUsage(
                    item.value, latest
                )
        return usage


def _utc(moment: datetime) -> datetime:
    """A stored time as an aware UTC datetime (SQLite hands them back naive)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
