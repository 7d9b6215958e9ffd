"""Stripe billing meters: make the configured meters exist, send meter events, read Stripe's
totals back.

Three jobs, each a small public function or class:

- `ensure_meters()` lists every billing meter, creates the configured ones that are missing,
  reactivates inactive ones, and refuses (ConfigError) a meter whose formula or payload keys
  differ from what metersync sends: Stripe cannot change those after creation, so a mismatch
  is a decision for a person, never something to "fix".
- `MeterEventSender` delivers meter events on v1 (one request per event) or on the v2 stream
  (a 15-minute session token, ≤ 100 events per request), under a rate limiter of its own:
  meter events have their own budget at Stripe (1,000/s live for v1, 10,000 requests/s for the
  stream), apart from the 25/100 ops/s that customer calls share.
- `event_summaries()` reads Stripe's per-customer totals, which `usage verify` compares with
  the ledger.

Exactly-once rests on the event `identifier`: Stripe counts an identifier once within 24 h and
rejects a repeat, so a resend with the same identifier (after a 500, a timeout, a lost answer)
can never double-count. `send()` therefore reports a rejected repeat as delivered.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from functools import partial
from typing import Any, Literal, TypeVar

import aiohttp
import stripe

from metersync.catalog.meters import MeterSettings
from metersync.errors import ConfigError, ExitCode, MetersyncError
from metersync.logs import get_logger
from metersync.mechanics.limiter import AdaptiveLimiter
from metersync.settings import Settings
from metersync.stripe_facts import (
    LIVE_METER_EVENT_RATE,
    METER_EVENT_CUSTOMER_KEY,
    METER_EVENT_FUTURE_LIMIT_S,
    METER_EVENT_IDENTIFIER_MAX,
    METER_EVENT_NAME_MAX,
    METER_EVENT_PAST_LIMIT_S,
    METER_EVENT_STREAM_BATCH_MAX,
    METER_EVENT_VALUE_KEY,
    SEND_PAST_MARGIN_S,
    TEST_METER_EVENT_RATE,
)
from metersync.sync.ports import ErrorKind, TargetError
from metersync.targets.stripe import StripeTarget
from metersync.usage.ports import Delivery, MeterEvent

T = TypeVar("T")
_log = get_logger("metersync.stripe.meters")

# Refresh a v2 session this long before Stripe says it expires, so that no batch leaves with a
# token that dies on the way.
SESSION_MARGIN_S = 60.0

# Error codes Stripe (or the emulator) gives these answers.
DUPLICATE_EVENT_CODE = "duplicate_meter_event"
SESSION_EXPIRED_CODE = "billing_meter_event_session_expired"
EVENT_NAME_TAKEN_CODE = "resource_already_exists"
ALREADY_ACTIVE_CODE = "meter_already_active"
# Stripe's code for a repeated identifier is undocumented (the emulator's code is a guess);
# its message is known: "An event already exists with identifier …". Either one identifies it.
_DUPLICATE_MESSAGE = re.compile(
    r"already exists with identifier|identifier\b.*\balready\b.*\b(received|used|exists|seen)\b",
    re.IGNORECASE | re.DOTALL,
)
# What a failed call can raise: Stripe's answers, and the transport's own failures (a body cut
# off while read arrives unwrapped). StripeTarget.classify() sorts all of them.
_CALL_ERRORS = (stripe.StripeError, asyncio.TimeoutError, ConnectionError, aiohttp.ClientError)

# Meter setup (ensure_meters, event_summaries) retries what is retryable a few times: a
# command run by a person should not fail on one 500.
SETUP_ATTEMPTS = 4
SETUP_BASE_DELAY_S = 0.5


def default_meter_event_rate(api_key: str) -> float:
    return (
        LIVE_METER_EVENT_RATE
        if api_key.startswith(("sk_live_", "rk_live_"))
        else TEST_METER_EVENT_RATE
    )


class StripeCallFailed(MetersyncError):
    """A meter call to Stripe failed for good (after the retries a setup call gets)."""

    def __init__(self, what: str, error: TargetError, code: str | None = None) -> None:
        super().__init__(f"stripe: {what} failed: {error.message}")
        self.error = error
        self.code = code
        # Bad credentials are a configuration problem (2); anything else is a failed item (1).
        self.exit_code = (
            ExitCode.BAD_INPUT if error.kind is ErrorKind.FATAL else ExitCode.SOME_FAILED
        )


# -- billing meters -----------------------------------------------------------------------------


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
        page = await _setup_call(
            target,
            "listing billing meters",
            partial(target.account.client.v1.billing.meters.list_async, params),  # type: ignore[arg-type]
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
        created = await _setup_call(
            target,
            f"creating the meter for {meter.slug!r}",
            lambda: target.account.client.v1.billing.meters.create_async(
                params,  # type: ignore[arg-type]
                {"idempotency_key": key},
            ),
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
        await _setup_call(
            target,
            f"reactivating meter {found.id}",
            lambda: target.account.client.v1.billing.meters.reactivate_async(
                found.id, options={"idempotency_key": key}
            ),
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


async def _setup_call(target: StripeTarget, what: str, call: Callable[[], Awaitable[T]]) -> T:
    """One call on the target's own limiter (meter CRUD and summaries are ordinary API calls),
    retried while retryable; StripeCallFailed when it gives up."""
    for attempt in range(SETUP_ATTEMPTS):
        try:
            return await target.account.call(call)
        except _CALL_ERRORS as exc:
            error = target.classify(exc)
            if error.kind is not ErrorKind.RETRYABLE or attempt == SETUP_ATTEMPTS - 1:
                raise StripeCallFailed(what, error, getattr(exc, "code", None)) from None
        await asyncio.sleep(SETUP_BASE_DELAY_S * 2**attempt)
    raise AssertionError("unreachable")  # the loop returns or raises


# -- event summaries ----------------------------------------------------------------------------


@dataclass(frozen=True)
class EventSummary:
    start_time: int
    end_time: int
    aggregated_value: float  # Stripe's type; whole numbers in, whole sums out


async def event_summaries(
    target: StripeTarget,
    meter_id: str,
    customer_id: str,
    start: int,
    end: int,
    window: Literal["hour", "day"] | None = None,
) -> list[EventSummary]:
    """Stripe's totals for one customer on one meter, over [start, end): one summary for the
    range, or one per hour or day that holds events (Stripe leaves empty windows out). Stripe
    wants start and end on minute boundaries, or on hour / day boundaries with a window."""
    summaries: list[EventSummary] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {
            "customer": customer_id,
            "start_time": start,
            "end_time": end,
            "limit": 100,
        }
        if window is not None:
            params["value_grouping_window"] = window
        if cursor is not None:
            params["starting_after"] = cursor
        page = await _setup_call(
            target,
            f"reading event summaries of meter {meter_id}",
            partial(
                target.account.client.v1.billing.meters.event_summaries.list_async,
                meter_id,
                params,  # type: ignore[arg-type]
            ),
        )
        summaries.extend(
            EventSummary(int(s.start_time), int(s.end_time), s.aggregated_value) for s in page.data
        )
        if not page.has_more or not page.data:
            return summaries
        cursor = page.data[-1].id


# -- meter events -------------------------------------------------------------------------------


@dataclass
class _Session:
    token: str
    expires_at: float  # unix seconds


class _SessionUnavailable(Exception):
    def __init__(self, error: TargetError) -> None:
        super().__init__(error.message)
        self.error = error


class MeterEventSender:
    """Delivers meter events to Stripe, exactly once per identifier.

    `send()` returns one Delivery per event, in order. Delivered means Stripe holds the event
    (or already held it: a repeated identifier). An undelivered event carries its error; a
    retryable one is to be sent again later with the SAME identifier, within 24 h (Stripe's
    uniqueness window), and a permanent one needs a person.

    v1 sends one request per event, with events of one customer and meter one after the other:
    Stripe allows one concurrent v1 call per customer per meter. v2 opens a session and posts
    batches of ≤ 100 to the stream. The stream validates asynchronously: a 2xx means Stripe
    took the batch, and an event it then finds invalid (unknown customer, inactive meter) is
    dropped and reported only through Stripe's meter error reports, never to the request. So
    every event of a 2xx batch counts as delivered here, and the checks that can be made
    locally (timestamp window, value, customer) are made before sending, for both APIs.

    Retryable failures are resent inside `send()` up to `retries` times, after a short pause,
    with the same identifiers: cheap, and safe because Stripe dedups on the identifier."""

    def __init__(
        self,
        target: StripeTarget,
        *,
        api: Literal["v1", "v2"] = "v1",
        rate: float = TEST_METER_EVENT_RATE,
        concurrency: int = 16,
        retries: int = 2,
        retry_delay_s: float = 0.5,
        session_margin_s: float = SESSION_MARGIN_S,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if api not in ("v1", "v2"):
            raise ValueError(f"api must be 'v1' or 'v2', got {api!r}")
        self.target = target
        self.api = api
        self.concurrency = concurrency
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.session_margin_s = session_margin_s
        # Meter events have their own budget at Stripe: their own limiter, so a usage push
        # never slows customer sync down, nor the other way round.
        self.limiter = AdaptiveLimiter(rate, burst=1.0)
        self.sessions_created = 0
        self._clock = clock
        self._session: _Session | None = None
        self._session_lock = asyncio.Lock()
        self._session_error: TargetError | None = None

    async def send(self, events: Sequence[MeterEvent]) -> list[Delivery]:
        _check_unique_identifiers(events)
        results: list[Delivery | None] = [None] * len(events)
        sendable: list[int] = []
        for index, event in enumerate(events):
            refusal = refuse_locally(event, now=time.time())
            if refusal is None:
                sendable.append(index)
            else:
                results[index] = Delivery(event.identifier, False, error=refusal)
        pending = sendable
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.retry_delay_s * 2 ** (attempt - 1))
            self._session_error = None
            delivered = await self._send_once([events[i] for i in pending])
            for index, delivery in zip(pending, delivered, strict=True):
                results[index] = delivery
            pending = [i for i, d in zip(pending, delivered, strict=True) if _retryable(d)]
            if not pending:
                break
        return [d for d in results if d is not None]

    async def _send_once(self, events: list[MeterEvent]) -> list[Delivery]:
        if not events:
            return []
        if self.api == "v1":
            return await self._send_v1(events)
        return await self._send_v2(events)

    # -- v1: one request per event -----------------------------------------------------------

    async def _send_v1(self, events: list[MeterEvent]) -> list[Delivery]:
        # Stripe: one concurrent v1 call per customer per meter. Each lane holds the events of
        # one (customer, meter) and sends them in turn; lanes run side by side.
        lanes: dict[tuple[str, str], list[int]] = {}
        for index, event in enumerate(events):
            lanes.setdefault((event.customer_id, event.event_name), []).append(index)
        results: list[Delivery | None] = [None] * len(events)
        slots = asyncio.Semaphore(self.concurrency)

        async def run_lane(indexes: list[int]) -> None:
            async with slots:
                for index in indexes:
                    results[index] = await self._post_v1(events[index])

        await asyncio.gather(*(run_lane(lane) for lane in lanes.values()))
        return [d for d in results if d is not None]

    async def _post_v1(self, event: MeterEvent) -> Delivery:
        await self.limiter.acquire()
        try:
            await self.target.account.client.v1.billing.meter_events.create_async(
                {
                    "event_name": event.event_name,
                    "payload": _payload(event),
                    "identifier": event.identifier,
                    "timestamp": event.timestamp,
                }
            )
        except _CALL_ERRORS as exc:
            if is_duplicate_event(exc):
                return Delivery(event.identifier, True, duplicate=True)
            return Delivery(event.identifier, False, error=self._failure(exc))
        return Delivery(event.identifier, True)

    # -- v2: a session and the stream ----------------------------------------------------------

    async def _send_v2(self, events: list[MeterEvent]) -> list[Delivery]:
        batches = [
            events[i : i + METER_EVENT_STREAM_BATCH_MAX]
            for i in range(0, len(events), METER_EVENT_STREAM_BATCH_MAX)
        ]
        slots = asyncio.Semaphore(self.concurrency)

        async def run_batch(batch: list[MeterEvent]) -> list[Delivery]:
            async with slots:
                return await self._post_batch(batch)

        answered = await asyncio.gather(*(run_batch(b) for b in batches))
        return [delivery for batch in answered for delivery in batch]

    async def _post_batch(self, batch: list[MeterEvent]) -> list[Delivery]:
        body = {"events": [_stream_event(e) for e in batch]}
        error: TargetError | None = None
        # Two tries: a session that expires on the way (or that Stripe no longer knows) is
        # replaced and the batch resent, with the same identifiers.
        for _ in range(2):
            try:
                session = await self._current_session()
            except _SessionUnavailable as exc:
                error = exc.error
                break
            await self.limiter.acquire()
            try:
                await self.target.account.client.v2.billing.meter_event_stream.create_async(
                    body,  # type: ignore[arg-type]
                    # The stream authenticates with the session's token, not the API key.
                    {"api_key": session.token},
                )
            except _CALL_ERRORS as exc:
                if _session_rejected(exc):
                    self._forget_session(session)
                    error = TargetError(
                        ErrorKind.RETRYABLE,
                        f"the meter event session was refused twice: {exc}",
                        request_id=getattr(exc, "request_id", None),
                    )
                    continue
                error = self._failure(exc)
                break
            return [Delivery(e.identifier, True) for e in batch]
        assert error is not None
        return [Delivery(e.identifier, False, error=error) for e in batch]

    async def _current_session(self) -> _Session:
        # One session for all concurrent batches: whoever comes first while it is missing or
        # about to expire makes the new one, the others wait and use it.
        async with self._session_lock:
            if self._session_error is not None:  # failed already in this pass: do not hammer
                raise _SessionUnavailable(self._session_error)
            session = self._session
            if session is None or self._now() >= session.expires_at - self.session_margin_s:
                session = await self._new_session()
                self._session = session
            return session

    async def _new_session(self) -> _Session:
        try:
            # An ordinary API call (api host, default rate class): the target's limiter.
            created = await self.target.account.call(
                lambda: self.target.account.client.v2.billing.meter_event_session.create_async()
            )
        except _CALL_ERRORS as exc:
            self._session_error = self.target.classify(exc)
            raise _SessionUnavailable(self._session_error) from None
        self.sessions_created += 1
        expires_at = datetime.fromisoformat(created.expires_at).timestamp()
        _log.debug("opened a meter event session", session=created.id, expires_at=expires_at)
        return _Session(created.authentication_token, expires_at)

    def _forget_session(self, session: _Session) -> None:
        if self._session is session:
            self._session = None

    def _now(self) -> float:
        # Read at call time, not bound at construction, so freezegun's clock is the one read.
        return self._clock() if self._clock is not None else time.time()

    # -- errors --------------------------------------------------------------------------------

    def _failure(self, exc: BaseException) -> TargetError:
        error = self.target.classify(exc)
        if error.throttled:
            # A 429 slows every meter event of the run, not just this one.
            self.limiter.throttled()
        return error


def is_duplicate_event(exc: BaseException) -> bool:
    """Stripe's answer to an identifier it already counted (within 24 h): delivered before."""
    if not isinstance(exc, stripe.InvalidRequestError) or exc.http_status != 400:
        return False
    if exc.code == DUPLICATE_EVENT_CODE:
        return True
    message = exc.user_message or str(exc)
    return bool(_DUPLICATE_MESSAGE.search(message))


def refuse_locally(event: MeterEvent, *, now: float) -> TargetError | None:
    """Why Stripe would refuse this event whatever we do, if we can tell without asking.

    The v2 stream would accept the request and drop such an event silently; refusing it here
    makes it a visible, permanent failure on both APIs."""
    problem = None
    if not 1 <= len(event.identifier) <= METER_EVENT_IDENTIFIER_MAX:
        # On the stream one malformed event fails its whole batch of 100: catch it here.
        problem = f"identifier must have 1 to {METER_EVENT_IDENTIFIER_MAX} characters"
    elif not 1 <= len(event.event_name) <= METER_EVENT_NAME_MAX:
        problem = f"event_name must have 1 to {METER_EVENT_NAME_MAX} characters"
    elif not event.customer_id:
        problem = f"payload.{METER_EVENT_CUSTOMER_KEY} is empty"
    elif event.value < 0:
        problem = f"value {event.value} is negative; Stripe takes whole numbers ≥ 0"
    elif event.timestamp < now - METER_EVENT_PAST_LIMIT_S + SEND_PAST_MARGIN_S:
        problem = (
            f"timestamp {event.timestamp} is older than Stripe's 35-day window for meter events"
        )
    elif event.timestamp > now + METER_EVENT_FUTURE_LIMIT_S:
        problem = f"timestamp {event.timestamp} is more than 5 minutes in the future"
    if problem is None:
        return None
    return TargetError(ErrorKind.PERMANENT, f"meter event {event.identifier}: {problem}")


def _check_unique_identifiers(events: Sequence[MeterEvent]) -> None:
    # Two events with one identifier in one call: Stripe would count the first and drop the
    # second as "already delivered", losing its value. That is a caller's bug.
    seen: set[str] = set()
    for event in events:
        if event.identifier in seen:
            raise ValueError(f"identifier {event.identifier!r} appears twice in one send()")
        seen.add(event.identifier)


def _retryable(delivery: Delivery) -> bool:
    return (
        not delivery.delivered
        and delivery.error is not None
        and delivery.error.kind is ErrorKind.RETRYABLE
    )


def _session_rejected(exc: BaseException) -> bool:
    """The stream refused the token: expired (TemporarySessionExpiredError, code
    billing_meter_event_session_expired) or unknown to Stripe (401)."""
    if isinstance(exc, stripe.TemporarySessionExpiredError):
        return True
    if isinstance(exc, stripe.StripeError):
        return exc.code == SESSION_EXPIRED_CODE or exc.http_status == 401
    return False


def _stream_event(event: MeterEvent) -> dict[str, Any]:
    return {
        "event_name": event.event_name,
        "payload": _payload(event),
        "identifier": event.identifier,
        # The stream takes RFC 3339 times, not v1's unix seconds.
        "timestamp": datetime.fromtimestamp(event.timestamp, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z"),
    }


def meter_event_sender(settings: Settings, target: StripeTarget) -> MeterEventSender:
    """The sender the settings describe: [usage] stripe_api, meter_event_rate, concurrency."""
    usage = settings.usage
    rate = usage.meter_event_rate
    if rate is None:
        key = settings.stripe.resolved_api_key()
        rate = default_meter_event_rate(key.get_secret_value() if key else "")
    return MeterEventSender(target, api=usage.stripe_api, rate=rate, concurrency=usage.concurrency)


def _payload(event: MeterEvent) -> dict[str, str]:
    # Stripe's payload values are strings; the value a whole number.
    return {METER_EVENT_CUSTOMER_KEY: event.customer_id, METER_EVENT_VALUE_KEY: str(event.value)}
