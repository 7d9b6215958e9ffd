"""The service's HTTP face: /healthz, /readyz, /metrics (Prometheus), POST /webhooks/stripe and
the OpenMeter-compatible API's routes (metersync.service.api), served by uvicorn in a thread of
the service process.

- /healthz: the process answers (liveness).
- /readyz: the database answers, the role (leader or standby), and for a leader the age of the
  last successful customer tick: 503 when the database is unreachable or the leader's ticks
  have not succeeded for longer than `stale_after_s`.
- /metrics: job runs by result, last success times, sync actions by target, kind and result,
  usage reports by outcome, webhook deliveries, rate-limiter waits and 429s, the ledger's
  reports by state and its lag, usage waiting for a customer link, and whether this process
  leads.

Errors outside a handler's own answers (no such path, wrong method, an unexpected exception) are
problem+json, each naming its request id (service/problems.py).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
import uvicorn
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from metersync.service.problems import RequestContext, http_problem
from metersync.service.webhooks import BadDelivery, receive
from metersync.store import Store
from metersync.usage.status import usage_status

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class ServiceMetrics:
    """What the service counts, in a registry of its own (not the process-global one)."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.job_runs = Counter(
            "metersync_job_runs",
            "Job runs by job and result.",
            ["job", "result"],
            registry=self.registry,
        )
        self.last_success = Gauge(
            "metersync_job_last_success_timestamp_seconds",
            "When each job last succeeded (Unix time).",
            ["job"],
            registry=self.registry,
        )
        self.actions = Counter(
            "metersync_sync_actions",
            "Customer sync outcomes by target and kind (created, updated, failed, ...).",
            ["target", "kind"],
            registry=self.registry,
        )
        self.usage_reports = Counter(
            "metersync_usage_reports",
            "Usage reports by outcome (sent, delivered, duplicates, failed, late, held).",
            ["target", "outcome"],
            registry=self.registry,
        )
        self.webhooks = Counter(
            "metersync_webhooks",
            "Stripe webhook deliveries: stored, duplicate, refused (bad signature).",
            ["result"],
            registry=self.registry,
        )
        self.limiter_wait = Counter(
            "metersync_rate_limiter_wait_seconds",
            "Time calls waited for their rate limiter.",
            ["limiter"],
            registry=self.registry,
        )
        self.limiter_throttled = Counter(
            "metersync_rate_limiter_throttled",
            "429s that slowed a rate limiter down.",
            ["limiter"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "metersync_leader",
            "1 while this process is the active syncer.",
            registry=self.registry,
        )

    def limiter_waits(self, limiter: Any, name: str) -> None:
        """Add what one job's rate limiter waited (and how often Stripe throttled it)."""
        if limiter is None:
            return
        self.limiter_wait.labels(name).inc(limiter.stats.waited_s)
        self.limiter_throttled.labels(name).inc(limiter.stats.throttled)

    def job_done(self, job: str, ok: bool, counts: dict[str, int], target: str) -> None:
        self.job_runs.labels(job, "ok" if ok else "error").inc()
        if ok:
            self.last_success.labels(job).set(time.time())
        family = self.usage_reports if job == "usage" else self.actions
        for kind, count in counts.items():
            family.labels(target, kind).inc(count)


class _LedgerCollector(Collector):
    """The ledger's state, read from the database at scrape time."""

    def __init__(self, store: Store, target: str) -> None:
        self.store = store
        self.target = target

    def collect(self) -> Any:
        try:
            status = usage_status(self.store, self.target)
        except Exception:  # noqa: BLE001 - a scrape never fails on the database; /readyz says so
            return
        reports = GaugeMetricFamily(
            "metersync_ledger_reports", "Usage ledger reports by state.", labels=["state"]
        )
        for state, count in sorted(status["ledger"].items()):
            reports.add_metric([state], count)
        yield reports
        yield GaugeMetricFamily(
            "metersync_ledger_lag_seconds",
            "Age of the oldest usage report written but not yet confirmed.",
            value=status["lagSeconds"],
        )
        yield GaugeMetricFamily(
            "metersync_usage_waiting_rows",
            "Usage rows waiting for their subject's customer to be linked.",
            value=status["waiting"]["usageRows"],
        )


@dataclass
class Webhooks:
    """What POST /webhooks/stripe needs: the signing secrets, and whom to tell of a new event."""

    secrets: Callable[[], list[str]]
    on_event: Callable[[], None]


@dataclass
class Readiness:
    """What /readyz reads from the running service."""

    role: Callable[[], str]  # "leader", "standby" or "stopping"
    last_tick_success: Callable[[], float | None]  # Unix time of the last good customer tick
    stale_after_s: float


def build_app(
    store: Store,
    metrics: ServiceMetrics,
    readiness: Readiness,
    target: str,
    webhooks: Webhooks | None = None,
    api: list[Route] | None = None,
) -> Starlette:
    metrics.registry.register(_LedgerCollector(store, target))

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    def database_problem() -> str | None:
        try:
            with store.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # noqa: BLE001 - unreachable, whatever the driver says
            return f"database unreachable: {type(exc).__name__}"
        return None

    async def readyz(_: Request) -> Response:
        # Database work runs in a worker thread, never on the event loop (metersync.sync).
        problem = await run_in_threadpool(database_problem)
        problems: list[str] = [problem] if problem else []
        role = readiness.role()
        last = readiness.last_tick_success()
        age = None if last is None else round(time.time() - last, 1)
        if role == "leader" and (age is None or age > readiness.stale_after_s):
            problems.append(
                "no successful customer tick yet"
                if age is None
                else f"last successful customer tick {age:g} s ago"
            )
        body = {
            "status": "ready" if not problems else "not ready",
            "role": role,
            "lastTickAgeSeconds": age,
            "problems": problems,
        }
        return JSONResponse(body, status_code=200 if not problems else 503)

    async def prometheus(_: Request) -> Response:
        # Collecting reads the ledger (_LedgerCollector): in a worker thread.
        body = await run_in_threadpool(generate_latest, metrics.registry)
        return Response(body, media_type=PROMETHEUS_TEXT)

    async def stripe_webhook(request: Request) -> Response:
        if webhooks is None or not webhooks.secrets():
            return JSONResponse({"error": "webhooks are not configured"}, status_code=503)
        payload = await request.body()
        try:
            received = await run_in_threadpool(
                receive,
                store,
                payload,
                request.headers.get("stripe-signature"),
                webhooks.secrets(),
            )
        except BadDelivery as exc:
            metrics.webhooks.labels("refused").inc()
            return JSONResponse({"error": str(exc)}, status_code=400)
        metrics.webhooks.labels("duplicate" if received.duplicate else "stored").inc()
        if not received.duplicate:
            webhooks.on_event()
        return JSONResponse({"received": True, "duplicate": received.duplicate})

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", prometheus),
            Route("/webhooks/stripe", stripe_webhook, methods=["POST"]),
            *(api or []),
        ],
        # Every request gets an id (X-Request-Id, its log lines, a problem's `instance`); an
        # unknown path or method, or an exception nothing handled, answers problem+json.
        middleware=[Middleware(RequestContext)],
        exception_handlers={HTTPException: http_problem},
    )


API_THREADS = 8


class HttpServer:
    """uvicorn in a daemon thread; `stop()` asks it to finish and waits."""

    def __init__(self, app: Starlette, host: str, port: int) -> None:
        config = uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self._run, name="http", daemon=True)

    def _run(self) -> None:
        async def serve() -> None:
            # The API's handlers run in anyio's thread pool (40 threads by default). Each
            # thread that allocates keeps caches of its own, and the catalog's writes take
            # turns anyway: a few threads serve as many requests, in less memory.
            anyio.to_thread.current_default_thread_limiter().total_tokens = API_THREADS
            await self.server.serve()

        asyncio.run(serve())

    def start(self) -> None:
        self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)
