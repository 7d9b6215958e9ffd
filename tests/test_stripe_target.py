"""The Stripe target's pure parts: rate limiting, error classification, rendering."""

from __future__ import annotations

import asyncio
import itertools
import json
from datetime import UTC, datetime

import pytest
import stripe

from metersync.catalog.views import BillingAddress, Customer
from metersync.mechanics.limiter import AdaptiveLimiter
from metersync.stripe_facts import LIVE_REQUEST_RATE as LIVE_RATE
from metersync.stripe_facts import TEST_REQUEST_RATE as TEST_RATE
from metersync.sync.ports import MANAGED_KEY, ErrorKind
from metersync.targets.stripe import StripeTarget, default_rate
from metersync.targets.stripe._customer_records import decode_page, external, listed


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

    monkeypatch.setattr("metersync.mechanics.limiter.asyncio.sleep", fake_sleep)

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
    assert limiter.current_rate() == 5.0
    clock.now += 3.0
    assert limiter.current_rate() == pytest.approx(20.0)  # +25% of 20/s for each second since
    clock.now += 10.0
    assert limiter.current_rate() == 20.0  # capped at the configured rate


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


# -- rendering and reading -----------------------------------------------------------------------

CUSTOMER_JSON = {
    "id": "cus_Pinned0001",
    "object": "customer",
    "address": {
        "city": "Berlin",
        "country": "DE",
        "line1": "1 Main St",
        "line2": None,
        "postal_code": "10115",
        "state": None,
    },
    "balance": 0,
    "created": 1714564800,
    "description": None,
    "email": "billing@acme.test",
    "invoice_settings": {"custom_fields": None, "default_payment_method": None},
    "metadata": {"plan": "pro", MANAGED_KEY: "acme"},
    "name": "Acme",
    "phone": "+49 30 1234",
    "preferred_locales": [],
}


def test_a_list_page_reads_as_the_full_object_does() -> None:
    other = {**CUSTOMER_JSON, "id": "cus_Pinned0002", "address": None, "metadata": {}}
    body = json.dumps({"object": "list", "data": [CUSTOMER_JSON, other], "has_more": True})
    page = decode_page(body)
    assert page.has_more
    assert [listed(c) for c in page.data] == [external(CUSTOMER_JSON), external(other)]


def test_render_output_is_pinned_to_its_render_version() -> None:
    """The full reconcile trusts fingerprints made under StripeTarget.render_version. If this
    fails because render() changed on purpose, bump render_version along with the expected
    output here: links fingerprinted under the old rendering are then planned afresh."""
    customer = Customer(
        id="01J0000000000000000000000",
        key="acme",
        name="Acme",
        description=None,
        primary_email="billing@acme.test",
        currency="EUR",
        billing_address=BillingAddress(country="DE", city="Berlin", phone_number="+49 30 1234"),
        metadata={"plan": "pro", "empty": ""},
        subject_keys=("acme-api",),
        auto_created=False,
        change_seq=7,
        created_at=datetime(2024, 5, 1, tzinfo=UTC),
        updated_at=datetime(2024, 5, 1, tzinfo=UTC),
        deleted_at=None,
    )
    target = StripeTarget("sk_test_x")
    assert target.render_version == "stripe-customer/1"
    assert target.render(customer).state() == {
        "fields": {
            "name": "Acme",
            "email": "billing@acme.test",
            "description": None,
            "phone": "+49 30 1234",
            "address": {
                "line1": None,
                "line2": None,
                "city": "Berlin",
                "state": None,
                "postal_code": None,
                "country": "DE",
            },
        },
        "metadata": {"plan": "pro", MANAGED_KEY: "acme"},
    }
