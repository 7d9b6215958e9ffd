"""StripeEmulator: a stateful Stripe over real HTTP on 127.0.0.1, for tests, demos, benchmarks.

    from metersync.testing import StripeEmulator

    with StripeEmulator(latency_ms=50, rate_limit=25) as emulator:
        client = emulator.client()                      # a real stripe.StripeClient
        customer = client.v1.customers.create({"name": "ACME"})
        assert emulator.customers()[0]["id"] == customer.id

The server runs on its own thread and event loop. Its timers use the real monotonic clock, so
freezegun can move the business clock (created, 24 h idempotency, 35-day meter window, 15-minute
sessions) without freezing the server.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import stripe

from metersync.testing import _customers, _meters, _v2
from metersync.testing._app import ControlRead, EmulatorApp
from metersync.testing._config import EmulatorConfig
from metersync.testing._routes import Call, Route
from metersync.testing._server import BackgroundServer, Handler, ServedEmulator
from metersync.testing._webhooks import WebhookSender, build_events

T = TypeVar("T")
DEFAULT_TEST_KEY = "sk_test_metersync_emulator"


def all_routes() -> list[Route]:
    return [*_customers.routes(), *_meters.routes(), *_v2.routes()]


# `GET /_emulator/<name>`: what a test or a benchmark in another process can read in one go.
CONTROL_READS: dict[str, ControlRead] = {
    "meter_event_summaries": _meters.summaries_of_every_customer,
}


class StripeEmulator(ServedEmulator):
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        config: EmulatorConfig | None = None,
        **knobs: Any,
    ) -> None:
        """`knobs` are EmulatorConfig fields: latency_ms, jitter_ms, rate_limit, faults, …"""
        base = config or EmulatorConfig()
        self._config = base.updated(knobs) if knobs else base
        self._server = BackgroundServer(
            self._setup, host=host, port=port, name="stripe-emulator", teardown=self._teardown
        )
        self._app: EmulatorApp | None = None
        self._webhooks: WebhookSender | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def serve_forever(self, on_ready: Callable[[StripeEmulator], None] | None = None) -> None:
        """Run in the foreground until SIGINT or SIGTERM (the `metersync emulator` command)."""
        self.start()
        if on_ready is not None:
            on_ready(self)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        stop.wait()
        self.stop()

    async def _setup(self) -> Handler:
        loop = asyncio.get_running_loop()
        self._webhooks = WebhookSender()
        self._webhooks.start()
        self._app = EmulatorApp(
            all_routes(),
            self._config,
            loop_clock=loop.time,
            on_events=self._on_events,
            reads=CONTROL_READS,
        )
        return self._app

    async def _teardown(self) -> None:
        if self._webhooks is not None:
            await self._webhooks.stop()

    def _on_events(self, call: Call) -> None:
        app, sender = self._app, self._webhooks
        assert app is not None and sender is not None
        events = build_events(app.state, call.emitted, call.request_id, call.idempotency_key)
        config = app.config
        if config.webhook_url and config.webhook_secret:
            for event in events:
                sender.enqueue(
                    event,
                    config.webhook_url,
                    config.webhook_secret,
                    config.webhook_max_attempts,
                    config.webhook_retry_delay_s,
                )

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run `fn` on the emulator's loop thread (its state has no locks) and return its result."""
        if self._app is None:
            raise RuntimeError("the emulator is not running; call start() or use `with`")
        return self._server.call(fn)

    # -- what tests use --------------------------------------------------------------------------

    def client(
        self,
        api_key: str = DEFAULT_TEST_KEY,
        *,
        max_network_retries: int = 0,
        timeout: float = 80.0,
    ) -> stripe.StripeClient:
        """A real stripe-python client aimed at this emulator (sync and async methods)."""
        return stripe.StripeClient(
            api_key,
            base_addresses={"api": self.url, "meter_events": self.url},
            max_network_retries=max_network_retries,
            http_client=stripe.HTTPXClient(allow_sync_methods=True, timeout=timeout),
        )

    @property
    def config(self) -> EmulatorConfig:
        return self._on_loop(lambda: self._require_app().config)

    def configure(self, **changes: Any) -> EmulatorConfig:
        """Change knobs while running (same names as the constructor's)."""
        return self._on_loop(lambda: self._require_app().configure(changes))

    def reset(self) -> None:
        """Forget every object, idempotent result, counter and logged request."""
        self._on_loop(lambda: self._require_app().reset())

    def stats(self) -> dict[str, Any]:
        return self._on_loop(lambda: self._require_app().stats())

    def in_flight(self) -> int:
        """Idempotent requests being handled now (the request log holds finished ones only)."""
        return self._on_loop(lambda: len(self._require_app().in_flight))

    def requests(self, endpoint: str | None = None) -> list[dict[str, Any]]:
        """The request log, oldest first, optionally for one endpoint (customers.create, …)."""
        return self._on_loop(
            lambda: [
                dict(r)
                for r in self._require_app().log
                if endpoint is None or r["endpoint"] == endpoint
            ]
        )

    def customers(self, *, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Live customers, newest first (and deleted ids as tombstones when asked)."""

        def read() -> list[dict[str, Any]]:
            state = self._require_app().state
            live = sorted(state.customers.values(), key=lambda c: -state.customer_order[c["id"]])
            out = [dict(c) for c in live]
            if include_deleted:
                out += [
                    {"id": cid, "object": "customer", "deleted": True}
                    for cid in sorted(state.deleted_customers)
                ]
            return out

        return self._on_loop(read)

    def meters(self) -> list[dict[str, Any]]:
        return self._on_loop(lambda: [dict(m) for m in self._require_app().state.meters.values()])

    def meter_events(self, *, include_cancelled: bool = False) -> list[dict[str, Any]]:
        """Accepted meter events (v1 and v2), in the order they were accepted."""
        return self._on_loop(
            lambda: [
                dict(r.event, cancelled=r.cancelled)
                for r in self._require_app().state.meter_events
                if include_cancelled or not r.cancelled
            ]
        )

    def lose_meter_events(self, value: int) -> int:
        """Fault injection: accepted meter events of this value vanish from the summaries, as if
        Stripe dropped them after accepting them (the v2 stream validates later). Returns how
        many were lost; `meter_events(include_cancelled=True)` still lists them."""

        def lose() -> int:
            lost = [r for r in self._require_app().state.meter_events if r.value == value]
            for record in lost:
                record.cancelled = True
            return len(lost)

        return self._on_loop(lose)

    def meter_event_summaries(
        self, meter_id: str, start: int, end: int, *, window: str | None = None
    ) -> list[dict[str, Any]]:
        """Every customer's event summaries of one meter over [start, end) (window "hour" or
        "day", or None for one summary each), as the summaries endpoint answers them, for
        the customers that have events there: [{"customer": id, "summaries": [...]}]."""
        params: dict[str, Any] = {"meter": meter_id, "start_time": start, "end_time": end}
        if window is not None:
            params["value_grouping_window"] = window
        return self._on_loop(
            lambda: _meters.summaries_of_every_customer(self._require_app().state, params)["data"]
        )

    def meter_event_errors(self) -> list[dict[str, Any]]:
        """Events of the v2 stream rejected after acceptance (Stripe reports these by webhook)."""
        return self._on_loop(lambda: list(self._require_app().state.meter_event_errors))

    def events(self) -> list[dict[str, Any]]:
        """Webhook events (customer.created/updated/deleted), in order."""
        return self._on_loop(lambda: list(self._require_app().state.events))

    def webhook_deliveries(self) -> list[dict[str, Any]]:
        return self._on_loop(lambda: list(self._require_webhooks().deliveries))

    def _require_app(self) -> EmulatorApp:
        assert self._app is not None
        return self._app

    def _require_webhooks(self) -> WebhookSender:
        assert self._webhooks is not None
        return self._webhooks
