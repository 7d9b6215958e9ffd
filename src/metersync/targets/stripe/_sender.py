"""The meter event sender: delivers meter events to Stripe on v1 (one request per event) or on
the v2 stream (a 15-minute session token, ≤ 100 events per request), under a rate limiter of its
own: meter events have their own budget at Stripe (1,000/s live for v1, 10,000 requests/s for
the stream), apart from the 25/100 ops/s that customer calls share.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import msgspec

from metersync.logs import get_logger
from metersync.mechanics.limiter import AdaptiveLimiter
from metersync.settings import Settings
from metersync.stripe_facts import (
    LIVE_METER_EVENT_RATE,
    METER_EVENT_STREAM_BATCH_MAX,
    TEST_METER_EVENT_RATE,
)
from metersync.sync.ports import ErrorKind, TargetError
from metersync.targets.stripe._calls import CALL_ERRORS, classify
from metersync.targets.stripe._customers import StripeTarget
from metersync.targets.stripe._events import (
    STREAM_PATH,
    V1_PATH,
    check_unique_identifiers,
    is_duplicate_event,
    refuse_locally,
    session_rejected,
    stream_event,
    v1_form,
)
from metersync.usage.ports import Delivery, MeterEvent

_log = get_logger("metersync.stripe.meters")

# The meter event limiter's bucket, in seconds of its rate (see MeterEventSender.__init__).
LIMITER_BURST_S = 0.05

# Refresh a v2 session this long before Stripe says it expires, so that no batch leaves with a
# token that dies on the way.
SESSION_MARGIN_S = 60.0


def default_meter_event_rate(api_key: str) -> float:
    return (
        LIVE_METER_EVENT_RATE
        if api_key.startswith(("sk_live_", "rk_live_"))
        else TEST_METER_EVENT_RATE
    )


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
        # never slows customer sync down, nor the other way round. Its bucket holds 50 ms of
        # its rate: at 1,000/s a bucket of one token refills every millisecond, and an event
        # loop busy with a couple of hundred answers (or waiting for a busy CPU) misses most of
        # those refills, since a token that finds the bucket full is lost: that held v1 at a
        # third of its rate. A stall of up to 50 ms is now caught up afterwards; Stripe's own
        # bucket takes far larger bursts than 5% of a second.
        self.limiter = AdaptiveLimiter(rate, burst=max(1.0, rate * LIMITER_BURST_S))
        self.sessions_created = 0
        self._clock = clock
        self._session: _Session | None = None
        self._session_lock = asyncio.Lock()
        self._session_error: TargetError | None = None

    async def send(self, events: Sequence[MeterEvent]) -> list[Delivery]:
        check_unique_identifiers(events)
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
            await self.target.account.post_meter_events_raw(V1_PATH, v1_form(event), api="V1")
        except CALL_ERRORS as exc:
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
        # Encoded once, resent as is: a retry carries the same identifiers. msgspec encodes
        # the 100 events several times faster than json.dumps.
        body = msgspec.json.encode({"events": [stream_event(e) for e in batch]})
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
                # The stream authenticates with the session's token, not the API key.
                await self.target.account.post_meter_events_raw(
                    STREAM_PATH, body, api="V2", api_key=session.token
                )
            except CALL_ERRORS as exc:
                if session_rejected(exc):
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
                self.target.account.client.v2.billing.meter_event_session.create_async
            )
        except CALL_ERRORS as exc:
            self._session_error = classify(exc)
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
        error = classify(exc)
        if error.throttled:
            # A 429 slows every meter event of the run, not just this one.
            self.limiter.throttled()
        return error


def _retryable(delivery: Delivery) -> bool:
    return (
        not delivery.delivered
        and delivery.error is not None
        and delivery.error.kind is ErrorKind.RETRYABLE
    )


def meter_event_sender(settings: Settings, target: StripeTarget) -> MeterEventSender:
    """The sender the settings describe: [usage] stripe_api, meter_event_rate, concurrency."""
    usage = settings.usage
    rate = usage.meter_event_rate
    if rate is None:
        key = settings.stripe.resolved_api_key()
        rate = default_meter_event_rate(key.get_secret_value() if key else "")
    return MeterEventSender(target, api=usage.stripe_api, rate=rate, concurrency=usage.concurrency)
