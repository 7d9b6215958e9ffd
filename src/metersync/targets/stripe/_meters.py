"""Billing meter provisioning: make the configured meters exist, active, in Stripe.

`ensure_meters()` lists every billing meter, creates the configured ones that are missing,
reactivates inactive ones, and refuses (ConfigError) a meter whose formula or payload keys
differ from what metersync sends: Stripe cannot change those after creation, so a mismatch is a
decision for a person, never something to "fix".
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal

import stripe

from metersync.catalog.meters import MeterSettings
from metersync.errors import ConfigError
from metersync.logs import get_logger
from metersync.stripe_facts import METER_EVENT_CUSTOMER_KEY, METER_EVENT_VALUE_KEY
from metersync.sync.ports import ErrorKind, TargetError
from metersync.targets.stripe._calls import StripeCallFailed, setup_call
from metersync.targets.stripe._customers import StripeTarget

_log = get_logger("metersync.stripe.meters")

# Error codes Stripe (or the emulator) gives these answers.
EVENT_NAME_TAKEN_CODE = "resource_already_exists"
ALREADY_ACTIVE_CODE = "meter_already_active"


@dataclass(frozen=True)
class StripeMeter:
    """A billing meter as Stripe holds it: the fields metersync reads."""

    id: str
    event_name: str
    display_name: str
    status: str  # "active" or "inactive"
    formula: str  # default_aggregation.formula: sum, count or last
    customer_payload_key: str  # customer_mapping.event_payload_key
    value_payload_key: str  # value_settings.event_payload_key
    created: int
    deactivated_at: int | None = None

    @property
    def active(self) -> bool:
        return self.status == "active"


class MeterOutcome(StrEnum):
    CREATED = "created"
    OK = "ok"
    REACTIVATED = "reactivated"
    WOULD_CREATE = "would_create"  # dry run
    WOULD_REACTIVATE = "would_reactivate"  # dry run


@dataclass(frozen=True)
class MeterCheck:
    slug: str
    event_name: str
    meter_id: str | None  # None: a meter a dry run would create
    outcome: MeterOutcome
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "eventName": self.event_name,
            "stripeMeterId": self.meter_id,
            "outcome": self.outcome.value,
            "note": self.note or None,
        }


async def list_meters(target: StripeTarget) -> list[StripeMeter]:
    """Every billing meter, active and inactive (no status filter), all pages."""
    meters: list[StripeMeter] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 100}
        if cursor is not None:
            params["starting_after"] = cursor
        page = await setup_call(
            target.account,
            "listing billing meters",
            target.account.client.v1.billing.meters.list_async,
            params,  # type: ignore[arg-type]
        )
        meters.extend(_stripe_meter(m) for m in page.data)
        if not page.has_more or not page.data:
            return meters
        cursor = page.data[-1].id


def meters_by_event_name(meters: Sequence[StripeMeter]) -> dict[str, StripeMeter]:
    """The meter that takes each event_name's events: the active one, else the newest inactive
    one (Stripe keeps any number of inactive meters under one event_name) (pure)."""
    chosen: dict[str, StripeMeter] = {}
    for meter in meters:
        held = chosen.get(meter.event_name)
        if held is None or (meter.active, meter.created) > (held.active, held.created):
            chosen[meter.event_name] = meter
    return chosen


async def ensure_meters(
    target: StripeTarget, meters: Sequence[MeterSettings], *, dry_run: bool = False
) -> list[MeterCheck]:
    """Make every configured meter with a `stripe` section exist, active, in Stripe.

    All meters are checked before anything is written: a mismatch anywhere raises ConfigError
    (naming every mismatched field) and creates nothing. Idempotent: a second run finds every
    meter and writes nothing."""
    wanted = [m for m in meters if m.stripe is not None]
    if not wanted:
        return []
    existing = await list_meters(target)
    decisions = [_decide(meter, existing) for meter in wanted]
    problems = [problem for d in decisions for problem in d.problems]
    if problems:
        raise ConfigError("; ".join(problems) + MISMATCH_HINT)
    return [await _carry_out(target, d, dry_run=dry_run) for d in decisions]


MISMATCH_HINT = (
    " (Stripe cannot change a meter's formula or payload keys after creation: deactivate the "
    "meter in Stripe and metersync creates a correct one, or set another stripe.event_name)"
)


def meter_mismatches(meter: MeterSettings, found: StripeMeter) -> list[str]:
    """What a Stripe meter has that metersync's events for `meter` cannot work with (pure)."""
    needed = {
        "default_aggregation.formula": (found.formula, meter.stripe_formula),
        "customer_mapping.event_payload_key": (
            found.customer_payload_key,
            METER_EVENT_CUSTOMER_KEY,
        ),
        "value_settings.event_payload_key": (found.value_payload_key, METER_EVENT_VALUE_KEY),
    }
    return [
        f"meter {meter.slug!r}: Stripe meter {found.id} (event_name {found.event_name!r}) has "
        f"{field} {have!r}, metersync needs {want!r}"
        + (f" for a {meter.aggregation} meter" if field == "default_aggregation.formula" else "")
        for field, (have, want) in needed.items()
        if have != want
    ]


@dataclass(frozen=True)
class _Decision:
    meter: MeterSettings
    action: Literal["create", "ok", "reactivate", "mismatch"]
    found: StripeMeter | None = None
    note: str = ""
    problems: tuple[str, ...] = ()

    @property
    def event_name(self) -> str:
        assert self.meter.stripe is not None
        return self.meter.stripe.event_name


def _decide(meter: MeterSettings, existing: Sequence[StripeMeter]) -> _Decision:
    """What to do for one configured meter, given every meter Stripe has (pure).

    Stripe lets one active meter hold an event_name, and any number of inactive ones. The
    active one must match. Without one, the newest matching inactive meter is reactivated.
    Inactive meters that do not match are left alone: someone retired them, and since Stripe
    cannot change a meter's formula, retiring is how a wrong meter is replaced."""
    assert meter.stripe is not None
    named = [m for m in existing if m.event_name == meter.stripe.event_name]
    active = [m for m in named if m.active]
    if active:
        problems = tuple(p for m in active for p in meter_mismatches(meter, m))
        return _Decision(meter, "mismatch" if problems else "ok", active[0], problems=problems)
    inactive = sorted(named, key=lambda m: m.created, reverse=True)
    fitting = [m for m in inactive if not meter_mismatches(meter, m)]
    if fitting:
        return _Decision(meter, "reactivate", fitting[0], note=f"{fitting[0].id} was inactive")
    retired = ", ".join(m.id for m in inactive)
    note = f"left inactive (settings differ): {retired}" if retired else ""
    return _Decision(meter, "create", note=note)


async def _carry_out(target: StripeTarget, decision: _Decision, *, dry_run: bool) -> MeterCheck:
    meter, found = decision.meter, decision.found
    if decision.action == "ok":
        assert found is not None
        return MeterCheck(meter.slug, decision.event_name, found.id, MeterOutcome.OK)
    if decision.action == "reactivate":
        assert found is not None
        if dry_run:
            outcome = MeterOutcome.WOULD_REACTIVATE
        else:
            await _reactivate(target, found)
            outcome = MeterOutcome.REACTIVATED
            _log.warning(
                "reactivated an inactive Stripe meter", meter=meter.slug, stripe_meter=found.id
            )
        return MeterCheck(meter.slug, decision.event_name, found.id, outcome, decision.note)
    if dry_run:
        return MeterCheck(
            meter.slug, decision.event_name, None, MeterOutcome.WOULD_CREATE, decision.note
        )
    return await _create(target, decision)


def create_params(meter: MeterSettings) -> dict[str, Any]:
    """The POST /v1/billing/meters parameters for a configured meter (pure)."""
    assert meter.stripe is not None
    return {
        "display_name": meter.stripe.display_name or meter.slug,
        "event_name": meter.stripe.event_name,
        "default_aggregation": {"formula": meter.stripe_formula},
        "customer_mapping": {"type": "by_id", "event_payload_key": METER_EVENT_CUSTOMER_KEY},
        "value_settings": {"event_payload_key": METER_EVENT_VALUE_KEY},
    }


def create_idempotency_key(params: dict[str, Any]) -> str:
    """Derived from the event name and the parameters: a retried create (lost answer, crash)
    replays Stripe's first answer instead of making a second meter, and a create with other
    parameters (the config changed) gets a key of its own rather than Stripe's
    idempotency_error for "same key, different parameters"."""
    name = hashlib.sha256(params["event_name"].encode()).hexdigest()[:24]
    content = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return f"metersync-stripe-meter-create-{name}-{content}"


async def _create(target: StripeTarget, decision: _Decision) -> MeterCheck:
    meter = decision.meter
    params = create_params(meter)
    key = create_idempotency_key(params)
    try:
        created = await setup_call(
            target.account,
            f"creating the meter for {meter.slug!r}",
            target.account.client.v1.billing.meters.create_async,
            params,  # type: ignore[arg-type]
            {"idempotency_key": key},
        )
    except StripeCallFailed as exc:
        if exc.code != EVENT_NAME_TAKEN_CODE:
            raise
        # Another run created an active meter with this event_name since we listed.
        return await _adopt_concurrent(target, meter)
    _log.info("created a Stripe meter", meter=meter.slug, stripe_meter=created.id)
    return MeterCheck(
        meter.slug, decision.event_name, created.id, MeterOutcome.CREATED, decision.note
    )


async def _adopt_concurrent(target: StripeTarget, meter: MeterSettings) -> MeterCheck:
    decision = _decide(meter, await list_meters(target))
    if decision.problems:
        raise ConfigError("; ".join(decision.problems) + MISMATCH_HINT)
    if decision.action != "ok" or decision.found is None:
        raise StripeCallFailed(
            f"creating the meter for {meter.slug!r}",
            TargetError(
                ErrorKind.RETRYABLE,
                "Stripe said the event name is taken, but lists no active meter with it",
            ),
        )
    return MeterCheck(
        meter.slug,
        decision.event_name,
        decision.found.id,
        MeterOutcome.OK,
        "created by another run",
    )


async def _reactivate(target: StripeTarget, found: StripeMeter) -> None:
    # Keyed on this deactivation: a retry after a lost answer replays it, a later deactivation
    # gets a key of its own.
    key = f"metersync-stripe-meter-reactivate-{found.id}-{found.deactivated_at or 0}"
    try:
        await setup_call(
            target.account,
            f"reactivating meter {found.id}",
            target.account.client.v1.billing.meters.reactivate_async,
            found.id,
            options={"idempotency_key": key},
        )
    except StripeCallFailed as exc:
        if exc.code != ALREADY_ACTIVE_CODE:  # someone else reactivated it: the goal is met
            raise


def _stripe_meter(meter: stripe.billing.Meter) -> StripeMeter:
    return StripeMeter(
        id=meter.id,
        event_name=meter.event_name,
        display_name=meter.display_name,
        status=meter.status,
        formula=meter.default_aggregation.formula,
        customer_payload_key=meter.customer_mapping.event_payload_key,
        value_payload_key=meter.value_settings.event_payload_key,
        created=int(meter.created),
        deactivated_at=meter.status_transitions.deactivated_at,
    )
