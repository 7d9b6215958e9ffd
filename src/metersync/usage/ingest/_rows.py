"""The rows a valid event becomes, as the parser makes them and the writers store them."""

from __future__ import annotations

from typing import Any

import msgspec

from metersync.usage.ingest._reasons import Rejected, encode

# A valid event as rows: flat tuples of strings and numbers. The garbage collector stops tracking
# such tuples at its first pass; nested ones (an event holding its value rows) stay tracked into
# the oldest generation, and the full collections they set off took a third of the parse time.
EventKey = tuple[str, str]  # (source, id)
# usage_event: source, event_id, type, subject, time_us, data (ingested_at is added on write)
UsageEventRow = tuple[str, str, str, str, int, str | None]
# usage_value: source, event_id, meter, subject, time_us, value, value_text, groups
UsageValueRow = tuple[str, str, str, str, int, float | None, str | None, str | None]
# … as written: with the batch's usage change number (seq) last
StoredValueRow = tuple[str, str, str, str, int, float | None, str | None, str | None, int]


def json_text(value: Any, what: str) -> str | None:
    if value is None:
        return None
    try:
        return encode(value).decode("utf-8")
    except (TypeError, ValueError, msgspec.EncodeError) as exc:
        # Only from ingest_events: decoded JSON always encodes. UnicodeEncodeError is a
        # ValueError (lone surrogates); TypeError an object JSON has no form for.
        raise Rejected(f"{what} cannot be stored as JSON: {exc}") from None
