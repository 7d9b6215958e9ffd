"""OpenMeterEmulator: a stateful OpenMeter (self-hosted v1 API) over real HTTP on 127.0.0.1, for
tests: the upstream metersync pulls subjects, customers, meters and meter-query aggregates from.

    from metersync.testing import OpenMeterEmulator

    with OpenMeterEmulator(token="om-test-token") as om:
        om.add_meter("tokens_total", event_type="prompt", value_property="$.tokens")
        acme = om.create_customer("acme", "Acme", subject_keys=["acme-api"])
        om.ingest([{"specversion": "1.0", "id": "e1", "source": "app", "type": "prompt",
                    "subject": "acme-api", "time": "2025-01-01T00:05:00Z",
                    "data": {"tokens": 12}}])
        httpx.get(f"{om.url}/api/v1/meters/tokens_total/query",
                  params={"windowSize": "HOUR", "filterCustomerId": acme["id"]},
                  headers={"Authorization": f"Bearer {om.token}"})

What it emulates, with the paths and JSON shapes of OpenMeter's openapi.yaml (camelCase):

- bearer-token auth (anything else is a 401 problem);
- subjects (deprecated upstream, still served): list, get by id or key, upsert (an array),
  delete;
- customers: paged list (`page`, `pageSize` up to 1000, `includeDeleted`, `orderBy`/`order`,
  the key/name/primaryEmail/subject filters) ordered by createdAt then id, get by id or key,
  create, replace (PUT), soft delete (`deletedAt`; a deleted customer is listed only with
  includeDeleted=true and still answers by id, not by key); keys and subject keys unique
  among live customers (409 otherwise);
- meters: list, get by id or slug, create;
- the meter query: SUM, COUNT, UNIQUE_COUNT, AVG, MIN, MAX and LATEST per tumbling window
  (MINUTE, HOUR, DAY, MONTH; `windowTimeZone`), per subject, per customer (`filterCustomerId`,
  `groupBy=customer_id`: attributed by the customers' usageAttribution at query time) and per
  meter groupBy value (`groupBy`, `filterGroupBy[key]`); `from` inclusive, `to` exclusive;
  windows without events left out; an event ingested late simply changes its window;
- entitlements, read-only: a customer's access (`GET /api/v1/customers/{idOrKey}/access`,
  CustomerAccess) and its entitlements (`GET /api/v2/customers/{idOrKey}/entitlements`,
  EntitlementV2PaginatedResponse with each one's type and current usage period), from figures
  a test seeds (`set_entitlement`, `delete_entitlement`). The emulator does not compute
  balances: it serves what was seeded (no features, grants or burn-down behind them);
- event ingestion (one CloudEvent or a batch), deduplicated on (source, id); events of unknown
  subjects and types are stored too;
- problem+json errors (`type`, `title`, `status`, `detail`, `instance`);
- latency, jitter, an outage switch (`down`) and one-off faults (`fail_next`): 500, 503,
  connection reset, and a timeout (the answer comes after the client has stopped waiting).

What it deliberately leaves out: entitlement writes and computed values, features, grants,
plans, subscriptions, billing, apps, notifications, portal tokens, meter update/delete, the
events list, CSV answers, POST queries, `advancedMeterGroupByFilters`, customer `expand`, the
entitlement value, history and grant endpoints, and ingest-time validation of events against
meters (OpenMeter does that asynchronously; here an event whose value a meter cannot read just
does not count for that meter). Deleting a subject forgets the entity, not its events.

The server runs on its own thread and event loop (see _server.BackgroundServer); the Python
methods below run on that loop, so they never race the HTTP handlers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from metersync.testing._openmeter_app import OpenMeterApp, OpenMeterConfig, OpenMeterFaultKind
from metersync.testing._openmeter_store import CUSTOMER_FIELDS
from metersync.testing._server import BackgroundServer, Handler, ServedEmulator

__all__ = [
    "DEFAULT_OPENMETER_TOKEN",
    "OpenMeterConfig",
    "OpenMeterEmulator",
    "OpenMeterFaultKind",
]

T = TypeVar("T")
DEFAULT_OPENMETER_TOKEN = "om-test-token"  # noqa: S105 - the emulator's test token


class OpenMeterEmulator(ServedEmulator):
    def __init__(
        self,
        *,
        token: str = DEFAULT_OPENMETER_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        config: OpenMeterConfig | None = None,
        **knobs: Any,
    ) -> None:
        """`knobs` are OpenMeterConfig fields: latency_ms, jitter_ms, down, timeout_delay_s,
        seed, request_log_size."""
        base = config or OpenMeterConfig()
        self._config = base.updated(knobs) if knobs else base
        self._token = token
        self._server = BackgroundServer(
            self._setup, host=host, port=port, name="openmeter-emulator"
        )
        self._app: OpenMeterApp | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def _setup(self) -> Handler:
        self._app = OpenMeterApp(self._token, self._config)
        return self._app

    def _on_loop(self, fn: Callable[[OpenMeterApp], T]) -> T:
        """Run `fn` on the emulator's loop thread (its state has no locks) and return its result."""
        app = self._app
        if app is None or not self._server.running:
            raise RuntimeError("the emulator is not running; call start() or use `with`")
        return self._server.call(lambda: fn(app))

    # -- connection ------------------------------------------------------------------------------

    @property
    def token(self) -> str:
        """The one API token the emulator accepts (`Authorization: Bearer <token>`)."""
        return self._token

    # -- knobs, faults, the request log ----------------------------------------------------------

    @property
    def config(self) -> OpenMeterConfig:
        return self._on_loop(lambda app: app.config)

    def configure(self, **knobs: Any) -> OpenMeterConfig:
        """Change knobs while running (latency_ms, jitter_ms, down, timeout_delay_s, seed,
        request_log_size); returns the new config. ValueError for an unknown knob."""
        return self._on_loop(lambda app: app.configure(knobs))

    def fail_next(
        self, kind: OpenMeterFaultKind | str, count: int = 1, path_prefix: str | None = None
    ) -> None:
        """Give the next `count` authenticated requests (whose path starts with `path_prefix`;
        any when None) the fault `kind`: "500", "503", "reset" (the connection is closed
        without an answer) or "timeout" (the request is done and answered `timeout_delay_s`
        later). Orders queue up; the first that matches a request is used."""
        fault = OpenMeterFaultKind(kind)
        if count < 1:
            raise ValueError("count must be at least 1")
        self._on_loop(lambda app: app.fail_next(fault, count, path_prefix))

    def requests(self, path_prefix: str | None = None) -> list[dict[str, Any]]:
        """Finished requests, oldest first: method, path, query (the raw query string), status
        (an int, or "reset") and fault (the injected kind or None)."""
        return self._on_loop(
            lambda app: [
                dict(entry)
                for entry in app.log
                if path_prefix is None or entry["path"].startswith(path_prefix)
            ]
        )

    def reset(self) -> None:
        """Forget every subject, customer, meter, event, request and pending fault; keep the
        knobs (`down` included)."""
        self._on_loop(lambda app: app.reset())

    # -- state, as OpenMeter's users and producers would change it ---------------------------------

    def add_meter(
        self,
        slug: str,
        *,
        event_type: str,
        aggregation: str = "SUM",
        value_property: str | None = "$.tokens",
        group_by: Mapping[str, str] | None = None,
        name: str | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """Define a meter; returns it as GET /api/v1/meters/{slug} shows it. COUNT meters
        ignore value_property. ValueError for a bad or taken slug, aggregation or path."""
        fields: dict[str, Any] = {
            "slug": slug,
            "eventType": event_type,
            "aggregation": aggregation,
            "valueProperty": value_property,
            "groupBy": dict(group_by or {}),
            "name": name,
            "description": description,
        }
        return self._on_loop(lambda app: app.store.add_meter(fields).as_json())

    def upsert_subject(
        self,
        key: str,
        display_name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Create the subject, or update the fields given (not None); returns it."""
        changes: dict[str, Any] = {}
        if display_name is not None:
            changes["displayName"] = display_name
        if metadata is not None:
            changes["metadata"] = dict(metadata)
        return self._on_loop(lambda app: app.store.upsert_subject(key, changes).as_json())

    def delete_subject(self, key: str) -> None:
        """Delete the subject (its events stay); KeyError if there is none."""
        self._on_loop(lambda app: app.store.delete_subject(key))

    def create_customer(
        self,
        key: str,
        name: str,
        *,
        subject_keys: Iterable[str] = (),
        primary_email: str | None = None,
        currency: str | None = None,
        billing_address: Mapping[str, str] | None = None,
        metadata: Mapping[str, str] | None = None,
        description: str | None = None,
    ) -> dict[str, Any]:
        """Create a customer; returns it as the API shows it (its id is a ULID). The billing
        address takes the API's names (postalCode, line1, phoneNumber, …; postal_code and
        phone_number too). ValueError for a bad field, a live customer with the same key, or
        a subject key another live customer holds."""
        return self._on_loop(
            lambda app: app.store.create_customer(
                _customer_fields(
                    key=key,
                    name=name,
                    subject_keys=list(subject_keys),
                    primary_email=primary_email,
                    currency=currency,
                    billing_address=billing_address,
                    metadata=metadata,
                    description=description,
                )
            ).as_json()
        )

    def update_customer(self, key: str, **fields: Any) -> dict[str, Any]:
        """Change the fields given of the live customer with this key (or id): name,
        description, primary_email, currency, billing_address, metadata, subject_keys (None
        clears one); bumps updatedAt and returns the customer. KeyError if there is none,
        ValueError for a bad value or a subject key another live customer holds."""
        known = sorted(set(CUSTOMER_FIELDS) - {"key"})
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise TypeError(f"unknown customer field {unknown[0]!r}; known: {known}")
        if "name" in fields and fields["name"] is None:
            raise ValueError("a customer's name cannot be cleared")
        if "subject_keys" in fields:
            fields["subject_keys"] = list(fields["subject_keys"] or ())
        changes = _customer_fields(**fields)

        def update(app: OpenMeterApp) -> dict[str, Any]:
            customer = _live(app, key)
            return app.store.update_customer(customer, changes).as_json()

        return self._on_loop(update)

    def delete_customer(self, key: str) -> None:
        """Soft-delete the live customer with this key (or id): deletedAt is set; it is listed
        only with includeDeleted=true and still answers GET by id. KeyError if there is none."""
        self._on_loop(lambda app: app.store.delete_customer(_live(app, key)))

    def set_entitlement(
        self,
        customer_key: str,
        feature_key: str,
        *,
        type: str = "metered",
        value: Mapping[str, Any] | None = None,
        current_period: tuple[datetime, datetime] | None = None,
        interval: str = "MONTH",
        config: str | None = None,
    ) -> dict[str, Any]:
        """Seed what OpenMeter answers for the live customer's (by key or id) entitlement to
        the feature: `type` metered, boolean or static; `value` the EntitlementValue fields
        (hasAccess, default true; balance, usage, overage, totalAvailableGrantAmount for a
        metered one); for a metered one its `current_period` (default: this calendar month,
        UTC) and usage period `interval`. Setting it again replaces the figures (same id;
        updatedAt moves). Nothing is computed: the access and list endpoints answer exactly
        this. Returns the entitlement as the v2 list shows it. KeyError without such a
        customer, ValueError for a bad field."""
        if type == "metered" and current_period is None:
            current_period = _this_month()

        def seed(app: OpenMeterApp) -> dict[str, Any]:
            customer = _live(app, customer_key)
            return app.entitlements.set(
                customer.id,
                customer.key,
                feature_key,
                type=type,
                value=dict(value or {}),
                period=current_period,
                interval=interval,
                config=config,
            ).as_json()

        return self._on_loop(seed)

    def delete_entitlement(self, customer_key: str, feature_key: str) -> None:
        """Forget the live customer's entitlement to the feature; KeyError if it has none."""
        self._on_loop(lambda app: app.entitlements.delete(_live(app, customer_key).id, feature_key))

    def ingest(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Store CloudEvents (specversion, id, source, type, subject, time, data) as
        POST /api/v1/events would; returns how many were new (duplicates by source and id are
        dropped). A missing time means now; time may be an aware datetime. ValueError for an
        invalid event (then none is stored)."""
        batch = [dict(event) for event in events]
        for event in batch:
            if isinstance(event.get("time"), datetime):  # a convenience over the wire format
                event["time"] = event["time"].isoformat()
        return self._on_loop(lambda app: app.store.ingest(batch))


def _customer_fields(**values: Any) -> dict[str, Any]:
    """The Python API's customer fields in the API's names."""
    fields: dict[str, Any] = {}
    for name, value in values.items():
        if name == "subject_keys":
            fields["usageAttribution"] = {"subjectKeys": value}
        elif name in ("billing_address", "metadata") and value is not None:
            fields[CUSTOMER_FIELDS[name]] = dict(value)
        else:
            fields[CUSTOMER_FIELDS[name]] = value
    return fields


def _live(app: OpenMeterApp, key: str) -> Any:
    customer = app.store.customer(key)
    if customer.deleted_at is not None:
        raise KeyError(f"no live customer {key}")
    return customer


def _this_month() -> tuple[datetime, datetime]:
    now = datetime.now(UTC)
    start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end
