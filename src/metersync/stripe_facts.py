"""What Stripe does that metersync relies on, one constant each, with the behaviour it comes from.

Every module that needs one of these imports it from here, so that a change in Stripe's rules is
one edit (docs/design.md, "Stripe facts").
"""

from __future__ import annotations

from datetime import timedelta

# -- meter events ---------------------------------------------------------------------------------

# Stripe accepts meter events timestamped within the past 35 days and at most 5 minutes ahead.
METER_EVENT_PAST_LIMIT_S = 35 * 86400
METER_EVENT_FUTURE_LIMIT_S = 5 * 60
# A report is planned only for windows this far inside the 35-day edge, so that it is still
# inside when it is sent (it may wait behind a rate limit or a retry).
PLAN_PAST_MARGIN_S = 600
# Raw usage (events and their meter values) is pruned only in months that ended this long
# beyond Stripe's 35 days: by then a report planned near the edge has been sent, retried or held
# as late, and `usage verify` (a week back by default) no longer reaches the month.
RETENTION_PAST_MARGIN_S = 7 * 86400
# The v2 stream validates asynchronously and drops an event outside the window without telling
# the request; the sender refuses stamps this close to the edge to cover the stream's delay.
SEND_PAST_MARGIN_S = 60
# Stripe counts a meter event identifier once within at least 24 hours. Past 23 hours (an hour
# of margin) a report still pending could be counted twice if re-sent blindly.
METER_EVENT_IDENTIFIER_TRUST = timedelta(hours=23)
# Characters, on both APIs (Stripe's API reference; the emulator enforces the same).
METER_EVENT_IDENTIFIER_MAX = 100
METER_EVENT_NAME_MAX = 100
# The v2 meter event stream takes at most 100 events per request.
METER_EVENT_STREAM_BATCH_MAX = 100
# Payload keys of a meter event: the customer it bills and its value (a whole number as a string).
METER_EVENT_CUSTOMER_KEY = "stripe_customer_id"
METER_EVENT_VALUE_KEY = "value"
# Stripe's documented meter event rate is 1,000/s live; a test key gets a tenth of that here,
# as customer calls get 25/s against 100/s live.
TEST_METER_EVENT_RATE = 100.0
LIVE_METER_EVENT_RATE = 1000.0

# -- requests -------------------------------------------------------------------------------------

# Stripe keeps an idempotency key's answer for at least 24 hours: past 23 hours a create is
# looked for before it is sent again, since the key may no longer replay it.
IDEMPOTENCY_KEY_TRUST = timedelta(hours=23)

# -- customers ------------------------------------------------------------------------------------

# Metadata: at most 50 keys, keys up to 40 characters, values up to 500 (Stripe's API reference).
METADATA_KEYS_MAX = 50
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500
# Customer fields, in characters.
CUSTOMER_NAME_MAX = 256
CUSTOMER_EMAIL_MAX = 512
CUSTOMER_PHONE_MAX = 20
CUSTOMER_ADDRESS_FIELDS = ("line1", "line2", "city", "state", "postal_code", "country")

# -- rate limits ----------------------------------------------------------------------------------

# Requests per second: test keys get 25 and live keys 100; search has its own 20/s and is
# eventually consistent (a customer created a moment ago may not be found yet).
TEST_REQUEST_RATE = 25.0
LIVE_REQUEST_RATE = 100.0
SEARCH_REQUEST_RATE = 20.0
