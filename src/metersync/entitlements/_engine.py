"""A metered entitlement's balance over time: usage periods strung together (pure, Decimal).

`_burn` burns usage through grants within one period; this module runs from the start of
measuring (or from a snapshot cached at a period start) to a moment, and between spans applies
what happens at an instant:

- a reset: every usage-period boundary (programmatic, overage kept if
  `preserve_overage_at_reset`) and every manual reset (overage kept as the reset says, else as
  the entitlement says). A manual reset that does not retain the anchor moves it: the boundaries
  after it are reset + n·interval. A manual reset on a boundary is one reset. At a reset each
  grant still usable keeps min(max_rollover, max(balance, min_rollover)) (OpenMeter's
  Balance_After_Reset), a grant no longer usable is dropped, and a grant that takes effect
  later starts from its amount.
- a recurrence of a grant (its recurrence's boundaries strictly after it takes effect, while it
  is usable): its balance is restored to its amount.

At one instant a reset comes first, then recurrences: a grant that recurs on a period boundary
is rolled over and then restored, so it starts the period with its amount. A preserved overage
is then absorbed by the grants usable at the start of the next span (as `_burn` absorbs it), so
it is paid from the restored amount. (OpenMeter's engine burns the preserved overage down at the
reset itself, before a recurrence that lands on the same minute restores the grant, which
forgives it; here a preserved overage is always paid.)

Everything is at minute resolution: the value "at" t is the state at `value_minute(t)`, after
everything that happens at that minute (a reset, a recurrence, a grant taking effect, a grant
expiring); usage in that minute and after does not count yet. Manual resets and the start of
measuring are taken to their minute; grant times and recurrence anchors are used as given (the
storage layer keeps them on the minute, as OpenMeter ceils a grant's effectiveAt).

The usage read (`usage_between(start, end)`, a database query in the product) is called once
for each burn segment, never for a span before measuring starts or of zero length.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from metersync.entitlements._burn import ZERO, Grant, _draw, burn
from metersync.entitlements._periods import (
    Interval,
    Period,
    UsagePeriod,
    truncate_minute,
    value_minute,
)

UsageBetween = Callable[[datetime, datetime], Decimal]


@dataclass(frozen=True)
class GrantTerms:
    """A grant as stored: its amount, when it is usable, how it rolls over and recurs."""

    id: str
    amount: Decimal
    priority: int  # 1 is burnt first
    effective_at: datetime
    created_at: datetime
    expires_at: datetime | None = None  # the caller computes it from the expiration
    voided_at: datetime | None = None
    min_rollover: Decimal = ZERO
    max_rollover: Decimal | None = None  # None: the amount
    # An Interval recurs from effective_at; a UsagePeriod from its own anchor.
    recurrence: UsagePeriod | Interval | None = None

    def __post_init__(self) -> None:
        if self.amount < ZERO or self.min_rollover < ZERO:
            raise ValueError(f"grant {self.id}: amount and min_rollover must not be negative")
        if self.max_rollover is not None and self.max_rollover < ZERO:
            raise ValueError(f"grant {self.id}: max_rollover must not be negative")

    def burn_grant(self) -> Grant:
        """The grant as `_burn.burn` takes it."""
        return Grant(
            id=self.id,
            amount=self.amount,
            priority=self.priority,
            effective_at=self.effective_at,
            created_at=self.created_at,
            expires_at=self.expires_at,
            voided_at=self.voided_at,
        )

    def usable_at(self, moment: datetime) -> bool:
        return self.burn_grant().usable_at(moment)

    def rollover(self, balance: Decimal) -> Decimal:
        """The balance after a reset: min(max_rollover, max(balance, min_rollover))."""
        ceiling = self.amount if self.max_rollover is None else self.max_rollover
        return min(ceiling, max(balance, self.min_rollover))

    @property
    def recurrence_period(self) -> UsagePeriod | None:
        if isinstance(self.recurrence, Interval):
            return UsagePeriod(self.recurrence, self.effective_at)
        return self.recurrence

    def recurrences(self, after: datetime, until: datetime) -> list[datetime]:
        """The recurrence times in (after, until]: strictly after the grant takes effect, and
        while it is usable (a recurrence at its expiry or void restores nothing)."""
        period = self.recurrence_period
        if period is None:
            return []
        n = period.index(max(after, self.effective_at)) + 1
        times: list[datetime] = []
        while (moment := period.boundary(n)) <= until:
            if not self.usable_at(moment):
                break  # usable again never: expiry and void are for good
            times.append(moment)
            n += 1
        return times


@dataclass(frozen=True)
class Reset:
    """A manual reset. `preserve_overage` None: as the entitlement says."""

    at: datetime
    preserve_overage: bool | None = None
    retain_anchor: bool = False


@dataclass(frozen=True)
class MeteredTerms:
    usage_period: UsagePeriod
    measure_usage_from: datetime
    grants: Sequence[GrantTerms] = ()
    resets: Sequence[Reset] = ()  # manual ones
    preserve_overage_at_reset: bool = False
    is_soft_limit: bool = False


@dataclass(frozen=True)
class Snapshot:
    """The state at `at`, after everything that happens at that minute: what a caller caches at
    a period's start so that the next values compute that period only. `overage` is what is
    carried, not yet absorbed by the grants usable at `at` (the next segment absorbs it)."""

    at: datetime
    balances: Mapping[str, Decimal]
    overage: Decimal


@dataclass(frozen=True)
class MeteredValue:
    balance: Decimal  # Σ of the balances of the grants usable at the minute
    usage: Decimal  # in the current period, up to the minute
    overage: Decimal
    # balance + Σ burnt from grants in the current period (OpenMeter's
    # RunResult.TotalAvailableGrantAmount): what the grants made available this period.
    total_available_grant_amount: Decimal
    has_access: bool
    grant_balances: Mapping[str, Decimal]  # of the grants usable at the minute
    period: Period  # [latest reset ≤ the minute, next reset)
    last_reset: datetime  # period.start, or when measuring started if that is later


@dataclass(frozen=True)
class HistorySegment:
    """OpenMeter's GrantBurnDownHistorySegment: [start, end) where nothing changed."""

    period: Period
    usage: Decimal
    overage: Decimal  # at the end
    balance_at_start: Decimal
    grant_balances_at_start: Mapping[str, Decimal]  # before the segment's burn
    balance_at_end: Decimal
    grant_balances_at_end: Mapping[str, Decimal]
    grant_usages: Mapping[str, Decimal]  # absorbed carried overage included
    overage_at_start: Decimal = ZERO  # carried in; absorbed first


@dataclass
class _Run:
    at: datetime
    balances: dict[str, Decimal]
    overage: Decimal
    segments: list[HistorySegment] = field(default_factory=list)


class _Timeline:
    """The resets: boundaries of the usage period, its anchor moved by manual resets that do
    not retain it, and the manual resets themselves."""

    def __init__(self, terms: MeteredTerms) -> None:
        manual: dict[datetime, Reset] = {}
        for reset in sorted(terms.resets, key=lambda r: r.at):
            manual[truncate_minute(reset.at)] = reset  # two at one minute: the later said
        self._manual = manual
        self._times = sorted(manual)
        interval = terms.usage_period.interval
        self._anchors: list[tuple[datetime, UsagePeriod]] = [
            (at, UsagePeriod(interval, at)) for at in self._times if not manual[at].retain_anchor
        ]
        self._first = terms.usage_period
        self._default = terms.preserve_overage_at_reset

    def period_at(self, moment: datetime) -> Period:
        """[the latest reset ≤ moment, the next reset after it)."""
        i = bisect_right([at for at, _ in self._anchors], moment)
        usage_period = self._anchors[i - 1][1] if i else self._first
        start, end = (p := usage_period.period_at(moment)).start, p.end
        j = bisect_right(self._times, moment)
        if j:
            start = max(start, self._times[j - 1])
        if j < len(self._times):
            end = min(end, self._times[j])
        return Period(start, end)

    def preserves_overage(self, at: datetime) -> bool:
        reset = self._manual.get(at)
        if reset is None or reset.preserve_overage is None:
            return self._default
        return reset.preserve_overage

    def is_reset(self, at: datetime) -> bool:
        return self.period_at(at).start == at


def _start(terms: MeteredTerms, timeline: _Timeline, since: Snapshot | None) -> _Run:
    measuring = truncate_minute(terms.measure_usage_from)
    if since is None or since.at <= measuring:
        # A snapshot from before measuring carries nothing: the start is as cheap.
        return _Run(measuring, {}, ZERO)
    if not timeline.is_reset(since.at):
        raise ValueError(f"a snapshot must be taken at a period's start; {since.at} is not one")
    return _Run(since.at, dict(since.balances), since.overage)


def _run(
    terms: MeteredTerms,
    usage_between: UsageBetween,
    until: datetime,
    *,
    since: Snapshot | None = None,
    keep_from: datetime | None = None,
    timeline: _Timeline | None = None,
) -> _Run:
    """Run to `until` (a whole minute), keeping the segments that start at or after
    `keep_from` (with a cut there); the state is the one after everything at `until`."""
    timeline = timeline or _Timeline(terms)
    state = _start(terms, timeline, since)
    if since is not None and since.at > until:
        raise ValueError(f"the snapshot at {since.at} is after {until}")
    grants = [g.burn_grant() for g in terms.grants]
    while state.at < until:
        reset_at = timeline.period_at(state.at).end
        stop = min(reset_at, until)
        recurring: dict[datetime, list[GrantTerms]] = {}
        for g in terms.grants:
            for moment in g.recurrences(state.at, stop):
                recurring.setdefault(moment, []).append(g)
        cuts = set(recurring) | {stop}
        if keep_from is not None and state.at < keep_from < stop:
            cuts.add(keep_from)
        for cut in sorted(cuts):
            _burn_span(state, grants, cut, usage_between, keep_from)
            if cut == reset_at:
                _reset(state, terms.grants, cut, timeline.preserves_overage(cut))
            for g in recurring.get(cut, ()):
                state.balances[g.id] = g.amount
    return state


def _burn_span(
    state: _Run,
    grants: Sequence[Grant],
    end: datetime,
    usage_between: UsageBetween,
    keep_from: datetime | None,
) -> None:
    result = burn(
        grants, state.at, end, usage_between, balances=state.balances, overage=state.overage
    )
    keep = keep_from is not None and state.at >= keep_from
    carried = state.overage
    for seg in result.segments:
        if keep:
            at_start = {g: b + seg.grant_usage.get(g, ZERO) for g, b in seg.balances.items()}
            state.segments.append(
                HistorySegment(
                    period=Period(seg.start, seg.end),
                    usage=seg.usage,
                    overage=seg.overage,
                    balance_at_start=sum(at_start.values(), ZERO),
                    grant_balances_at_start=at_start,
                    balance_at_end=sum(seg.balances.values(), ZERO),
                    grant_balances_at_end=dict(seg.balances),
                    grant_usages=dict(seg.grant_usage),
                    overage_at_start=carried,
                )
            )
        carried = seg.overage
    state.at, state.balances, state.overage = end, dict(result.balances), result.overage


def _reset(state: _Run, grants: Sequence[GrantTerms], at: datetime, preserve: bool) -> None:
    """Roll over what the grants still usable hold; drop the rest; keep or forgive overage."""
    state.balances = {
        g.id: g.rollover(state.balances[g.id])
        for g in grants
        if g.id in state.balances and g.usable_at(at)
    }
    if not preserve:
        state.overage = ZERO


def current_period(terms: MeteredTerms, at: datetime) -> Period:
    """The usage period holding `value_minute(at)`: from the latest reset (a boundary or a
    manual one) to the next."""
    return _Timeline(terms).period_at(value_minute(at))


def value_at(
    terms: MeteredTerms,
    usage_between: UsageBetween,
    at: datetime,
    *,
    since: Snapshot | None = None,
) -> MeteredValue:
    """The entitlement's value at `value_minute(at)`. With `since` (a snapshot at a period's
    start, from `state_at`), only the span after it is computed: the same value."""
    minute = value_minute(at)
    timeline = _Timeline(terms)
    period = timeline.period_at(minute)
    state = _run(
        terms, usage_between, minute, since=since, keep_from=period.start, timeline=timeline
    )
    current = [s for s in state.segments if s.period.start >= period.start]
    # What is carried is absorbed at the minute itself by the grants usable then (a grant
    # taking effect, a rollover, a recurrence), as the next segment would: drawn this period.
    usable = sorted(
        (g.burn_grant() for g in terms.grants if g.usable_at(minute)), key=lambda g: g.burn_key
    )
    balances = {g.id: state.balances.get(g.id, g.amount) for g in usable}
    drawn: dict[str, Decimal] = {}
    overage = _draw(state.overage, usable, balances, drawn)
    balance = sum(balances.values(), ZERO)
    burnt = sum((sum(s.grant_usages.values(), ZERO) for s in current), ZERO)
    burnt += sum(drawn.values(), ZERO)
    measuring = truncate_minute(terms.measure_usage_from)
    return MeteredValue(
        balance=balance,
        usage=sum((s.usage for s in current), ZERO),
        overage=overage,
        total_available_grant_amount=balance + burnt,
        has_access=balance > ZERO or terms.is_soft_limit,
        grant_balances=balances,
        period=period,
        last_reset=max(period.start, measuring) if minute >= measuring else period.start,
    )


def state_at(
    terms: MeteredTerms,
    usage_between: UsageBetween,
    at: datetime,
    *,
    since: Snapshot | None = None,
) -> Snapshot:
    """The state at `value_minute(at)`: cache it at a period's start, pass it as `since`."""
    minute = value_minute(at)
    state = _run(terms, usage_between, minute, since=since)
    return Snapshot(minute, state.balances, state.overage)


def history(
    terms: MeteredTerms,
    usage_between: UsageBetween,
    start: datetime,
    end: datetime,
    *,
    since: Snapshot | None = None,
) -> list[HistorySegment]:
    """The burn-down segments of [start, end) (to their minutes: start truncated, end as a
    value's), cut where the usable grants change, at resets, recurrences and at `start`."""
    low, high = truncate_minute(start), value_minute(end)
    if since is not None and since.at > low:
        raise ValueError(f"the snapshot at {since.at} is after the history's start {low}")
    return _run(terms, usage_between, high, since=since, keep_from=low).segments
