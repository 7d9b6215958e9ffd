"""The Stripe target's pure parts: rate limiting, error classification, rendering."""

from __future__ import annotations

import asyncio
import itertools

import pytest
import stripe

from metersync.sync.limiter import AdaptiveLimiter
from metersync.targets.base import ErrorKind
from metersync.targets.stripe import LIVE_RATE, TEST_RATE, StripeTarget, default_rate


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_limiter_spaces_requests_at_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(10.0, burst=1.0, clock=clock)
    real_sleep = asyncio.sleep

    async def fake_sleep(seconds: float) -> None:  # time passes only when the limiter waits
        clock.now += seconds
        await real_sleep(0)

    monkeypatch.setattr("metersync.sync.limiter.asyncio.sleep", fake_sleep)

    async def take(n: int) -> list[float]:
        stamps = []
        for _ in range(n):
            await limiter.acquire()
            stamps.append(clock.now)
        return stamps

    stamps = asyncio.run(take(5))
    assert stamps[0] == 0.0  # one token to start with
    assert [round(b - a, 3) for a, b in itertools.pairwise(stamps)] == [0.1, 0.1, 0.1, 0.1]
    assert limiter.stats.acquired == 5


def test_a_429_halves_the_whole_rate_and_it_recovers() -> None:
    clock = FakeClock()
    limiter = AdaptiveLimiter(20.0, clock=clock)
    limiter.throttled()
    assert limiter.current == 10.0
    limiter.throttled()  # the same overload, seen by another request in flight
    assert limiter.current == 10.0 and limiter.stats.throttled == 2
    clock.now += 1.0
    limiter.throttled()
    assert limiter.current == 5.0
    clock.now += 0.5  # within a second of the last halving: no recovery yet
    limiter._refill()
    assert limiter.current == 5.0
    clock.now += 3.0
    limiter._refill()
    assert limiter.current == pytest.approx(20.0)  # +25% of 20/s for each second since
    clock.now += 10.0
    limiter._refill()
    assert limiter.current == 20.0  # capped at the configured rate


def test_default_rates_follow_the_key_mode() -> None:
    assert default_rate("sk_test_x") == TEST_RATE == 25
    assert default_rate("rk_live_x") == LIVE_RATE == 100


@pytest.mark.parametrize(
    ("error", "kind", "throttled"),
    [
        (stripe.RateLimitError("slow down", http_status=429), ErrorKind.RETRYABLE, True),
        (stripe.APIConnectionError("reset"), ErrorKind.RETRYABLE, False),
        (stripe.APIError("boom", http_status=500), ErrorKind.RETRYABLE, False),
        (stripe.APIError("conflict", http_status=409), ErrorKind.RETRYABLE, False),
        (stripe.AuthenticationError("bad key", http_status=401), ErrorKind.FATAL, False),
        (
            stripe.InvalidRequestError(
                "No such customer", "id", code="resource_missing", http_status=404
            ),
            ErrorKind.GONE,
            False,
        ),
        (
            stripe.InvalidRequestError("Invalid email", "email", http_status=400),
            ErrorKind.PERMANENT,
            False,
        ),
        (stripe.IdempotencyError("reused key", http_status=400), ErrorKind.PERMANENT, False),
        (
            stripe.InvalidRequestError(
                "lock timeout", None, http_status=400, headers={"stripe-should-retry": "true"}
            ),
            ErrorKind.RETRYABLE,
            False,
        ),
    ],
)
def test_errors_are_classified(error: stripe.StripeError, kind: ErrorKind, throttled: bool) -> None:
    classified = StripeTarget("sk_test_x").classify(error)
    assert (classified.kind, classified.throttled) == (kind, throttled)


def test_non_stripe_errors_are_bugs_and_surface() -> None:
    with pytest.raises(KeyError):
        StripeTarget("sk_test_x").classify(KeyError("oops"))
