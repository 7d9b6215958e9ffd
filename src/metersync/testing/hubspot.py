"""HubSpotEmulator: a stateful HubSpot CRM v3 over real HTTP on 127.0.0.1, for tests and
benchmarks.

    from metersync.testing import HubSpotEmulator

    with HubSpotEmulator(rate_limit_per_10s=100, search_lag_s=2.0) as hs:
        headers = {"Authorization": f"Bearer {hs.token}"}
        httpx.post(f"{hs.url}/crm/v3/objects/companies/batch/upsert", headers=headers, json=…)
        assert hs.companies()[0]["properties"]["metersync_key"] == "cus_1"

What it emulates, with HubSpot's paths and JSON shapes:

- private-app auth (`Authorization: Bearer <token>`; anything else is a 401);
- the properties API for companies and contacts: list, read, create (409 when taken), batch
  create (207 for the taken ones), PATCH, property groups; typed values (string, number, date,
  datetime, enumeration, bool) validated as HubSpot does, unknown properties refused;
- companies and contacts: batch upsert by a unique property (email for contacts), batch update,
  batch archive, list with cursor paging, read by id or unique value, and search, which is
  eventually consistent (`search_lag_s`); partial failures answer 207 with per-input errors;
- default company ↔ contact associations (v4), idempotent;
- the private-app rate limits: a rolling 10-second window and a daily budget, with HubSpot's
  X-HubSpot-RateLimit-* headers on every authenticated answer and its 429 bodies;
- latency, jitter and faults: `fail_next` for one-off faults, rules and a random `fault_rate`
  for chaos (429s, 500s, resets, and commit-then-drop: the write happens, the answer is lost).

What it deliberately does not: other object types, labelled associations and association reads,
property deletion, record restore and merge, free-text search and sorting, the separate search
rate limit, OAuth, webhooks, and most of HubSpot's hundreds of default properties (defined:
hs_object_id, createdate, the modified date, name, domain, description, the address fields,
phone, website, employees and revenue for companies; email, names, company and job title, the
address fields, phone and website for contacts).

The server runs on its own thread and event loop (see _server.BackgroundServer); its timers and
search lag use the real monotonic clock, so freezegun can move timestamps without freezing it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from metersync.testing._hubspot_app import HubSpotApp
from metersync.testing._hubspot_call import RecordPredicate
from metersync.testing._hubspot_config import (
    HubSpotConfig,
    HubSpotFault,
    HubSpotFaultKind,
)
from metersync.testing._hubspot_errors import RecordError
from metersync.testing._hubspot_properties import OBJECT_TYPES
from metersync.testing._hubspot_store import CrmRecord, ObjectStore
from metersync.testing._server import BackgroundServer, Handler, ServedEmulator

__all__ = [
    "DEFAULT_HUBSPOT_TOKEN",
    "HubSpotConfig",
    "HubSpotEmulator",
    "HubSpotFault",
    "HubSpotFaultKind",
]

T = TypeVar("T")
DEFAULT_HUBSPOT_TOKEN = "pat-test-metersync"  # noqa: S105 - the emulator's test token


class HubSpotEmulator(ServedEmulator):
    def __init__(
        self,
        *,
        token: str = DEFAULT_HUBSPOT_TOKEN,
        host: str = "127.0.0.1",
        port: int = 0,
        config: HubSpotConfig | None = None,
        **knobs: Any,
    ) -> None:
        """`knobs` are HubSpotConfig fields: latency_ms, jitter_ms, rate_limit_per_10s,
        daily_limit, search_lag_s, faults, fault_rate, fault_kinds, seed, …"""
        base = config or HubSpotConfig()
        self._config = base.updated(knobs) if knobs else base
        self._token = token
        self._server = BackgroundServer(self._setup, host=host, port=port, name="hubspot-emulator")
        self._app: HubSpotApp | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def _setup(self) -> Handler:
        self._app = HubSpotApp(
            self._token, self._config, loop_clock=asyncio.get_running_loop().time
        )
        return self._app

    def _on_loop(self, fn: Callable[[HubSpotApp], T]) -> T:
        """Run `fn` on the emulator's loop thread (its state has no locks) and return its result."""
        app = self._app
        if app is None:
            raise RuntimeError("the emulator is not running; call start() or use `with`")
        return self._server.call(lambda: fn(app))

    # -- connection ------------------------------------------------------------------------------

    @property
    def token(self) -> str:
        """The one private-app token the emulator accepts."""
        return self._token

    # -- knobs and faults ------------------------------------------------------------------------

    @property
    def config(self) -> HubSpotConfig:
        return self._on_loop(lambda app: app.config)

    def configure(self, **knobs: Any) -> HubSpotConfig:
        """Change knobs while running (the constructor's names); returns the new config."""
        return self._on_loop(lambda app: app.configure(knobs))

    def fail_next(
        self, kind: HubSpotFaultKind | str, count: int = 1, endpoint: str | None = None
    ) -> None:
        """Give the next `count` requests (to `endpoint`, a name or glob such as
        `companies.batch_upsert`; any endpoint when None) the fault `kind`: "429_ten_secondly",
        "429_daily", "500", "reset" or "commit_then_drop"."""
        fault = HubSpotFaultKind(kind)
        if count < 1:
            raise ValueError("count must be at least 1")
        self._on_loop(lambda app: app.fail_next(fault, count, endpoint))

    def reject_records(
        self, predicate: RecordPredicate | None, *, object_type: str = "companies"
    ) -> None:
        """Fail, each with its own VALIDATION_ERROR (a 207 for the batch), the inputs of batch
        upserts and updates whose properties make `predicate` true. It sees the input's
        properties as strings, the upsert's unique value included. None stops rejecting."""
        _check_object_type(object_type)

        def install(app: HubSpotApp) -> None:
            if predicate is None:
                app.rejects.pop(object_type, None)
            else:
                app.rejects[object_type] = predicate

        self._on_loop(install)

    # -- what the portal holds -------------------------------------------------------------------

    def companies(self, archived: bool = False) -> list[dict[str, Any]]:
        """Live companies in id order (or the archived ones), with all their properties."""
        return self._records("companies", archived)

    def contacts(self, archived: bool = False) -> list[dict[str, Any]]:
        return self._records("contacts", archived)

    def associations(self) -> list[tuple[str, str]]:
        """(company id, contact id) pairs between live records."""

        def read(app: HubSpotApp) -> list[tuple[str, str]]:
            companies, contacts = app.portal.store("companies"), app.portal.store("contacts")
            return sorted(
                (company, contact)
                for company, contact in app.portal.associations
                if companies.get(company) is not None and contacts.get(contact) is not None
            )

        return self._on_loop(read)

    def properties(self, object_type: str = "companies") -> list[dict[str, Any]]:
        _check_object_type(object_type)
        return self._on_loop(
            lambda app: [dict(p) for p in app.portal.store(object_type).properties.values()]
        )

    def requests(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """Finished requests, oldest first, optionally for one endpoint (companies.batch_upsert,
        …). Each: endpoint, method, path, query, status (an int, or "reset"/"drop"), fault (the
        injected kind or None), error (the category or 429 policy of an error answer), inputs
        (a batch's size), correlation_id, time, duration_ms."""
        return self._on_loop(
            lambda app: [
                dict(entry)
                for entry in app.log
                if endpoint is None or entry["endpoint"] == endpoint
            ]
        )

    def calls(self) -> int:
        """Requests received on the API, whatever became of them (401s, 429s, resets included)."""
        return self._on_loop(lambda app: app.calls)

    def reset(self) -> None:
        """Forget every record, custom property, request, counter, pending fault and reject
        predicate; keep the knobs."""
        self._on_loop(lambda app: app.reset())

    # -- out-of-band changes (a user in HubSpot's UI) --------------------------------------------

    def delete_company(self, company_id: str) -> None:
        """Archive a company, as a user deleting it in HubSpot; KeyError if there is none live."""

        def archive(app: HubSpotApp) -> None:
            store = app.portal.store("companies")
            store.archive(_live(store, company_id))

        self._on_loop(archive)

    def set_company_property(self, company_id: str, name: str, value: Any) -> None:
        """Edit one property of a live company, as a user in HubSpot would (drift). The value
        is validated like an API write ("" clears it); ValueError if HubSpot would refuse it."""

        def edit(app: HubSpotApp) -> None:
            store = app.portal.store("companies")
            record = _live(store, company_id)
            try:
                values = store.validate(
                    {name: value}, ids=[company_id], target=record.id, claimed={}
                )
            except RecordError as exc:
                raise ValueError(exc.message) from None
            store.update(record, values)

        self._on_loop(edit)

    def _records(self, object_type: str, archived: bool) -> list[dict[str, Any]]:
        def read(app: HubSpotApp) -> list[dict[str, Any]]:
            store = app.portal.store(object_type)
            return [
                _snapshot(record)
                for record in store.records.values()
                if record.archived == archived
            ]

        return self._on_loop(read)


def _snapshot(record: CrmRecord) -> dict[str, Any]:
    return record.as_json(dict(record.properties))


def _live(store: ObjectStore, record_id: str) -> CrmRecord:
    record = store.get(record_id)
    if record is None:
        raise KeyError(f"no live {store.singular} with id {record_id}")
    return record


def _check_object_type(object_type: str) -> None:
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {OBJECT_TYPES}, not {object_type!r}")
