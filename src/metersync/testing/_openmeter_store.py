"""The OpenMeter emulator's state: subjects, customers, meters and ingested events.

Events are indexed for the meter query: bucketed by (event type, subject), each bucket sorted by
event time (ties in ingestion order), with the values a meter reads from `data` kept as columns
beside the times. A query bisects a bucket for its time range and for each window's end, then
aggregates column slices with built-ins, so a month of 100k events answers in milliseconds.
"""

from __future__ import annotations

import bisect
import json
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

from jsonpath_ng.exceptions import JSONPathError
from jsonpath_ng.parser import parse as parse_jsonpath
from ulid import ULID

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)
AGGREGATIONS = ("SUM", "COUNT", "UNIQUE_COUNT", "AVG", "MIN", "MAX", "LATEST")
SLUG = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
GROUP_KEY = re.compile(r"^[A-Za-z0-9_]+$")
CURRENCY = re.compile(r"^[A-Z]{3}$")
COUNTRY = re.compile(r"^[A-Z]{2}$")
ADDRESS_FIELDS = ("country", "postalCode", "state", "city", "line1", "line2", "phoneNumber")
_ADDRESS_ALIASES = {"postal_code": "postalCode", "phone_number": "phoneNumber"}
_SIMPLE_PATH = re.compile(r"^\$(?:\.[A-Za-z_][A-Za-z0-9_]*)+$")


# -- errors --------------------------------------------------------------------------------------


class Problem(Exception):
    """Fails a request with an RFC 7807 problem (OpenMeter's error shape)."""

    status = 400

    def __init__(self, detail: str, status: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if status is not None:
            self.status = status

    @property
    def title(self) -> str:
        return HTTPStatus(self.status).phrase

    def __str__(self) -> str:  # KeyError would quote it
        return self.detail


class BadRequest(Problem, ValueError):
    status = 400


class NotFound(Problem, KeyError):
    status = 404


class Conflict(Problem, ValueError):
    status = 409


# -- ids and times -------------------------------------------------------------------------------


class Ids:
    """ULIDs that increase even within a millisecond, so id order is creation order."""

    def __init__(self) -> None:
        self._last = 0

    def new(self) -> str:
        value = max(int(ULID()), self._last + 1)
        self._last = value
        return str(ULID.from_int(value))


def now() -> datetime:
    return datetime.now(UTC)


def to_us(moment: datetime) -> int:
    return (moment - EPOCH) // MICROSECOND


def from_us(micros: int) -> datetime:
    return EPOCH + timedelta(microseconds=micros)


def rfc3339(moment: datetime | int) -> str:
    """Go's RFC3339Nano, as OpenMeter writes times: UTC, `Z`, no trailing zeros."""
    if isinstance(moment, int):
        moment = from_us(moment)
    text = moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f").rstrip("0").rstrip(".")
    return text + "Z"


def parse_time(text: Any, name: str) -> int:
    """An RFC 3339 date-time (with an offset) as microseconds since the epoch."""
    if not isinstance(text, str) or "T" not in text.upper():
        raise BadRequest(f"invalid {name}: {text!r} is not an RFC 3339 date-time")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"invalid {name}: {text!r} is not an RFC 3339 date-time") from None
    if moment.tzinfo is None:
        raise BadRequest(f"invalid {name}: {text!r} has no time zone offset")
    return to_us(moment)


# -- value paths ---------------------------------------------------------------------------------


class ValuePath:
    """A meter's JSONPath into an event's `data`. `$.a.b` is walked directly (it is read for
    every event); anything else goes through jsonpath-ng and must match exactly one value."""

    def __init__(self, text: str) -> None:
        try:
            self._expression = parse_jsonpath(text)
        except JSONPathError as exc:
            raise BadRequest(f"invalid JSONPath {text!r}: {exc}") from None
        self._keys = tuple(text[2:].split(".")) if _SIMPLE_PATH.match(text) else None

    def find(self, data: Any) -> Any:
        """The value, or None when absent (or null)."""
        if self._keys is not None:
            value = data
            for key in self._keys:
                if not isinstance(value, dict):
                    return None
                value = value.get(key)
            return value
        if data is None:
            return None
        matches = self._expression.find(data)
        return matches[0].value if len(matches) == 1 else None


def as_number(value: Any) -> float | None:
    """SUM, AVG, MIN, MAX and LATEST read a number or a string that parses as one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def as_text(value: Any) -> str | None:
    """UNIQUE_COUNT and group-by values: strings, or other scalars as their JSON text."""
    if value is None or isinstance(value, dict | list):
        return None
    return value if isinstance(value, str) else json.dumps(value)


CONVERTERS: dict[str, Callable[[Any], Any]] = {"number": as_number, "text": as_text}


# -- entities ------------------------------------------------------------------------------------


@dataclass
class Subject:
    id: str
    key: str
    created_at: datetime
    updated_at: datetime
    display_name: str | None = None
    metadata: dict[str, Any] | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "key": self.key,
            "displayName": self.display_name,
            "metadata": self.metadata,
            "createdAt": rfc3339(self.created_at),
            "updatedAt": rfc3339(self.updated_at),
        }


@dataclass
class Customer:
    id: str
    name: str
    created_at: datetime
    updated_at: datetime
    key: str | None = None
    description: str | None = None
    primary_email: str | None = None
    currency: str | None = None
    billing_address: dict[str, str] | None = None
    subject_keys: list[str] = field(default_factory=list)
    metadata: dict[str, str] | None = None
    deleted_at: datetime | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "name": self.name}
        optional = {
            "key": self.key,
            "description": self.description,
            "primaryEmail": self.primary_email,
            "currency": self.currency,
            "billingAddress": self.billing_address,
        }
        body.update({name: value for name, value in optional.items() if value is not None})
        body["usageAttribution"] = {"subjectKeys": list(self.subject_keys)}
        if self.metadata is not None:  # omitted, not null, as OpenMeter does
            body["metadata"] = dict(self.metadata)
        body["createdAt"] = rfc3339(self.created_at)
        body["updatedAt"] = rfc3339(self.updated_at)
        if self.deleted_at is not None:
            body["deletedAt"] = rfc3339(self.deleted_at)
        return body


# The Python API's names for customer fields (snake_case) and the API's (camelCase).
CUSTOMER_FIELDS = {
    "key": "key",
    "name": "name",
    "description": "description",
    "primary_email": "primaryEmail",
    "currency": "currency",
    "billing_address": "billingAddress",
    "metadata": "metadata",
    "subject_keys": "subjectKeys",
}


@dataclass(frozen=True)
class Meter:
    id: str
    slug: str
    name: str
    event_type: str
    aggregation: str
    value_property: str | None
    group_by: dict[str, str]
    created_at: datetime
    description: str | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "slug": self.slug,
            "name": self.name,
            "eventType": self.event_type,
            "aggregation": self.aggregation,
            "groupBy": dict(self.group_by),
            # Gone from the current schema, still sent by OpenMeter's v1 meters: events are
            # pre-aggregated per minute, the finest window a query can ask for.
            "windowSize": "MINUTE",
            "createdAt": rfc3339(self.created_at),
            "updatedAt": rfc3339(self.created_at),
        }
        if self.value_property is not None:
            body["valueProperty"] = self.value_property
        if self.description is not None:
            body["description"] = self.description
        return body


@dataclass(slots=True)
class StoredEvent:
    seq: int  # ingestion order
    id: str
    source: str
    type: str
    subject: str
    time_us: int
    data: dict[str, Any] | None


class Bucket:
    """The events of one (type, subject), sorted by time; ties keep ingestion order."""

    def __init__(self) -> None:
        self.times: list[int] = []
        self.events: list[StoredEvent] = []
        self.columns: dict[tuple[str, str], list[Any]] = {}
        self._paths: dict[str, ValuePath] = {}

    def extend(self, events: list[StoredEvent]) -> None:
        """Add events (in ingestion order). Events no older than the newest are appended, the
        usual case; otherwise the bucket is re-sorted and its columns rebuilt when next read."""
        events = sorted(events, key=lambda e: e.time_us)  # stable: ties keep ingestion order
        if not self.times or events[0].time_us >= self.times[-1]:
            self.times.extend(e.time_us for e in events)
            self.events.extend(events)
            for (path, kind), column in self.columns.items():
                find, convert = self._paths[path].find, CONVERTERS[kind]
                column.extend(convert(find(e.data)) for e in events)
            return
        if len(events) < 64:  # a few late events: insert them where they belong
            for event in events:
                at = bisect.bisect_right(self.times, event.time_us)
                self.times.insert(at, event.time_us)
                self.events.insert(at, event)
                for (path, kind), column in self.columns.items():
                    column.insert(at, CONVERTERS[kind](self._paths[path].find(event.data)))
            return
        self.events.extend(events)
        self.events.sort(key=lambda e: (e.time_us, e.seq))
        self.times = [e.time_us for e in self.events]
        self.columns.clear()

    def column(self, path: str, kind: str) -> list[Any]:
        """The value at `path` of each event, converted (`number` or `text`); None if missing."""
        column = self.columns.get((path, kind))
        if column is None:
            value_path = self._paths.setdefault(path, ValuePath(path))
            convert = CONVERTERS[kind]
            column = [convert(value_path.find(event.data)) for event in self.events]
            self.columns[(path, kind)] = column
        return column


# -- the store -----------------------------------------------------------------------------------


class Store:
    def __init__(self, clock: Callable[[], datetime] = now) -> None:
        self.clock = clock
        self.ids = Ids()
        self.subjects: dict[str, Subject] = {}  # by key
        self.customers: dict[str, Customer] = {}  # by id, in creation order
        self.meters: dict[str, Meter] = {}  # by id, in creation order
        self.buckets: dict[str, dict[str, Bucket]] = {}  # event type → subject → bucket
        self.seen: set[tuple[str, str]] = set()  # (source, id) of every stored event
        self.event_count = 0

    # -- subjects --------------------------------------------------------------------------------

    def upsert_subject(self, key: Any, changes: dict[str, Any]) -> Subject:
        """Create the subject or update the fields in `changes` (displayName, metadata)."""
        if not isinstance(key, str) or not key:
            raise BadRequest("subject key must be a non-empty string")
        if "displayName" in changes and not isinstance(changes["displayName"], str | None):
            raise BadRequest("displayName must be a string or null")
        if "metadata" in changes and not isinstance(changes["metadata"], dict | None):
            raise BadRequest("metadata must be an object or null")
        moment = self.clock()
        subject = self.subjects.get(key)
        if subject is None:
            subject = Subject(self.ids.new(), key, moment, moment)
            self.subjects[key] = subject
        else:
            subject.updated_at = moment
        if "displayName" in changes:
            subject.display_name = changes["displayName"]
        if "metadata" in changes:
            metadata = changes["metadata"]
            subject.metadata = dict(metadata) if metadata is not None else None
        return subject

    def subject(self, id_or_key: str) -> Subject:
        found = self.subjects.get(id_or_key) or next(
            (s for s in self.subjects.values() if s.id == id_or_key), None
        )
        if found is None:
            raise NotFound(f"subject not found: {id_or_key}")
        return found

    def delete_subject(self, id_or_key: str) -> None:
        del self.subjects[self.subject(id_or_key).key]

    # -- customers -------------------------------------------------------------------------------

    def live_customers(self) -> Iterable[Customer]:
        return (c for c in self.customers.values() if c.deleted_at is None)

    def customer(self, id_or_key: str) -> Customer:
        """By id (deleted ones too, with deletedAt), else by the key of a live customer."""
        found = self.customers.get(id_or_key)
        if found is None:
            found = next((c for c in self.live_customers() if c.key == id_or_key), None)
        if found is None:
            raise NotFound(f"customer not found: {id_or_key}")
        return found

    def create_customer(self, fields: dict[str, Any]) -> Customer:
        """`fields` in the API's names (CustomerCreate)."""
        values = self._customer_values(fields, replacing=None)
        if "name" not in values:
            raise BadRequest("name is required")
        if values.get("key") is None and not values.get("subject_keys"):
            raise BadRequest("either key or usageAttribution.subjectKeys must be provided")
        moment = self.clock()
        customer = Customer(self.ids.new(), values.pop("name"), moment, moment)
        self._apply(customer, values)
        self.customers[customer.id] = customer
        return customer

    def replace_customer(self, customer: Customer, fields: dict[str, Any]) -> Customer:
        """PUT: what `fields` leaves out is cleared (CustomerReplaceUpdate)."""
        values = self._customer_values(fields, replacing=customer)
        if "name" not in values:
            raise BadRequest("name is required")
        cleared = {name: None for name in CUSTOMER_FIELDS if name not in ("name", "subject_keys")}
        self._apply(customer, {**cleared, "subject_keys": [], **values})
        customer.updated_at = self.clock()
        return customer

    def update_customer(self, customer: Customer, fields: dict[str, Any]) -> Customer:
        """The Python API's partial update; `fields` in the API's names."""
        values = self._customer_values(fields, replacing=customer)
        self._apply(customer, values)
        customer.updated_at = self.clock()
        return customer

    def delete_customer(self, customer: Customer) -> None:
        if customer.deleted_at is not None:
            raise NotFound(f"customer not found: {customer.id}")
        customer.deleted_at = customer.updated_at = self.clock()

    def _apply(self, customer: Customer, values: dict[str, Any]) -> None:
        for name, value in values.items():
            setattr(customer, name, value)

    def _customer_values(
        self, fields: dict[str, Any], *, replacing: Customer | None
    ) -> dict[str, Any]:
        """Validate CustomerCreate/CustomerReplaceUpdate fields; returns attribute values."""
        known = {*CUSTOMER_FIELDS.values(), "usageAttribution"} - {"subjectKeys"}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise BadRequest(f"unknown customer field {unknown[0]!r}")
        values: dict[str, Any] = {}
        if "name" in fields:
            values["name"] = _text(fields["name"], "name", max_length=256, required=True)
        for name in ("key", "description", "primaryEmail"):
            if name in fields:
                limit = {"key": 256, "description": 1024}.get(name)
                attribute = {"primaryEmail": "primary_email"}.get(name, name)
                values[attribute] = _text(fields[name], name, max_length=limit)
        if "currency" in fields:
            currency = fields["currency"]
            if currency is not None and (
                not isinstance(currency, str) or not CURRENCY.match(currency)
            ):
                raise BadRequest(f"invalid currency {currency!r}: a three-letter code such as USD")
            values["currency"] = currency
        if "billingAddress" in fields:
            values["billing_address"] = _address(fields["billingAddress"])
        if "metadata" in fields:
            values["metadata"] = _metadata(fields["metadata"])
        if "usageAttribution" in fields:
            values["subject_keys"] = self._subject_keys(fields["usageAttribution"], replacing)
        if values.get("key") is not None:
            taken = next(
                (c for c in self.live_customers() if c.key == values["key"] and c is not replacing),
                None,
            )
            if taken is not None:
                raise Conflict(f"customer with key {values['key']} already exists")
        return values

    def _subject_keys(self, attribution: Any, replacing: Customer | None) -> list[str]:
        keys = attribution.get("subjectKeys") if isinstance(attribution, dict) else None
        if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
            raise BadRequest("usageAttribution.subjectKeys must be a list of non-empty strings")
        unique = list(dict.fromkeys(keys))
        # One subject belongs to one (live) customer at most; OpenMeter answers 409 otherwise.
        for other in self.live_customers():
            if other is not replacing:
                shared = [k for k in unique if k in other.subject_keys]
                if shared:
                    raise Conflict(
                        f"subject key {shared[0]} is already associated with customer {other.id}"
                    )
        return unique

    def customer_page(
        self,
        *,
        page: int,
        page_size: int,
        include_deleted: bool,
        filters: dict[str, str],
        order_by: str,
        descending: bool,
    ) -> dict[str, Any]:
        matching = [
            c
            for c in self.customers.values()
            if (include_deleted or c.deleted_at is None) and _customer_matches(c, filters)
        ]
        sort_key: Callable[[Customer], Any] = {
            "id": lambda c: c.id,
            "name": lambda c: (c.name, c.id),
            "createdAt": lambda c: (c.created_at, c.id),
        }[order_by]
        matching.sort(key=sort_key, reverse=descending)
        start = (page - 1) * page_size
        return {
            "totalCount": len(matching),
            "page": page,
            "pageSize": page_size,
            "items": [c.as_json() for c in matching[start : start + page_size]],
        }

    # -- meters ----------------------------------------------------------------------------------

    def add_meter(self, fields: dict[str, Any]) -> Meter:
        """`fields` in the API's names (MeterCreate)."""
        slug = fields.get("slug")
        if not isinstance(slug, str) or len(slug) > 64 or not SLUG.match(slug):
            raise BadRequest(f"invalid slug {slug!r}: lower-case letters, digits and underscores")
        if any(m.slug == slug for m in self.meters.values()):
            raise Conflict(f"meter with slug {slug} already exists")
        event_type = _text(fields.get("eventType"), "eventType", required=True)
        aggregation = fields.get("aggregation")
        if aggregation not in AGGREGATIONS:
            raise BadRequest(f"invalid aggregation {aggregation!r}; one of {AGGREGATIONS}")
        value_property = fields.get("valueProperty")
        if aggregation == "COUNT":
            value_property = None  # "For COUNT aggregation the valueProperty is ignored."
        elif not isinstance(value_property, str) or not value_property:
            raise BadRequest(f"valueProperty is required for {aggregation} meters")
        else:
            ValuePath(value_property)
        group_by = fields.get("groupBy") or {}
        if not isinstance(group_by, dict):
            raise BadRequest("groupBy must be an object of JSONPath expressions")
        for key, path in group_by.items():
            if not GROUP_KEY.match(key) or key in ("subject", "customer_id"):
                raise BadRequest(f"invalid groupBy key {key!r}")
            if not isinstance(path, str):
                raise BadRequest(f"groupBy {key} must be a JSONPath expression")
            ValuePath(path)
        name = fields.get("name") or slug
        meter = Meter(
            id=self.ids.new(),
            slug=slug,
            name=_text(name, "name", max_length=256, required=True),
            event_type=event_type,
            aggregation=aggregation,
            value_property=value_property,
            group_by=dict(group_by),
            created_at=self.clock(),
            description=_text(fields.get("description"), "description", max_length=1024),
        )
        self.meters[meter.id] = meter
        return meter

    def meter(self, id_or_slug: str) -> Meter:
        found = self.meters.get(id_or_slug) or next(
            (m for m in self.meters.values() if m.slug == id_or_slug), None
        )
        if found is None:
            raise NotFound(f"meter not found: {id_or_slug}")
        return found

    # -- events ----------------------------------------------------------------------------------

    def ingest(self, events: list[Any]) -> int:
        """Validate every event, then store those not seen before (by source and id); returns
        how many were stored. An event for a subject nobody defined is stored like any other."""
        checked = [self._check_event(event, i) for i, event in enumerate(events)]
        moment = to_us(self.clock())
        new: dict[tuple[str, str], list[StoredEvent]] = {}
        for event in checked:
            dedup = (event["source"], event["id"])
            if dedup in self.seen:
                continue
            self.seen.add(dedup)
            self.event_count += 1
            time_us = moment if event.get("time") is None else parse_time(event["time"], "time")
            stored_event = StoredEvent(
                seq=self.event_count,
                id=event["id"],
                source=event["source"],
                type=event["type"],
                subject=event["subject"],
                time_us=time_us,
                data=event.get("data"),
            )
            new.setdefault((stored_event.type, stored_event.subject), []).append(stored_event)
        for (event_type, subject), batch in new.items():
            by_subject = self.buckets.setdefault(event_type, {})
            by_subject.setdefault(subject, Bucket()).extend(batch)
        return sum(len(batch) for batch in new.values())

    def _check_event(self, event: Any, index: int) -> dict[str, Any]:
        where = f"event {index}"
        if not isinstance(event, dict):
            raise BadRequest(f"{where}: a CloudEvent must be a JSON object")
        for name in ("specversion", "id", "source", "type", "subject"):
            value = event.get(name)
            if not isinstance(value, str) or not value:
                raise BadRequest(f"{where}: {name} is required (a non-empty string)")
        if event["specversion"] != "1.0":
            raise BadRequest(f"{where}: specversion must be 1.0")
        if event.get("time") is not None:
            parse_time(event["time"], f"{where} time")
        if not isinstance(event.get("data"), dict | None):
            raise BadRequest(f"{where}: data must be a JSON object when present")
        if event.get("datacontenttype") not in (None, "application/json"):
            raise BadRequest(f"{where}: datacontenttype must be application/json")
        return event


def _text(value: Any, name: str, *, max_length: int | None = None, required: bool = False) -> Any:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name} must be a non-empty string")
    if max_length is not None and len(value) > max_length:
        raise BadRequest(f"{name} must be at most {max_length} characters")
    return value


def _address(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadRequest("billingAddress must be an object")
    address: dict[str, str] = {}
    for name, part in value.items():
        name = _ADDRESS_ALIASES.get(name, name)
        if name not in ADDRESS_FIELDS:
            raise BadRequest(f"unknown billingAddress field {name!r}")
        if part is None:
            continue
        if not isinstance(part, str):
            raise BadRequest(f"billingAddress.{name} must be a string")
        if name == "country" and not COUNTRY.match(part):
            raise BadRequest(f"invalid billingAddress.country {part!r}: an ISO 3166-1 alpha-2 code")
        address[name] = part
    return address


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise BadRequest("metadata must be an object of strings")
    return dict(value)


def _customer_matches(customer: Customer, filters: dict[str, str]) -> bool:
    """The list's filters: case-insensitive partial matches."""
    for name, wanted in filters.items():
        if name == "subject":
            values = customer.subject_keys
        else:
            value = {"key": customer.key, "name": customer.name}.get(name, customer.primary_email)
            values = [value] if value is not None else []
        if not any(wanted.lower() in v.lower() for v in values):
            return False
    return True
