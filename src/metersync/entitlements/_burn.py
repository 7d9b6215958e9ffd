"""Burning usage down through grants within one usage period: pure, in decimal arithmetic.

A period is cut into segments wherever the set of usable grants changes (a grant takes effect,
expires or is voided). In each segment, first any overage carried from earlier in the period
is absorbed by the grants now usable, then the segment's usage burns them, in burn order:
priority (1 first), then the earlier expiry, then no expiry, then creation. What no grant
covers is overage, carried to the next segment. A balance never goes below zero.

Rollover at a period's end, resets and recurrence belong to the layer that strings periods
together; this module takes the balances a period starts with.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from itertools import pairwise

ZERO = Decimal(0)


@dataclass(frozen=True)
class Grant:
    """A grant as the burn sees it: what it holds when it takes effect, and when it is usable."""

    id: str
    amount: Decimal
    priority: int  # 1 is burnt first
    effective_at: datetime
    created_at: datetime
    expires_at: datetime | None = None
    voided_at: datetime | None = None

    def usable_at(self, moment: datetime) -> bool:
        ends = [t for t in (self.expires_at, self.voided_at) if t is not None]
        return self.effective_at <= moment and all(moment < end for end in ends)

    @property
    def burn_key(self) -> tuple[int, int, datetime, datetime, str]:
        # No expiry sorts after every expiry; ids break the last tie so the order is total.
        expiry = self.expires_at
        return (
            self.priority,
            0 if expiry is not None else 1,
            expiry if expiry is not None else self.created_at,
            self.created_at,
            self.id,
        )


@dataclass(frozen=True)
class Segment:
    """[start, end): the grants usable in it did not change."""

    start: datetime
    end: datetime
    usage: Decimal
    grant_usage: Mapping[str, Decimal]  # burnt from each grant, absorbed overage included
    overage: Decimal  # carried at the segment's end
    balances: Mapping[str, Decimal]  # of the usable grants, at the segment's end


@dataclass(frozen=True)
class Burn:
    """The segments of [start, end), and where they leave the balances and the overage."""

    segments: Sequence[Segment]
    balances: Mapping[str, Decimal]  # every grant seen: expired and voided ones keep theirs
    overage: Decimal  # at the end: usage no grant covered, nor has yet
    usage: Decimal  # of the whole span

    @property
    def balance(self) -> Decimal:
        """What the grants usable at the end still hold."""
        return sum(self.segments[-1].balances.values(), ZERO) if self.segments else ZERO


def burn(
    grants: Sequence[Grant],
    start: datetime,
    end: datetime,
    usage_between: Callable[[datetime, datetime], Decimal],
    *,
    balances: Mapping[str, Decimal] | None = None,
    overage: Decimal = ZERO,
) -> Burn:
    """Burn the usage of [start, end) down through `grants`. `balances` holds what grants
    carried into the period (a rollover); a grant not in it starts from its amount when it
    takes effect. `overage` is carried into the period (kept at a reset that preserves it)."""
    held = dict(balances or {})
    cuts = {start, end}
    for grant in grants:
        for moment in (grant.effective_at, grant.expires_at, grant.voided_at):
            if moment is not None and start < moment < end:
                cuts.add(moment)
    bounds = sorted(cuts)
    segments: list[Segment] = []
    total = ZERO
    for seg_start, seg_end in pairwise(bounds):
        usable = sorted((g for g in grants if g.usable_at(seg_start)), key=lambda g: g.burn_key)
        for grant in usable:
            held.setdefault(grant.id, grant.amount)
        used = usage_between(seg_start, seg_end)
        if used < ZERO:
            raise ValueError(f"usage between {seg_start} and {seg_end} is negative: {used}")
        total += used
        burnt: dict[str, Decimal] = {}
        # The carried overage first: a grant that becomes usable pays what was overdrawn.
        overage = _draw(overage, usable, held, burnt)
        overage += _draw(used, usable, held, burnt)
        segments.append(
            Segment(
                seg_start,
                seg_end,
                used,
                burnt,
                overage,
                {g.id: held[g.id] for g in usable},
            )
        )
    return Burn(segments, held, overage, total)


def _draw(
    amount: Decimal, usable: Sequence[Grant], held: dict[str, Decimal], burnt: dict[str, Decimal]
) -> Decimal:
    """Take `amount` from the usable grants in burn order; what is left over."""
    for grant in usable:
        if amount <= ZERO:
            break
        take = min(amount, held[grant.id])
        if take > ZERO:
            held[grant.id] -= take
            burnt[grant.id] = burnt.get(grant.id, ZERO) + take
            amount -= take
    return amount
