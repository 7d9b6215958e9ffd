"""HubSpot as a sync target: one company per customer, through CRM v3 over httpx.

A company carries the customer's fields, its Stripe customer id and, per configured meter, the
current month's usage with the time of the latest event counted (the same aggregation the usage
push sends to Stripe). Those come from the render context (sync/context.py), so a new Stripe id
or new usage re-renders the company on the next tick without a catalog change.

Exactly one company per customer without idempotency keys (HubSpot has none): companies are
written by `batch/upsert` with `idProperty=metersync_key`, a property with unique values, so a
create repeated after a crash updates the company it made instead of making another. Updates go
by HubSpot id (`batch/update`), so one deleted in HubSpot answers "not found" and the engine
recreates it by policy rather than an upsert silently doing so.

The engine writes one record per action; `Batcher` gathers the actions in flight into requests
of up to 100 records, and a record that fails in a batch (207, `errors[]`) fails alone.

Limits (HubSpot's private-app rules): 100 requests per rolling 10 seconds by default, paced
evenly; the `X-HubSpot-RateLimit-*` headers are read on every answer: a spent window pauses
requests, a 429 naming the ten-second policy slows the limiter, and the daily allowance is
kept (`daily_reserve` is left for the account's other integrations). Once the daily allowance
is spent, every call fails as fatal: the run stops and the next one after HubSpot's reset goes
on. Search is never used: it lags writes.

Custom properties are created once, in a `metersync` group, and versioned: each description
ends with the schema version; an older one is updated in place.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, ClassVar
from urllib.parse import quote

import httpx

from metersync.catalog.meters import Meter
from metersync.catalog.views import Customer
from metersync.clock import utcnow
from metersync.logs import get_logger
from metersync.mechanics.batching import Batcher
from metersync.mechanics.limiter import AdaptiveLimiter
from metersync.mechanics.retry import kind_of_status
from metersync.sync.model import Change, Desired, External
from metersync.sync.plan import TargetRules
from metersync.sync.ports import (
    ARCHIVED_KEY,
    MANAGED_KEY,
    NO_CONTEXT,
    ContextNeeds,
    ErrorKind,
    PeriodUsage,
    RenderContext,
    TargetError,
)
from metersync.times import epoch_seconds_or_zero

_log = get_logger("metersync.targets.hubspot")

STRIPE_ID = "stripe_customer_id"
EMAIL = "metersync_primary_email"
GROUP = "metersync"
SCHEMA_VERSION = "metersync-properties/1"
BATCH_MAX = 100
READ_ATTEMPTS = 5
VALUE_MAX = 65_536  # HubSpot's limit for a string property value
COMPANIES = "/crm/v3/objects/companies"
CONTACTS = "/crm/v3/objects/contacts"
PROPERTIES = "/crm/v3/properties/companies"
ASSOCIATE = "/crm/v4/associations/companies/contacts/batch/associate/default"

# The company's own fields we own, HubSpot's standard properties, from the customer.
_ADDRESS = {
    "address": "line1",
    "address2": "line2",
    "city": "city",
    "state": "state",
    "zip": "postal_code",
    "country": "country",
}
_STANDARD = ("name", "description", "phone", *_ADDRESS)


# -- properties ----------------------------------------------------------------------------------


def usage_property(meter: str) -> str:
    return f"metersync_usage_{_identifier(meter)}"


def usage_time_property(meter: str) -> str:
    return f"metersync_usage_{_identifier(meter)}_at"


def _identifier(text: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", text.lower())


def property_definitions(meters: Sequence[Meter]) -> list[dict[str, Any]]:
    """The custom properties metersync writes on companies, as the properties API takes them."""

    def text(name: str, label: str, about: str, *, unique: bool = False) -> dict[str, Any]:
        definition: dict[str, Any] = {
            "name": name,
            "label": label,
            "type": "string",
            "fieldType": "text",
            "groupName": GROUP,
            "description": f"{about} Written by metersync. [{SCHEMA_VERSION}]",
        }
        if unique:
            definition["hasUniqueValue"] = True
        return definition

    definitions = [
        text(MANAGED_KEY, "metersync key", "The customer's key in metersync.", unique=True),
        text(STRIPE_ID, "Stripe customer id", "The customer's id in Stripe (cus_…)."),
        text(EMAIL, "Primary email", "The customer's primary billing email."),
        text(ARCHIVED_KEY, "Archived by metersync", "When metersync archived the customer."),
    ]
    for meter in meters:
        definitions.append(
            {
                "name": usage_property(meter.slug),
                "label": f"Usage: {meter.slug} (this month)",
                "type": "number",
                "fieldType": "number",
                "groupName": GROUP,
                "description": (
                    f"{meter.aggregation.value} of meter {meter.slug} this calendar month (UTC). "
                    f"Written by metersync. [{SCHEMA_VERSION}]"
                ),
            }
        )
        definitions.append(
            {
                "name": usage_time_property(meter.slug),
                "label": f"Usage: {meter.slug} updated",
                "type": "datetime",
                "fieldType": "date",
                "groupName": GROUP,
                "description": (
                    f"Time of the latest {meter.slug} event counted. "
                    f"Written by metersync. [{SCHEMA_VERSION}]"
                ),
            }
        )
    return definitions


# -- errors --------------------------------------------------------------------------------------


# HubSpot's answer for a property it does not have: 'Property "metersync_key" does not exist'
# (quotes escaped when it is nested in a JSON message).
_MISSING_PROPERTY = re.compile(r'Property \\?"([A-Za-z0-9_]+)\\?" does not exist')


class HubSpotError(Exception):
    """An answer from HubSpot, for the whole request or for one record of a batch."""

    def __init__(
        self,
        kind: ErrorKind,
        message: str,
        *,
        status: int | None = None,
        category: str | None = None,
        correlation_id: str | None = None,
        throttled: bool = False,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status
        self.category = category
        self.correlation_id = correlation_id
        self.throttled = throttled


def _kind(status: int, category: str | None) -> ErrorKind:
    if category == "OBJECT_NOT_FOUND" or status == 404:
        return ErrorKind.GONE
    if category in ("INVALID_AUTHENTICATION", "MISSING_SCOPES"):
        return ErrorKind.FATAL
    return kind_of_status(status)


# -- the daily allowance -------------------------------------------------------------------------


@dataclass
class DailyAllowance:
    """HubSpot's daily request allowance as the headers last told it (before any answer: the
    configured limit). Below the reserve, no call leaves."""

    limit: int
    reserve: int
    remaining: int | None = None

    def check(self) -> None:
        left = self.limit if self.remaining is None else self.remaining
        if left <= self.reserve:
            raise HubSpotError(
                ErrorKind.FATAL,
                f"HubSpot's daily API allowance is spent ({left} of {self.limit} left, "
                f"{self.reserve} kept in reserve); syncing resumes after HubSpot's daily reset",
            )


# -- the target ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Upsert:
    key: str
    properties: dict[str, str]
    email: str | None  # associate a contact with this email (contacts on)


@dataclass(frozen=True)
class _Update:
    id: str
    properties: dict[str, str]
    email: str | None


class HubSpotTarget:
    # Portals (by API base and token digest) whose properties this process has checked under
    # the current schema: the service builds a target per job, and checks once.
    _checked: ClassVar[set[tuple[str, str, tuple[str, ...]]]] = set()

    name = "hubspot"
    rules = TargetRules()  # no metadata limit: HubSpot properties are fields
    render_version = "hubspot-company/1"  # tests/test_hubspot_target.py pins its output

    def __init__(
        self,
        token: str,
        *,
        api_base: str = "https://api.hubapi.com",
        meters: Sequence[Meter] = (),
        requests_per_10s: int = 100,
        daily_limit: int = 250_000,
        daily_reserve: int = 1_000,
        batch_size: int = BATCH_MAX,
        timeout: float = 30.0,
        contacts: bool = False,
        linger_s: float = 0.2,
    ) -> None:
        self.meters = list(meters)
        self.needs = ContextNeeds(links=("stripe",), usage=bool(self.meters))
        self.contacts = contacts
        self.http = httpx.AsyncClient(
            base_url=api_base,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )
        # Evenly paced: 100 per 10 s is one request every 100 ms, never a clump at the start
        # of a window that other traffic could push over.
        self.limiter = AdaptiveLimiter(requests_per_10s / 10.0, burst=1.0)
        self.daily = DailyAllowance(daily_limit, daily_reserve)
        size = min(batch_size, BATCH_MAX)
        # A batch leaves when the limiter gives it a slot: records that arrive while it waits
        # ride along, so at the rate limit every request carries as many as it can.
        paced = self.limiter.acquire
        self._upserts: Batcher[_Upsert, str] = Batcher(
            self._send_upserts, max_size=size, linger_s=linger_s, ready=paced
        )
        self._updates: Batcher[_Update, None] = Batcher(
            self._send_updates, max_size=size, linger_s=linger_s, ready=paced
        )
        self._archives: Batcher[str, None] = Batcher(
            self._send_archives, max_size=size, linger_s=linger_s, ready=paced
        )
        self._portal = (
            api_base,
            hashlib.sha256(token.encode()).hexdigest(),
            tuple(d["name"] for d in property_definitions(self.meters)),
        )
        self._properties_lock = asyncio.Lock()
        self.requests = 0

    # -- rendering (pure) ------------------------------------------------------------------------

    def render(self, customer: Customer, context: RenderContext = NO_CONTEXT) -> Desired:
        address = customer.billing_address
        fields: dict[str, Any] = {
            "name": customer.name,
            "description": customer.description,
            "phone": address.phone_number,
            **{prop: getattr(address, attr) for prop, attr in _ADDRESS.items()},
            EMAIL: customer.primary_email,
            STRIPE_ID: context.external_id("stripe", customer.key),
        }
        usage = context.usage_of(customer.key)
        for meter in self.meters:
            figure: PeriodUsage | None = usage.get(meter.slug)
            fields[usage_property(meter.slug)] = _number(figure.value) if figure else None
            fields[usage_time_property(meter.slug)] = _timestamp(figure.latest) if figure else None
        blocked = [
            f"{name} is longer than HubSpot's {VALUE_MAX} characters"
            for name, value in fields.items()
            if isinstance(value, str) and len(value) > VALUE_MAX
        ]
        if len(customer.key) > VALUE_MAX:
            blocked.append(f"the key is longer than HubSpot's {VALUE_MAX} characters")
        return Desired(customer.key, fields, {MANAGED_KEY: customer.key}, tuple(blocked))

    def _owned(self) -> list[str]:
        names = [*_STANDARD, EMAIL, STRIPE_ID, MANAGED_KEY, ARCHIVED_KEY]
        for meter in self.meters:
            names += [usage_property(meter.slug), usage_time_property(meter.slug)]
        return names

    # -- the protocol ----------------------------------------------------------------------------

    def classify(self, error: BaseException) -> TargetError:
        if isinstance(error, HubSpotError) and self._names_a_missing_property(error):
            # Someone deleted one of our properties in HubSpot (or this is another portal
            # behind the same address): the once-per-process check is stale. Forget it, so the
            # retry creates the properties again instead of failing every record until restart.
            self._checked.discard(self._portal)
            return TargetError(ErrorKind.RETRYABLE, str(error), request_id=error.correlation_id)
        if isinstance(error, HubSpotError):
            return TargetError(
                error.kind,
                str(error),
                throttled=error.throttled,
                request_id=error.correlation_id,
            )
        if isinstance(error, httpx.TransportError):
            return TargetError(ErrorKind.RETRYABLE, f"{type(error).__name__}: {error}")
        return TargetError(ErrorKind.PERMANENT, f"{type(error).__name__}: {error}")

    def _names_a_missing_property(self, error: HubSpotError) -> bool:
        missing = _MISSING_PROPERTY.findall(str(error))
        return bool(missing) and bool(set(missing) & set(self._portal[2]))

    async def list_customers(self) -> list[External]:
        await self._ready()
        records: list[External] = []
        after: str | None = None
        properties = ",".join(self._owned())
        while True:
            params = {"limit": "100", "properties": properties, "archived": "false"}
            if after:
                params["after"] = after
            page = await self._read(COMPANIES, params)
            records.extend(_external(c) for c in page.get("results", []))
            after = page.get("paging", {}).get("next", {}).get("after")
            if not after:
                return records

    async def create(self, state: Mapping[str, Any], idempotency_key: str) -> str:
        await self._ready()
        key = state["metadata"][MANAGED_KEY]
        properties = _properties(state, clearing=False)
        return await self._upserts.submit(_Upsert(key, properties, self._contact(state)))

    async def update(
        self,
        external_id: str,
        changes: tuple[Change, ...],
        state: Mapping[str, Any],
        idempotency_key: str,
    ) -> None:
        await self._ready()
        # The whole owned state, not only the changes: idempotent, and it clears an archive
        # marker (an update of an archived company is its unarchiving).
        properties = {**_properties(state, clearing=True), ARCHIVED_KEY: ""}
        email_changed = any(c.field == f"fields.{EMAIL}" or c.field == EMAIL for c in changes)
        email = self._contact(state) if email_changed else None
        await self._updates.submit(_Update(external_id, properties, email))

    async def delete(self, external_id: str, idempotency_key: str) -> None:
        # HubSpot's delete is an archive, restorable for 90 days.
        await self._archives.submit(external_id)

    async def archive(self, external_id: str, idempotency_key: str) -> Mapping[str, str]:
        await self._ready()
        marker = {ARCHIVED_KEY: _timestamp(utcnow())}
        await self._updates.submit(_Update(external_id, dict(marker), None))
        return marker

    async def release(self, external_id: str, idempotency_key: str) -> None:
        await self._updates.submit(_Update(external_id, {MANAGED_KEY: ""}, None))

    async def find(self, key: str) -> External | None:
        return await self._get(key, id_property=MANAGED_KEY)

    async def retrieve(self, external_id: str) -> External | None:
        return await self._get(external_id, id_property=None)

    async def close(self) -> None:
        await self.http.aclose()

    # -- properties ------------------------------------------------------------------------------

    async def _ready(self) -> None:
        """Create or upgrade the custom properties, once per process."""
        if self._portal in self._checked:
            return
        async with self._properties_lock:
            if self._portal not in self._checked:
                await self.ensure_properties()
                self._checked.add(self._portal)

    async def ensure_properties(self) -> dict[str, int]:
        existing = {
            p["name"]: p for p in (await self._request("GET", PROPERTIES)).get("results", [])
        }
        wanted = property_definitions(self.meters)
        missing = [d for d in wanted if d["name"] not in existing]
        stale = [
            d
            for d in wanted
            if d["name"] in existing
            and not str(existing[d["name"]].get("description", "")).endswith(f"[{SCHEMA_VERSION}]")
        ]
        key_property = existing.get(MANAGED_KEY)
        if key_property is not None and not key_property.get("hasUniqueValue"):
            raise HubSpotError(
                ErrorKind.FATAL,
                f"the company property {MANAGED_KEY} exists without unique values, and a "
                "property's uniqueness cannot be changed: delete or rename it in HubSpot",
            )
        if missing:
            await self._ensure_group()
            await self._request("POST", f"{PROPERTIES}/batch/create", json={"inputs": missing})
        for definition in stale:
            patch = {k: v for k, v in definition.items() if k not in ("name", "hasUniqueValue")}
            await self._request("PATCH", f"{PROPERTIES}/{definition['name']}", json=patch)
        if missing or stale:
            _log.info("hubspot properties", created=len(missing), upgraded=len(stale))
        return {"created": len(missing), "upgraded": len(stale)}

    async def _ensure_group(self) -> None:
        try:
            await self._request(
                "POST", f"{PROPERTIES}/groups", json={"name": GROUP, "label": "metersync"}
            )
        except HubSpotError as exc:
            if exc.status != 409:
                raise

    # -- batches ---------------------------------------------------------------------------------

    async def _send_upserts(self, batch: Sequence[_Upsert]) -> list[str | BaseException]:
        body = {
            "inputs": [
                {
                    "idProperty": MANAGED_KEY,
                    "id": u.key,
                    "properties": u.properties,
                    "objectWriteTraceId": u.key,
                }
                for u in batch
            ]
        }
        answer = await self._request("POST", f"{COMPANIES}/batch/upsert", json=body, paced=True)
        # Each result by the trace id it echoes (the key we sent), else by its key property.
        ids = {
            str(r.get("objectWriteTraceId") or r.get("properties", {}).get(MANAGED_KEY) or ""): str(
                r["id"]
            )
            for r in answer.get("results", [])
        }
        errors = _record_errors(answer)
        results: list[str | BaseException] = [
            ids[u.key] if u.key in ids else errors.get(u.key, _no_answer(u.key)) for u in batch
        ]
        linked = [(u.email, ids[u.key]) for u in batch if u.email and u.key in ids]
        failed = await self._associate_contacts(linked)
        return [
            failed.get(ids.get(u.key, ""), result) if isinstance(result, str) else result
            for u, result in zip(batch, results, strict=True)
        ]

    async def _send_updates(self, batch: Sequence[_Update]) -> list[BaseException | None]:
        body = {
            "inputs": [
                {"id": u.id, "properties": u.properties, "objectWriteTraceId": u.id} for u in batch
            ]
        }
        answer = await self._request("POST", f"{COMPANIES}/batch/update", json=body, paced=True)
        done = {str(r["id"]) for r in answer.get("results", [])}
        errors = _record_errors(answer)
        failed = await self._associate_contacts(
            [(u.email, u.id) for u in batch if u.email and u.id in done]
        )
        return [
            failed.get(u.id) if u.id in done else errors.get(u.id, _no_answer(u.id)) for u in batch
        ]

    async def _send_archives(self, batch: Sequence[str]) -> list[BaseException | None]:
        # HubSpot answers 204 and ignores ids it does not hold: deleting twice is fine.
        await self._request(
            "POST",
            f"{COMPANIES}/batch/archive",
            json={"inputs": [{"id": i} for i in batch]},
            paced=True,
        )
        return [None for _ in batch]

    async def _associate_contacts(
        self, pairs: Sequence[tuple[str | None, str]]
    ) -> dict[str, BaseException]:
        """Upsert a contact per email and associate it with its company. Returns the errors by
        company id: that company's action fails and is retried (both calls are idempotent)."""
        # HubSpot keeps emails in lower case: two spellings of one address are one contact
        # (and the same id twice in a batch would fail the whole request).
        wanted = [(e.lower(), c) for e, c in pairs if e]
        if not wanted:
            return {}
        emails = sorted({e for e, _ in wanted})
        inputs = [
            # The trace id: a refused address fails alone (207), not the whole batch.
            {"idProperty": "email", "id": e, "properties": {"email": e}, "objectWriteTraceId": e}
            for e in emails
        ]
        try:
            answer = await self._request(
                "POST", f"{CONTACTS}/batch/upsert", json={"inputs": inputs}
            )
        except HubSpotError as exc:
            return {c: exc for _, c in wanted}
        contact_ids = {
            str(r.get("properties", {}).get("email", "")).lower(): str(r["id"])
            for r in answer.get("results", [])
        }
        errors = _record_errors(answer)
        failed: dict[str, BaseException] = {}
        links = []
        for email, company in wanted:
            contact = contact_ids.get(str(email).lower())
            if contact is None:
                failed[company] = errors.get(str(email), _no_answer(f"contact {email}"))
            else:
                links.append({"from": {"id": company}, "to": {"id": contact}})
        if links:
            try:
                associated = await self._request("POST", ASSOCIATE, json={"inputs": links})
            except HubSpotError as exc:
                return {**failed, **{link["from"]["id"]: exc for link in links}}
            # An association error names both ends; a company fails only when its own pair is
            # named (a contact id may equal some other company's id).
            refused = _record_errors(associated)
            for link in links:
                company, contact = link["from"]["id"], link["to"]["id"]
                if company in refused and contact in refused:
                    failed[company] = refused[company]
        return failed

    def _contact(self, state: Mapping[str, Any]) -> str | None:
        if not self.contacts:
            return None
        email = state.get("fields", {}).get(EMAIL)
        return str(email) if email else None

    # -- HTTP ------------------------------------------------------------------------------------

    async def _get(self, id_or_key: str, *, id_property: str | None) -> External | None:
        params = {"properties": ",".join(self._owned())}
        if id_property is not None:
            params["idProperty"] = id_property
        try:
            company = await self._read(f"{COMPANIES}/{_path(id_or_key)}", params)
        except HubSpotError as exc:
            if exc.kind is ErrorKind.GONE:
                return None
            raise
        return _external(company)

    async def _read(self, path: str, params: Mapping[str, str]) -> dict[str, Any]:
        """A GET, retried while HubSpot's answer is worth retrying (reads are idempotent;
        writes are retried by the engine, one record at a time)."""
        for attempt in range(READ_ATTEMPTS):
            try:
                return await self._request("GET", path, params=params)
            except (HubSpotError, httpx.TransportError) as exc:
                if self.classify(exc).kind is not ErrorKind.RETRYABLE:
                    raise
                if attempt == READ_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(min(8.0, 0.5 * 2**attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        paced: bool = False,
    ) -> dict[str, Any]:
        """`paced`: the caller already waited for the limiter (a batcher's `ready`)."""
        self.daily.check()
        if not paced:
            await self.limiter.acquire()
        self.requests += 1
        response = await self.http.request(method, path, params=params, json=json)
        self._read_limits(response.headers)
        if response.status_code == 204:
            return {}
        body = _json(response)
        if response.status_code == 429:
            raise self._throttled(body, response.headers)
        if response.status_code >= 400:
            category = body.get("category")
            raise HubSpotError(
                _kind(response.status_code, category),
                f"HubSpot {response.status_code} {category or ''}: "
                f"{body.get('message') or response.text[:200]}".replace("  ", " "),
                status=response.status_code,
                category=category,
                correlation_id=body.get("correlationId"),
            )
        return body

    def _read_limits(self, headers: httpx.Headers) -> None:
        daily = _int(headers.get("x-hubspot-ratelimit-daily-remaining"))
        if daily is not None:
            self.daily.remaining = daily
        remaining = _int(headers.get("x-hubspot-ratelimit-remaining"))
        interval_ms = _int(headers.get("x-hubspot-ratelimit-interval-milliseconds")) or 10_000
        if remaining is not None and remaining <= 0:
            # The rolling window is spent (other traffic shares it): let a tenth of it pass.
            self.limiter.pause(interval_ms / 10_000)

    def _throttled(self, body: Mapping[str, Any], headers: httpx.Headers) -> HubSpotError:
        policy = str(body.get("policyName") or "")
        message = str(body.get("message") or "rate limited")
        if policy.upper() == "DAILY":
            self.daily.remaining = 0
            return HubSpotError(
                ErrorKind.FATAL,
                f"HubSpot's daily API limit is reached ({message}); syncing resumes after "
                "HubSpot's daily reset",
                status=429,
                correlation_id=body.get("correlationId"),
            )
        self.limiter.throttled()
        interval_ms = _int(headers.get("x-hubspot-ratelimit-interval-milliseconds")) or 10_000
        self.limiter.pause(interval_ms / 10_000)
        return HubSpotError(
            ErrorKind.RETRYABLE,
            f"HubSpot 429 ({policy or 'rate limit'}): {message}",
            status=429,
            correlation_id=body.get("correlationId"),
            throttled=True,
        )


# -- helpers -------------------------------------------------------------------------------------


def _properties(state: Mapping[str, Any], *, clearing: bool) -> dict[str, str]:
    """A Desired.state() as HubSpot properties (all strings). `clearing`: an absent value is
    sent as "" (HubSpot's unset); a create leaves it out."""
    merged = {**state.get("fields", {}), **state.get("metadata", {})}
    out: dict[str, str] = {}
    for name, value in merged.items():
        if value is None or value == "":
            if clearing:
                out[name] = ""
            continue
        out[name] = str(value)
    return out


def _external(company: Mapping[str, Any]) -> External:
    props: Mapping[str, Any] = company.get("properties") or {}
    key = props.get(MANAGED_KEY) or None
    metadata = {MANAGED_KEY: key} if key else {}
    archived_at = props.get(ARCHIVED_KEY) or None
    if archived_at:
        metadata[ARCHIVED_KEY] = archived_at
    fields = {
        name: (value if value != "" else None)
        for name, value in props.items()
        if name not in (MANAGED_KEY, ARCHIVED_KEY, "hs_object_id", "createdate")
        and name != "hs_lastmodifieddate"
    }
    return External(
        id=str(company["id"]),
        key=key,
        fields=fields,
        metadata=metadata,
        created=epoch_seconds_or_zero(company.get("createdAt")),
        archived=bool(archived_at),
    )


def _record_errors(answer: Mapping[str, Any]) -> dict[str, HubSpotError]:
    """A 207's `errors[]`, by the input each names: its objectWriteTraceId (which we set to the
    input's id or unique value; HubSpot answers a partly failed batch with 207 only when every
    input carries one, and fails the whole batch otherwise), else the ids in the context."""
    errors: dict[str, HubSpotError] = {}
    for error in answer.get("errors", []) or []:
        category = error.get("category")
        status = 404 if category == "OBJECT_NOT_FOUND" else 400
        failure = HubSpotError(
            _kind(status, category),
            f"HubSpot {category or 'error'}: {error.get('message', '')}",
            status=status,
            category=category,
        )
        context = error.get("context") or {}
        for ident in context.get("objectWriteTraceId") or context.get("ids") or []:
            errors[str(ident)] = failure
    return errors


def _no_answer(ident: str) -> HubSpotError:
    return HubSpotError(
        ErrorKind.RETRYABLE, f"HubSpot's batch answer said nothing about {ident}; retrying"
    )


def _number(value: float) -> str:
    """A meter value as HubSpot shows it: whole numbers without a decimal point."""
    if float(value).is_integer():
        return str(int(value))
    return format(Decimal(repr(value)).normalize(), "f")


def _timestamp(moment: datetime) -> str:
    """ISO 8601 with milliseconds and Z, the form HubSpot answers datetime properties in."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
        f"{moment.microsecond // 1000:03d}Z"
    )


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _json(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _path(segment: str) -> str:
    return quote(segment, safe="")
