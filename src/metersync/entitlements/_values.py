"""Entitlement values, access and history: the records (`_writes`), the customer's usage of
the feature (`_usage`, the aggregates billing reads) and the engine (`_engine`, pure).

A value reads what the entitlement is at the time asked (the one live then), its grants and
resets, and the usage. Balances at a period's start are cached (`entitlement_snapshot`), so a
value computes the current period only: the cache is dropped by any write to the
entitlement's grants or resets, and by usage that changes a cell before it (see `_usage`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from dateutil.relativedelta import relativedelta
from sqlalchemy import text
from sqlalchemy.orm import Session

from metersync.catalog.meters import Meter
from metersync.clock import utcnow
from metersync.entitlements import _engine as engine
from metersync.entitlements._model import (
    BurnDownSegment,
    Entitlement,
    EntitlementGrant,
    EntitlementValue,
    Feature,
    HistoryWindow,
    Kind,
    UsageReset,
    WindowedHistory,
)
from metersync.entitlements._periods import truncate_minute, value_minute
from metersync.entitlements._reads import Held, entitlements_of, holdings, owner, pick
from metersync.entitlements._usage import FeatureUsage, MeteredFeature, refresh_feature_usage
from metersync.entitlements._writes import METERED_AGGREGATIONS, EntitlementBook
from metersync.errors import FieldProblem, InvalidInput, NotFound
from metersync.store import Store
from metersync.store.entitlement_usage import (
    EntitlementSnapshot,
    latest_snapshot,
    save_snapshot,
)

ZERO = Decimal(0)
Window = Literal["HOUR", "DAY", "MONTH"]
WINDOW_STEPS = {
    "HOUR": relativedelta(hours=1),
    "DAY": relativedelta(days=1),
    "MONTH": relativedelta(months=1),
}
# A history is read a window at a time from the usage rollup: bound it, as OpenMeter does.
MAX_WINDOWS = 10_000
# A value or history is figured a usage period at a time: a time asked far beyond the current
# period (9998 with a yearly period, 2100 with an hourly one) kept a request busy for minutes.
MAX_PERIODS_AHEAD = 250


def terms_of(
    entitlement: Entitlement, grants: Sequence[EntitlementGrant], resets: Sequence[UsageReset]
) -> engine.MeteredTerms:
    """What the engine needs of a metered entitlement."""
    assert entitlement.usage_period is not None and entitlement.measure_usage_from is not None
    return engine.MeteredTerms(
        usage_period=entitlement.usage_period,
        measure_usage_from=entitlement.measure_usage_from,
        grants=[
            engine.GrantTerms(
                id=g.id,
                amount=g.amount,
                priority=g.priority,
                effective_at=g.effective_at,
                created_at=g.created_at,
                expires_at=g.expires_at,
                voided_at=g.voided_at,
                min_rollover=g.min_rollover,
                max_rollover=g.max_rollover,
                recurrence=g.recurrence,
            )
            for g in grants
        ],
        resets=[engine.Reset(r.at, r.preserve_overage, r.retain_anchor) for r in resets],
        preserve_overage_at_reset=entitlement.preserve_overage_at_reset,
        is_soft_limit=entitlement.is_soft_limit,
    )


class EntitlementValues:
    """Values, access and history of customers' entitlements; what the doors call."""

    def __init__(self, book: EntitlementBook, store: Store, meters: Sequence[Meter]) -> None:
        self.book = book
        self.store = store
        self.meters = {m.slug: m for m in meters}

    # -- reads ---------------------------------------------------------------------------------

    def value(
        self, customer: str, entitlement: str, at: datetime | None = None
    ) -> EntitlementValue:
        moment = at or utcnow()
        with self._reading() as session:
            who = owner(session, customer)
            held = entitlements_of(session, who)
            try:
                found = pick(held, entitlement, at, who)
            except NotFound:
                if at is None:
                    raise
                # None was live then: the live one says what it is, and that it was not yet.
                found = pick(held, entitlement, None, who)
            _within_reach(found, moment, "time")
            return self._value(session, holdings(session, [found])[found.id], moment)

    def access(self, customer: str, at: datetime | None = None) -> dict[str, EntitlementValue]:
        """Feature key → value, for every entitlement of the customer live at `at`: one read
        transaction, and the records of all of them in five statements."""
        moment = at or utcnow()
        with self._reading() as session:
            who = owner(session, customer)
            live = [
                e
                for e in entitlements_of(session, who)
                if e.active_at(moment) and (at is not None or e.deleted_at is None)
            ]
            held = holdings(session, live)
            return {e.feature_key: self._value(session, held[e.id], moment) for e in live}

    def history(
        self,
        customer: str,
        entitlement: str,
        *,
        start: datetime,
        end: datetime,
        window: Window = "HOUR",
        tz: str = "UTC",
    ) -> WindowedHistory:
        """Usage per window (only windows with usage, as OpenMeter) with the balance at each
        window's start, and the burn-down segments of [start, end)."""
        zone = _zone(tz)
        if end <= start:
            raise InvalidInput([FieldProblem("to", f"{end} is not after from ({start})")])
        held = self._held(customer, entitlement)
        found = held.entitlement
        if found.kind != Kind.METERED:
            raise InvalidInput(
                [FieldProblem("entitlement", f"a {found.kind} entitlement has no usage history")]
            )
        _within_reach(found, end, "to")
        terms, feature = self._terms(held)
        low = max(truncate_minute(start), truncate_minute(found.measure_usage_from or start))
        high = value_minute(end)
        if high <= low:
            return WindowedHistory((), ())
        spans = _windows(low, high, window, zone)
        usage, since = self._usage_since(found, terms, feature, low, high, save=False)
        segments = engine.history(terms, usage.between, low, high, since=since)
        windows = []
        for w_start, w_end in spans:
            used = usage.between(w_start, w_end)
            if used > ZERO:
                balance = _balance_at(segments, usage.between, w_start)
                windows.append(HistoryWindow(w_start, w_end, used, balance))
        return WindowedHistory(
            tuple(windows),
            tuple(
                BurnDownSegment(
                    start=s.period.start,
                    end=s.period.end,
                    usage=s.usage,
                    overage=s.overage,
                    balance_at_start=s.balance_at_start,
                    grant_balances_at_start=s.grant_balances_at_start,
                    balance_at_end=s.balance_at_end,
                    grant_balances_at_end=s.grant_balances_at_end,
                    grant_usages=s.grant_usages,
                )
                for s in segments
            ),
        )

    def refresh(self) -> int:
        """Fold the usage stored since the last refresh into every metered feature's hourly
        cells; returns the cells recomputed. Reads are exact without it: it keeps them cheap
        (the service runs it on every usage tick, after the push binds)."""
        folded = 0
        for feature in self.book.list_features():
            meter = self.meters.get(feature.meter_slug or "")
            if meter is None or meter.aggregation not in METERED_AGGREGATIONS:
                continue
            folded += refresh_feature_usage(self.store, _metered(feature, meter))
        return folded

    # -- internals -----------------------------------------------------------------------------

    def _value(self, session: Session, held: Held, moment: datetime) -> EntitlementValue:
        found = held.entitlement
        if not found.active_at(moment):
            if found.kind != Kind.METERED:
                return EntitlementValue(has_access=False)
            return EntitlementValue(False, ZERO, ZERO, ZERO, ZERO)
        if found.kind == Kind.BOOLEAN:
            return EntitlementValue(has_access=True)
        if found.kind == Kind.STATIC:
            return EntitlementValue(has_access=True, config=found.config)
        terms, feature = self._terms(held)
        minute = value_minute(moment)
        period = engine.current_period(terms, minute)
        usage, since = self._usage_since(
            found, terms, feature, period.start, minute, session=session
        )
        figures = engine.value_at(terms, usage.between, moment, since=since)
        return EntitlementValue(
            has_access=figures.has_access,
            balance=figures.balance,
            usage=figures.usage,
            overage=figures.overage,
            total_available_grant_amount=figures.total_available_grant_amount,
            period=figures.period,
        )

    def _terms(self, held: Held) -> tuple[engine.MeteredTerms, MeteredFeature]:
        feature = held.feature
        meter = self.meters.get(feature.meter_slug or "")
        if meter is None:
            raise InvalidInput(
                [FieldProblem("feature", f"feature {feature.key!r}'s meter is not configured")]
            )
        return terms_of(held.entitlement, held.grants, held.resets), _metered(feature, meter)

    @contextmanager
    def _reading(self) -> Iterator[Session]:
        """A read transaction for a value. On PostgreSQL without JIT: the planner cannot see
        the fold cursor a usage read compares change numbers with (a subquery), so on a large
        table it estimates a range of millions of rows, and past jit_above_cost each value
        compiled its statement first: 6.7 ms a statement, 52 ms an access of 20 entitlements,
        at 10 M events (auto_explain), for statements that read a few rows."""
        with self.store.read_session() as session:
            if not self.store.is_sqlite:
                session.execute(text("SET LOCAL jit = off"))
            yield session

    def _held(self, customer: str, entitlement: str, at: datetime | None = None) -> Held:
        with self._reading() as session:
            who = owner(session, customer)
            found = pick(entitlements_of(session, who), entitlement, at, who)
            return holdings(session, [found])[found.id]

    def _usage_since(
        self,
        found: Entitlement,
        terms: engine.MeteredTerms,
        feature: MeteredFeature,
        start: datetime,
        end: datetime,
        *,
        save: bool = True,
        session: Session | None = None,
    ) -> tuple[FeatureUsage, engine.Snapshot | None]:
        """The customer's usage from the newest valid snapshot at or before `start` (or from
        the start of measurement) to `end`, and that snapshot. With `save`, and `start` a
        period's start past the snapshot, the state at `start` is figured and cached."""
        measuring = truncate_minute(terms.measure_usage_from)
        cached = None
        if start > measuring:
            cached = latest_snapshot(self.store, found.id, start, session=session)
        cuts = _cuts(terms)
        usage = FeatureUsage.load(
            self.store,
            feature,
            found.customer_key,
            cached.at if cached is not None else min(measuring, end),
            end,
            cuts=cuts,
            snapshot=cached,
            session=session,
        )
        if cached is not None and not usage.snapshot_current:
            cached = None  # stale: usage it did not count has arrived; figure from the start
            usage = FeatureUsage.load(
                self.store,
                feature,
                found.customer_key,
                min(measuring, end),
                end,
                cuts=cuts,
                session=session,
            )
        since = None
        if cached is not None:
            since = engine.Snapshot(cached.at, cached.balances, cached.overage)
        if save and start > measuring and (since is None or since.at < start) and start <= end:
            since = engine.state_at(terms, usage.between, start, since=since)
            save_snapshot(
                self.store,
                EntitlementSnapshot(
                    entitlement_id=found.id,
                    at=since.at,
                    balances=since.balances,
                    overage=since.overage,
                    usage_mark=usage.usage_mark,
                    max_usage_id=usage.max_usage_id,
                    subjects_hash=usage.subjects_hash,
                ),
            )
        return usage, since


def _within_reach(found: Entitlement, moment: datetime, field: str) -> None:
    """Refuse a time more than MAX_PERIODS_AHEAD usage periods after the current one."""
    period = found.usage_period
    if found.kind != Kind.METERED or period is None:
        return
    ahead = period.index(truncate_minute(moment)) - period.index(truncate_minute(utcnow()))
    if ahead > MAX_PERIODS_AHEAD:
        raise InvalidInput(
            [
                FieldProblem(
                    field,
                    f"{moment.isoformat()} is {ahead} usage periods ahead: at most "
                    f"{MAX_PERIODS_AHEAD} ({period.interval.name} each) are figured",
                )
            ]
        )


def _metered(feature: Feature, meter: Meter) -> MeteredFeature:
    return MeteredFeature(
        id=feature.id,
        meter=meter.slug,
        aggregation=meter.aggregation,
        group_filters=tuple(sorted(feature.group_filters.items())),
    )


def _cuts(terms: engine.MeteredTerms) -> list[datetime]:
    """Times a burn is cut at besides period boundaries: the usage reader reads the hours they
    cut by the minute up front, in one read."""
    out: list[datetime] = [r.at for r in terms.resets]
    for grant in terms.grants:
        out.extend(t for t in (grant.effective_at, grant.expires_at, grant.voided_at) if t)
    return out


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidInput(
            [FieldProblem("windowTimeZone", f"{name!r} is not an IANA time zone")]
        ) from None


def _windows(
    low: datetime, high: datetime, window: Window, zone: ZoneInfo
) -> list[tuple[datetime, datetime]]:
    """[start, end) windows in `zone` covering [low, high): the first begins at the window
    holding `low` (cut to `low`), the last is cut at `high`."""
    local = low.astimezone(zone)
    if window == "HOUR":
        first = local.replace(minute=0, second=0, microsecond=0)
    elif window == "DAY":
        first = local.replace(hour=0, minute=0, second=0, microsecond=0)
    else:
        first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    step = WINDOW_STEPS[window]
    out: list[tuple[datetime, datetime]] = []
    n = 0
    while True:
        # From the first each time, in local wall time: a DST change moves no later window.
        w_start = (first + step * n).astimezone(low.tzinfo)
        w_end = (first + step * (n + 1)).astimezone(low.tzinfo)
        if w_start >= high:
            break
        out.append((max(w_start, low), min(w_end, high)))
        n += 1
        if n > MAX_WINDOWS:
            raise InvalidInput(
                [FieldProblem("windowSize", f"more than {MAX_WINDOWS} windows: ask a larger one")]
            )
    return out


def _balance_at(
    segments: Sequence[engine.HistorySegment],
    usage: Callable[[datetime, datetime], Decimal],
    moment: datetime,
) -> Decimal:
    """The balance at `moment`, from the segment holding it: within a segment the usable grants
    do not change, so what they hold is what they held at its start, less the carried overage
    and the usage since, never below zero."""
    for segment in segments:
        if segment.period.start <= moment < segment.period.end:
            spent = segment.overage_at_start + usage(segment.period.start, moment)
            return max(ZERO, segment.balance_at_start - spent)
    return segments[-1].balance_at_end if segments else ZERO
