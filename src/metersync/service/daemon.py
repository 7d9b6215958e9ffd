"""`metersync run`: the long-running service.

One active syncer per database: the service takes the same lock `reconcile` takes (a
PostgreSQL advisory lock, or a SQLite lease row) and keeps it while it runs; a second service
waits as a standby and takes over when the leader dies (at once when the leader's session or
process is gone, otherwise within one lease period). While a service holds the lock,
`reconcile` exits 3.

The leader runs APScheduler 3.x jobs, one at a time (one worker thread: they all talk to Stripe
and share its rate limit), each with max one instance and coalescing, so a long job delays the
next instead of stacking them: the incremental customer sync, the usage push, and the full
reconcile on a crontab schedule; HubSpot's companies when HubSpot is configured (a tick, and a
full reconcile after Stripe's); a sweep of stored webhook events; daily retention. With
OpenMeter as the source, the customer tick and the full reconcile pull the catalog first, and
the usage tick (and the full reconcile, 35 days back) pulls usage first.

SIGTERM or SIGINT: no new job starts; the running one starts no new action or round (those in
flight finish, so nothing is half-written), and the process exits 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from types import FrameType
from typing import Any

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter
from metersync.entitlements import EntitlementBook, EntitlementValues
from metersync.logs import get_logger
from metersync.pipeline import Pipeline, SyncRun
from metersync.service.api import api_routes
from metersync.service.entitlement_api import entitlement_routes
from metersync.service.http import HttpServer, Readiness, ServiceMetrics, Webhooks, build_app
from metersync.service.memory import limit_arenas, limit_sqlite_heap, release_free_memory
from metersync.service.retention import prune
from metersync.settings import Settings
from metersync.store.lock import RunLock

_log = get_logger("metersync.service")


@dataclass
class JobOutcome:
    """The last run of a job (Service.last). /readyz and /metrics keep their own figures
    (last_tick_success, ServiceMetrics)."""

    ok: bool
    counts: dict[str, int]


class Service:
    def __init__(self, settings: Settings, catalog: Catalog) -> None:
        self.settings = settings
        self.catalog = catalog
        self.stopping = threading.Event()
        self.busy = threading.Event()  # a job is running
        self.last: dict[str, JobOutcome] = {}
        self.role = "standby"
        self.scheduler: BackgroundScheduler | None = None
        self.last_tick_success: float | None = None
        self.metrics = ServiceMetrics()

    # -- the doors ---------------------------------------------------------------------------

    def run(self) -> int:
        """Wait to lead, lead until told to stop (or the lock is lost), then exit 0."""
        limit_arenas()
        limit_sqlite_heap(self.catalog.store)
        self._handle_signals()
        http = self._http()
        try:
            return self._lead()
        finally:
            if http is not None:
                http.stop()

    def _lead(self) -> int:
        lock = RunLock(self.catalog.store)
        service = self.settings.service
        announced = False
        while not lock.try_acquire():
            if not announced:
                _log.info("standby: another metersync holds the lock", holder=lock.holder())
                announced = True
            if self.stopping.wait(service.standby_poll_s):
                lock.close()
                return 0
        _log.info("leading: this service now syncs")
        self.role = "leader"
        self.metrics.leader.set(1)
        with lock.hold() as lost:
            scheduler = self._scheduler()
            scheduler.start()
            while not (self.stopping.is_set() or lost.is_set()):
                self.stopping.wait(0.5)
            if lost.is_set():
                _log.error("the lock was lost; stopping so that only one syncer runs")
                self.stopping.set()
            self.role = "stopping"
            # The running job starts no new action; calls in flight finish. Past the deadline
            # the process leaves anyway: what it had in flight is an intent the next run finishes.
            scheduler.shutdown(wait=False)
            deadline = time.monotonic() + self.settings.service.shutdown_deadline_s
            while self.busy.is_set() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.busy.is_set():
                _log.error(
                    "a job did not finish within the shutdown deadline; leaving it to the next run",
                    deadline_s=self.settings.service.shutdown_deadline_s,
                )
                sys.stderr.flush()
                os._exit(0)
        self.metrics.leader.set(0)
        _log.info("stopped")
        return 0

    def _http(self) -> HttpServer | None:
        address = self.settings.http.address
        if address is None:
            return None
        service = self.settings.service
        readiness = Readiness(
            role=lambda: self.role,
            last_tick_success=lambda: self.last_tick_success,
            # Three missed ticks (plus a job's own run time) before a leader counts as stuck.
            stale_after_s=3 * service.customer_tick_s + service.misfire_grace_s,
        )
        hooks = Webhooks(secrets=self.settings.stripe.webhook_secrets, on_event=self.wake_webhooks)
        meters = [Meter.of(m) for m in self.settings.meters]
        tokens = self.settings.http.token_values
        upstream = self.settings.openmeter.enabled
        api = api_routes(
            self.catalog,
            meters,
            tokens,
            upstream=(
                "subjects, customers and usage come from OpenMeter (openmeter.url is set): "
                "write them there"
                if upstream
                else None
            ),
        )
        book = EntitlementBook(self.catalog.store, meters)
        api += entitlement_routes(
            self.catalog,
            book,
            EntitlementValues(book, self.catalog.store, meters),
            tokens,
            # OpenMeter keeps the entitlements of the customers it is the source of.
            upstream=(
                "features, entitlements and grants live in OpenMeter (openmeter.url is set): "
                "write them there"
                if upstream
                else None
            ),
            legacy_subjects=service.legacy_subject_entitlements,
        )
        app = build_app(self.catalog.store, self.metrics, readiness, "stripe", hooks, api)
        server = HttpServer(app, *address)
        server.start()
        _log.info("http listening", bind=self.settings.http.bind)
        return server

    def stop(self) -> None:
        self.stopping.set()

    # -- jobs --------------------------------------------------------------------------------

    def _scheduler(self) -> BackgroundScheduler:
        service = self.settings.service
        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(1)},
            job_defaults={
                "coalesce": True,
                "max_instances": 1,
                "misfire_grace_time": int(service.misfire_grace_s),
            },
            timezone=UTC,
        )
        jobs: list[tuple[str, Any, Callable[[], None]]] = [
            ("customers", IntervalTrigger(seconds=service.customer_tick_s), self.customer_tick),
            ("usage", IntervalTrigger(seconds=service.usage_tick_s), self.usage_tick),
            (
                "full_reconcile",
                CronTrigger.from_crontab(service.full_reconcile_cron, timezone=UTC),
                self.full_reconcile,
            ),
        ]
        if self.settings.hubspot.enabled:
            jobs.append(
                ("hubspot", IntervalTrigger(seconds=service.hubspot_tick_s), self.hubspot_tick)
            )
        for name, trigger, job in jobs:
            scheduler.add_job(job, trigger, id=name, name=name)
        scheduler.add_job(
            self.retention_job,
            CronTrigger.from_crontab(self.settings.retention.cron, timezone=UTC),
            id="retention",
        )
        # Webhooks: woken by each new event (wake_webhooks), and swept every minute for any
        # stored while no leader ran (a standby stores them too).
        scheduler.add_job(self.webhook_job, IntervalTrigger(seconds=60), id="webhooks")
        # The first tick at once, not one interval after start.
        scheduler.add_job(self.customer_tick, id="customers-first", name="customers")
        self.scheduler = scheduler
        return scheduler

    def wake_webhooks(self) -> None:
        """A new webhook event is stored: process it now (after the running job, if any)."""
        scheduler = self.scheduler
        if scheduler is not None and self.role == "leader" and not self.stopping.is_set():
            scheduler.add_job(self.webhook_job, id="webhooks-now", replace_existing=True)

    def retention_job(self) -> None:
        try:
            counts = prune(self.catalog.store, self.settings.retention)
        except Exception as exc:  # noqa: BLE001 - logged; tomorrow's run tries again
            self.metrics.job_done("retention", False, {}, "stripe")
            _log.error("job failed", job="retention", error=f"{type(exc).__name__}: {exc}")
            return
        self.metrics.job_done("retention", True, {}, "stripe")
        if counts:
            _log.info("pruned", **counts)

    def webhook_job(self) -> None:
        self._run_job("webhooks", lambda pipeline: pipeline.process_webhooks())

    def customer_tick(self) -> None:
        self._run_job("customers", lambda pipeline: self._customers(pipeline, full=False))

    def full_reconcile(self) -> None:
        self._run_job("full_reconcile", lambda pipeline: self._customers(pipeline, full=True))
        if self.settings.hubspot.enabled:
            self._run_job(
                "hubspot_full_reconcile",
                lambda pipeline: self._crm(pipeline, full=True),
                target_name="hubspot",
            )

    def hubspot_tick(self) -> None:
        self._run_job(
            "hubspot", lambda pipeline: self._crm(pipeline, full=False), target_name="hubspot"
        )

    def usage_tick(self) -> None:
        self._run_job("usage", self._usage)

    async def _customers(self, pipeline: Pipeline, *, full: bool) -> dict[str, int]:
        await pipeline.pull_catalog()
        if full:
            # The nightly full reconcile re-reads usage back to Stripe's 35 days too.
            await pipeline.pull_usage(full=True)
        result = await pipeline.sync_stripe(SyncRun(full=full))
        return result.counts

    async def _crm(self, pipeline: Pipeline, *, full: bool) -> dict[str, int]:
        # With OpenMeter as the source, the entitlement figures the companies show are
        # OpenMeter's: pulled first (only with entitlement features configured); a failed pull
        # fails the job, and the next tick tries again.
        await pipeline.pull_entitlements()
        result = await pipeline.sync_crm(SyncRun(full=full))
        return result.counts

    async def _usage(self, pipeline: Pipeline) -> dict[str, int]:
        # With OpenMeter as the source, its figures are pulled first, for the push and for
        # the CRM's usage properties; a failed pull fails the job (logged, counted, retried
        # next tick): nothing is planned from a half-read source.
        await pipeline.pull_usage()
        counts: dict[str, int] = {}
        if pipeline.pushes_usage:
            counts = (await pipeline.push_usage()).counts()
        # After the push has bound what it billed: entitlement reads stay cheap.
        counts["entitlement_cells"] = await asyncio.to_thread(pipeline.fold_entitlement_usage)
        return counts

    def _run_job(
        self,
        name: str,
        work: Callable[[Pipeline], Awaitable[dict[str, int]]],
        *,
        target_name: str = "stripe",
    ) -> None:
        if self.stopping.is_set():
            return

        async def go() -> dict[str, int]:
            # Each job builds what its steps need, and only that: the HubSpot jobs need no
            # Stripe key.
            pipeline = Pipeline(self.settings, self.catalog, should_stop=self.stopping.is_set)
            try:
                return await work(pipeline)
            finally:
                limiters = pipeline.limiters()
                await pipeline.close()
                for limiter_name, limiter in limiters.items():
                    self.metrics.limiter_waits(limiter, limiter_name)

        self.busy.set()
        try:
            counts = asyncio.run(go())
        except Exception as exc:  # noqa: BLE001 - a job's failure is logged; the next one runs
            self.last[name] = JobOutcome(False, {})
            self.metrics.job_done(name, False, {}, target_name)
            _log.error("job failed", job=name, error=f"{type(exc).__name__}: {exc}")
            return
        finally:
            self.busy.clear()
            release_free_memory()
        self.last[name] = JobOutcome(True, counts)
        self.metrics.job_done(name, True, counts, target_name)
        if name == "customers":
            self.last_tick_success = time.time()
        if counts:
            _log.info("job done", job=name, counts=counts)

    def _handle_signals(self) -> None:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            _log.info("stopping", signal=signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
