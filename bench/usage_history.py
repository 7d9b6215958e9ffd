"""Usage at scale: ingesting, planning, backfilling and ticking when the store holds a long
history of events.

Targets (the issue "Usage at scale"), with 10,000,000 events over 30 days, 10,000 customers and
three billed meters (SUM, COUNT, UNIQUE_COUNT):

* the first push's plan (a dry run) ≤ 15 s;
* a no-op push tick ≤ 0.1 s, and ≤ 1.5 × the same tick at 100,000 events of the same shape;
* a tick after 1,000 new events among 100 customers ≤ 0.3 s;
* ingesting 1,000,000 more events ≥ 50,000/s on SQLite, ≥ 30,000/s on PostgreSQL;
* the peak RSS of every one of those steps ≤ 300 MB.

Per database (SQLite: a new file, WAL; PostgreSQL: a new schema, dropped afterwards) and per
size (--small-events, then --events), against a Stripe emulator of its own (bench/emulator.py
--serve: latency 0, no limits), metersync's own code paths all the way:

  setup  the customers (one subject each) through Catalog.create_customer, synced to the
         emulator by the customer sync, and the Stripe meters (Pipeline.sync_stripe,
         Pipeline.ensure_meters);
  a      the history: events over the 30 days before the bench's "now", in time order, each to
         a random customer, generated a chunk at a time and ingested through ingest_json;
  b      the first push (the backfill): the usage bound to its customers (the push's first
         stretch, which a dry run skips: unbound usage plans nothing), a dry run (the plan),
         then the push itself over the v2 meter event stream;
  c      no-op push ticks (nothing new);
  d      ticks, each after 1,000 new events among 100 customers ingested just before;
  e      (the larger size only) 1,000,000 more events ingested.

Each step runs in a fresh child process (bench/usage_history_step.py), which reports its engine
time (around metersync's call, without start-up, imports or event generation), its CPU time
and its peak RSS (VmHWM). After the backfill and after the ticks, the ledger's delivered
totals must equal, for every customer and meter, what the generated events add up to, and the
emulator's event summaries must agree for a sample of customers.

    .venv/bin/python bench/usage_history.py                  # the full run: hours, GBs of disk
    .venv/bin/python bench/usage_history.py --quick          # a smoke run, writes nothing
    .venv/bin/python bench/usage_history.py --events 200000 --small-events 20000 --db sqlite

Writes bench/results/usage_history.json and .md; exits 0 when every target is met.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from usage_history_events import METERS_TOML, SPLIT, USERS, Expected, customer_key
from usage_history_step import RESULT_MARKER, status_mb

METERS = tomllib.loads(METERS_TOML)["meters"]
HISTORY_DAYS = 30
DAY = 86400
API_KEY = "sk_test_bench_history"
RESULTS_DIR = Path(__file__).resolve().parent / "results"
STEP_SCRIPT = Path(__file__).resolve().parent / "usage_history_step.py"
DATABASES = ("sqlite", "postgresql")
WINDOWS = ("1h", "1d")

TARGET_PLAN_S = 15.0
TARGET_NOOP_S = 0.1
TARGET_NOOP_RATIO = 1.5
TARGET_TICK_S = 0.3
TARGET_INGEST = {"sqlite": 50_000.0, "postgresql": 30_000.0}
TARGET_RSS_MB = 300.0
# What a stored event takes on SQLite with its share of the ledger (about 1 KB at 200,000 events
# and a 1h window, measured), with room to spare: the free-space check before a run.
SQLITE_BYTES_PER_EVENT = 1200
# The meter event stream's budget at Stripe, requests/s: the sender's limiter stays out of the
# way of a local emulator.
STREAM_RATE = 10_000


class StepFailed(Exception):
    def __init__(self, message: str, label: str, peak_mb: float | None, stderr: list[str]) -> None:
        super().__init__(message)
        self.label = label
        self.peak_mb = peak_mb  # the step's VmHWM when last seen
        self.stderr = stderr  # the step's last lines on stderr (a traceback)


# -- the stores ----------------------------------------------------------------------------------


@contextlib.contextmanager
def sqlite_url(directory: Path) -> Iterator[str]:
    """A new SQLite file, migrated (and so in WAL mode); removed afterwards."""
    from metersync.store import Store

    path = directory / "metersync.db"
    url = f"sqlite:///{path}"
    Store.open(url).dispose()
    try:
        yield url
    finally:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


@contextlib.contextmanager
def postgres_url(admin_url: str) -> Iterator[str]:
    """A new PostgreSQL schema, migrated; dropped afterwards."""
    from ingest import postgres_schema

    from metersync.store import Store
    from metersync.store.engine import build_engine

    with postgres_schema(admin_url, "bench_history") as url:
        store = Store(build_engine(url))
        try:
            store.upgrade()
        finally:
            store.dispose()
        yield url


def vacuum_analyze(url: str) -> float:
    """VACUUM (ANALYZE) every table of the store's schema; the seconds it took."""
    import sqlalchemy as sa

    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")  # VACUUM refuses a transaction
    started = time.perf_counter()
    try:
        with engine.connect() as conn:
            tables = conn.exec_driver_sql(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            ).scalars()
            for table in list(tables):
                conn.exec_driver_sql(f'VACUUM (ANALYZE) "{table}"')
    finally:
        engine.dispose()
    return round(time.perf_counter() - started, 1)


def store_mb(url: str) -> float:
    """What the store takes on disk: the SQLite files, or the schema's tables and indexes."""
    if url.startswith("sqlite"):
        path = url.removeprefix("sqlite:///")
        return round(
            sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p)) / 1e6, 1
        )
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            size = conn.exec_driver_sql(
                "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
            ).scalar()
    finally:
        engine.dispose()
    return round(int(size or 0) / 1e6, 1)


def write_config(path: Path, database_url: str, emulator_url: str, window: str) -> None:
    """The settings the CLI would read: the store, the emulator as Stripe, the v2 stream."""
    path.write_text(
        f"""
[database]
url = {json.dumps(database_url)}

[stripe]
api_key = "{API_KEY}"
api_base = {json.dumps(emulator_url)}

[sync]
rate_limit = 100000
concurrency = 32

[usage]
window = "{window}"
stripe_api = "v2"
meter_event_rate = {STREAM_RATE}

[log]
level = "warning"
{METERS_TOML}"""
    )


# -- running a step ------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """This environment without metersync's settings: the step reads its config file only."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("METERSYNC_") and k != "STRIPE_API_KEY"
    }


def run_step(
    kind: str, spec: dict[str, Any], workdir: Path, label: str, args: argparse.Namespace
) -> dict[str, Any]:
    """Run one step in a fresh process; stop it past --step-timeout or --rss-cap-mb."""
    spec_path = workdir / f"{label}.json"
    spec_path.write_text(json.dumps(spec))
    out_path, err_path = workdir / f"{label}.out", workdir / f"{label}.err"
    started = time.perf_counter()
    seen_peak: float | None = None
    stopped = None
    with out_path.open("w") as out, err_path.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(STEP_SCRIPT), kind, str(spec_path)],
            stdout=out,
            stderr=err,
            env=child_env(),
        )
        while proc.poll() is None:
            rss = status_mb(proc.pid, "VmRSS")
            seen_peak = status_mb(proc.pid, "VmHWM") or seen_peak
            if rss is not None and rss > args.rss_cap_mb:
                stopped = f"killed at {rss:,.0f} MB of RSS (--rss-cap-mb {args.rss_cap_mb:,})"
            elif time.perf_counter() - started > args.step_timeout:
                stopped = f"killed after {args.step_timeout:,} s (--step-timeout)"
            if stopped:
                proc.kill()
                proc.wait()
                break
            time.sleep(0.05)
    wall = time.perf_counter() - started
    lines = [x for x in out_path.read_text().splitlines() if x.startswith(RESULT_MARKER)]
    # Cut: an exception can quote a whole SQL statement with its parameters.
    errors = [x[:300] for x in err_path.read_text().splitlines() if x.strip()]
    if stopped or proc.returncode != 0 or not lines:
        # What went wrong is the exception's own line ("module.Error: message"), the last one
        # that is neither a frame, nor a quoted statement, nor a note.
        raised = [x for x in errors if x[0].isalpha() and ": " in x]
        said = raised[-1] if raised else errors[-1] if errors else "nothing on stderr"
        why = stopped or f"exit code {proc.returncode}: {said}"
        peak = f", peak RSS {seen_peak:,.0f} MB" if seen_peak else ""
        message = f"step {label} ({kind}) failed, {why}{peak}"
        raise StepFailed(message, label, seen_peak, errors[-30:])
    figures: dict[str, Any] = json.loads(lines[-1][len(RESULT_MARKER) :])
    figures["process_s"] = round(wall, 3)
    return figures


# -- the checks ----------------------------------------------------------------------------------


def ledger_problems(url: str, expected: Expected) -> list[str]:
    """Every (customer, meter) whose delivered reports do not add up to what its events bill,
    and any report not delivered."""
    from sqlalchemy import func, select

    from metersync.states import LedgerState
    from metersync.store import LedgerRow, Store

    row = LedgerRow.__table__.c  # type: ignore[attr-defined]
    store = Store.open(url)
    try:
        with store.read_session() as session:
            states = dict(
                session.execute(select(row.state, func.count()).group_by(row.state)).all()
            )
            delivered = {
                (customer, meter): int(total)
                for customer, meter, total in session.execute(
                    select(row.customer_key, row.meter, func.sum(row.value))
                    .where(row.state == LedgerState.DELIVERED.value)
                    .group_by(row.customer_key, row.meter)
                )
            }
    finally:
        store.dispose()
    problems = [
        f"{n:,} reports {state}" for state, n in states.items() if state != LedgerState.DELIVERED
    ]
    billed = expected.billed()
    wrong = [
        k for k in sorted(billed.keys() | delivered.keys()) if billed.get(k) != delivered.get(k)
    ]
    problems += [
        f"{c} {m}: delivered {delivered.get((c, m), 0):,}, the events bill "
        f"{billed.get((c, m), 0):,}"
        for c, m in wrong[:5]
    ]
    if len(wrong) > 5:
        problems.append(f"... {len(wrong) - 5:,} more (customer, meter) totals differ")
    return problems


def emulator_problems(
    emulator_url: str, url: str, expected: Expected, sample: list[int], start_s: int
) -> list[str]:
    """Stripe's event summaries (the emulator's, one per customer and meter over the whole
    history) against what the events of `sample`'s customers bill."""
    import httpx

    from metersync.store import Store
    from metersync.store.links import LinkTable

    store = Store.open(url)
    try:
        external = LinkTable(store, "stripe").routable_external_ids()
    finally:
        store.dispose()
    billed = expected.billed()
    end = (int(time.time()) // 60 + 61) * 60  # past every stamp, on a minute as Stripe wants
    problems = []
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=emulator_url, headers=auth, timeout=600) as http:
        listed = http.get("/v1/billing/meters", params={"limit": 100})
        listed.raise_for_status()
        ids = {m["event_name"]: m["id"] for m in listed.json()["data"]}
        meters = {m["slug"]: ids[m["stripe"]["event_name"]] for m in METERS}
        for index in sample:
            key = customer_key(index)
            if key not in external:
                problems.append(f"{key} has no Stripe customer to bill")
                continue
            for slug, meter_id in sorted(meters.items()):
                answer = http.get(
                    f"/v1/billing/meters/{meter_id}/event_summaries",
                    params={
                        "customer": external[key],
                        "start_time": start_s // DAY * DAY - DAY,
                        "end_time": end,
                    },
                )
                if answer.status_code != 200:
                    problems.append(
                        f"Stripe's {slug} for {key}: {answer.status_code} {answer.text}"
                    )
                    continue
                got = sum(s["aggregated_value"] for s in answer.json()["data"])
                if got != billed.get((key, slug), 0):
                    problems.append(
                        f"Stripe's {slug} for {key}: {got:,}, the events bill "
                        f"{billed.get((key, slug), 0):,}"
                    )
    return problems


# -- one scenario: a database at one size ---------------------------------------------------------


class Scenario:
    """The steps, in order, on one new store against one new emulator."""

    def __init__(
        self, database: str, size: str, events: int, args: argparse.Namespace, now_s: int
    ) -> None:
        self.database, self.size, self.events = database, size, events
        self.args, self.now_s = args, now_s
        self.steps: dict[str, dict[str, Any]] = {}
        self.checks: dict[str, list[str]] = {}
        self.context: dict[str, Any] = {}
        self.errors: list[dict[str, Any]] = []

    def run(self, scratch: Path) -> dict[str, Any]:
        from customers import Emulator
        from emulator import emulator_process

        workdir = scratch / f"{self.database}-{self.size}"
        workdir.mkdir()
        started = time.monotonic()
        with (
            self._store(workdir) as url,
            emulator_process() as (emulator_url, emulator_pid),
        ):
            emulator = Emulator(emulator_url, emulator_pid)
            config = workdir / "metersync.toml"
            write_config(config, url, emulator_url, self.args.window)
            try:
                self._steps(workdir, config, url, emulator)
            except StepFailed as exc:
                self._failed(exc)
            finally:
                emulator.close()
            self.context["store_mb"] = store_mb(url)
            self.context["emulator_peak_rss_mb"] = status_mb(emulator_pid, "VmHWM")
        self.context["wall_s"] = round(time.monotonic() - started, 1)
        return {
            "database": self.database,
            "size": self.size,
            "events": self.events,
            "steps": self.steps,
            "checks": self.checks,
            "context": self.context,
            "errors": self.errors,
        }

    def _store(self, workdir: Path) -> contextlib.AbstractContextManager[str]:
        if self.database == "sqlite":
            return sqlite_url(workdir)
        return postgres_url(self.args.postgres_url)

    def _steps(self, workdir: Path, config: Path, url: str, emulator: Any) -> None:
        args = self.args
        expected_path = workdir / "expected.json"
        base = {"config": str(config), "customers": args.customers, "expected": str(expected_path)}
        history = {"start_s": self.now_s - HISTORY_DAYS * DAY, "span_s": HISTORY_DAYS * DAY}

        def step(label: str, kind: str, **spec: Any) -> dict[str, Any]:
            before = emulator.counts()
            figures = run_step(kind, {**base, **spec}, workdir, label, args)
            figures["requests"] = requests_between(before, emulator.counts())
            self.steps[label] = figures
            print(f"  {self.database} {self.size} {describe(label, figures)}", flush=True)
            return figures

        def check(name: str, sample: list[int]) -> None:
            expected = Expected.load(expected_path, args.customers)
            problems = ledger_problems(url, expected)
            problems += emulator_problems(emulator.url, url, expected, sample, history["start_s"])
            self.checks[name] = problems
            shown = "; ".join(problems[:3]) if problems else "exact"
            print(f"  {self.database} {self.size} check {name}: {shown}", flush=True)

        rng = random.Random(args.seed)
        step("setup", "customers")
        ingest = {"chunk": args.chunk, "pool": None}
        step(
            "a_history",
            "ingest",
            prefix="h-",
            events=self.events,
            seed=args.seed,
            **history,
            **ingest,
        )
        self._maintain(url, "after_history")
        try:
            self._pushes(step, check, rng, url)
        except StepFailed as exc:
            # The ingest below does not depend on the pushes: it is still measured.
            self._failed(exc)
        if self.size == "large":
            step(
                "e_more",
                "ingest",
                prefix="m-",
                events=args.more_events,
                seed=args.seed - 1,
                **history,
                **ingest,
            )

    def _pushes(self, step: Any, check: Any, rng: random.Random, url: str) -> None:
        """b, c and d: the first push, no-op ticks, ticks after new events."""
        args = self.args
        step("b_bind", "bind")
        self._maintain(url, "after_bind")
        step("b_plan", "push", dry_run=True)
        step("b_backfill", "push", dry_run=False)
        self._maintain(url, "after_backfill")
        check("after_backfill", rng.sample(range(args.customers), args.check_customers))
        for tick in range(1, args.ticks + 1):
            step(f"c_noop_{tick}", "push", dry_run=False)
        touched: list[int] = []
        for tick in range(1, args.ticks + 1):
            pool = rng.sample(range(args.customers), args.new_customers)
            touched += pool
            step(
                f"d_new_{tick}",
                "ingest",
                prefix=f"n{tick}-",
                events=args.new_events,
                seed=args.seed + tick,
                start_s=self.now_s - 3600,
                span_s=3600,
                chunk=args.chunk,
                pool=pool,
            )
            step(f"d_tick_{tick}", "push", dry_run=False)
        check("after_ticks", touched[: args.check_customers])

    def _maintain(self, url: str, label: str) -> None:
        """PostgreSQL only: VACUUM (ANALYZE) the schema's tables, as autovacuum would after a
        bulk write (millions of rows inserted, or updated by binding). This machine's cluster
        runs with `autovacuum = off`; without it the 10 million dead row versions binding
        leaves are walked by every later read (docs/scale.md). Timed apart from the steps."""
        if self.database != "postgresql":
            return
        seconds = vacuum_analyze(url)
        self.context.setdefault("maintenance_s", {})[label] = seconds
        shown = f"  {self.database} {self.size} VACUUM (ANALYZE) {label}: {seconds:.1f} s"
        print(shown, flush=True)

    def _failed(self, exc: StepFailed) -> None:
        self.errors.append(
            {"step": exc.label, "error": str(exc), "peak_rss_mb": exc.peak_mb, "stderr": exc.stderr}
        )
        print(f"  {self.database} {self.size} {exc}", flush=True)
        for line in exc.stderr[-8:]:
            print(f"    | {line}", flush=True)


def requests_between(
    before: dict[str, dict[str, int]], after: dict[str, dict[str, int]]
) -> dict[str, Any]:
    from customers import delta, non_2xx, total

    made = delta(before, after)
    return {"total": total(made), "non_2xx": non_2xx(made), "by_endpoint": made}


def what(figures: dict[str, Any]) -> str:
    """What a step did, in a few words."""
    parts = []
    if "events_per_s" in figures:
        parts.append(
            f"{figures['accepted']:,} events stored, {figures['events_per_s'] or 0:,}/s; "
            f"generating them {figures['generating_s']:.1f} s more"
        )
    if "counts" in figures:
        parts.append(f"{figures['counts'] or 'nothing to do'}, bound {figures['bound']:,}")
    elif "bound" in figures:
        parts.append(f"bound {figures['bound']:,} usage rows")
    if "synced" in figures:
        parts.append(
            f"synced {figures['synced']}; catalog {figures['catalog_s']:.1f} s, meters "
            f"{figures['meters_s']:.1f} s"
        )
    if figures["requests"]["total"]:
        parts.append(f"{figures['requests']['total']:,} requests to the emulator")
    return "; ".join(parts)


def describe(label: str, figures: dict[str, Any]) -> str:
    return (
        f"{label:12} engine {figures['engine_s']:8.3f} s  CPU {figures['cpu_s']:8.3f} s  "
        f"peak RSS {figures['peak_rss_mb']:6.1f} MB  (process {figures['process_s']:.1f} s)  "
        + what(figures)
    )


# -- the verdict ---------------------------------------------------------------------------------


def median_engine(scenario: dict[str, Any], prefix: str) -> float | None:
    found = [f["engine_s"] for label, f in scenario["steps"].items() if label.startswith(prefix)]
    return statistics.median(found) if found else None


def row(
    database: str, figure: str, value: float | None, shown: str, target: str, passed: bool
) -> dict[str, Any]:
    return {
        "database": database,
        "figure": figure,
        "value": value,
        "shown": shown if value is not None else "not measured",
        "target": target,
        "result": "PASS" if passed and value is not None else "FAIL",
    }


def verdict_rows(
    database: str, small: dict[str, Any], large: dict[str, Any], args: argparse.Namespace
) -> list[dict[str, Any]]:
    at = f"at {large['events']:,} events"
    steps = large["steps"]
    plan = steps.get("b_plan", {}).get("engine_s")
    noop_large, noop_small = median_engine(large, "c_noop_"), median_engine(small, "c_noop_")
    ratio = noop_large / noop_small if noop_large is not None and noop_small else None
    tick = median_engine(large, "d_tick_")
    more = steps.get("e_more", {}).get("events_per_s")
    # Every step but the set-up, and those that failed as far as they were seen.
    peaks = {k: f["peak_rss_mb"] for k, f in steps.items() if k != "setup"}
    peaks |= {
        f"{e['step']}, failed": e["peak_rss_mb"]
        for e in large["errors"]
        if e["step"] != "setup" and e["peak_rss_mb"] is not None
    }
    worst = max(peaks, key=lambda k: peaks[k], default=None)
    rss = peaks[worst] if worst else None
    problems = correctness(small) + correctness(large)
    return [
        row(
            database,
            f"plan of the first push (dry run), {at}",
            plan,
            f"{plan or 0:.2f} s",
            f"≤ {TARGET_PLAN_S:g} s",
            plan is not None and plan <= TARGET_PLAN_S,
        ),
        row(
            database,
            f"no-op tick (median of {args.ticks}), {at}",
            noop_large,
            f"{noop_large or 0:.3f} s",
            f"≤ {TARGET_NOOP_S:g} s",
            noop_large is not None and noop_large <= TARGET_NOOP_S,
        ),
        row(
            database,
            f"no-op tick, {large['events']:,} / {small['events']:,} events",
            ratio,
            f"{ratio or 0:.2f}× ({noop_large or 0:.3f} s / {noop_small or 0:.3f} s)",
            f"≤ {TARGET_NOOP_RATIO:g}×",
            ratio is not None and ratio <= TARGET_NOOP_RATIO,
        ),
        row(
            database,
            f"tick after {args.new_events:,} new events among {args.new_customers:,} "
            f"customers (median of {args.ticks}), {at}",
            tick,
            f"{tick or 0:.3f} s",
            f"≤ {TARGET_TICK_S:g} s",
            tick is not None and tick <= TARGET_TICK_S,
        ),
        row(
            database,
            f"ingest of {args.more_events:,} more events, {at}",
            more,
            f"{more or 0:,.0f} events/s",
            f"≥ {TARGET_INGEST[database]:,.0f}/s",
            more is not None and more >= TARGET_INGEST[database],
        ),
        row(
            database,
            f"peak RSS of every step a–e, {at}",
            rss,
            f"{rss or 0:.0f} MB ({worst})",
            f"≤ {TARGET_RSS_MB:g} MB",
            rss is not None and rss <= TARGET_RSS_MB,
        ),
        row(
            database,
            "figures exact (ledger and Stripe against the events, both sizes)",
            float(len(problems)),
            "; ".join(problems[:3]) or "exact",
            "no difference",
            not problems,
        ),
    ]


def correctness(scenario: dict[str, Any]) -> list[str]:
    """What must hold whatever the timings: every event stored, the plan is the push, nothing
    failed or waits, a no-op tick does nothing, a tick after new events pushes them."""
    where = f"{scenario['size']}:"
    problems = [f"{where} {e['error']}" for e in scenario["errors"]]
    steps = scenario["steps"]
    for label, figures in steps.items():
        if figures.get("rejected"):
            problems.append(
                f"{where} {label} rejected {figures['rejected']:,} events: "
                f"{figures['rejections'][:1]}"
            )
        if figures.get("failures") or figures.get("skipped") or figures.get("waiting_subjects"):
            problems.append(
                f"{where} {label}: failures {figures.get('failures')}, skipped "
                f"{figures.get('skipped')} {figures.get('skipped_reasons')}, waiting subjects "
                f"{figures.get('waiting_subjects')}"
            )
        if figures["requests"]["non_2xx"]:
            problems.append(f"{where} {label}: answers {figures['requests']['non_2xx']}")
        counts = figures.get("counts")
        if label.startswith("c_noop_") and (counts or figures["requests"]["total"]):
            problems.append(
                f"{where} {label} was no no-op: {counts}, {figures['requests']['total']} requests"
            )
        if label.startswith("d_tick_") and not counts.get("delivered"):
            problems.append(f"{where} {label} pushed nothing after new events")
    plan, backfill = steps.get("b_plan", {}), steps.get("b_backfill", {})
    if plan and backfill:
        planned, pushed = plan["counts"].get("planned", 0), backfill["counts"]
        if not planned or planned != pushed.get("planned") or pushed.get("delivered") != planned:
            problems.append(f"{where} the dry run planned {planned:,}, the backfill {pushed}")
    problems += [
        f"{where} {name}: {p}" for name, found in scenario["checks"].items() for p in found
    ]
    return problems


def segments(marks: list[list[float]], events: int, stored: int) -> list[dict[str, Any]]:
    """The ingest rate per million events ingested (per fifth of the events below 2 million),
    with how many the store held (`stored` before the step): whether it holds as it grows."""
    size = 1_000_000 if events >= 2_000_000 else max(int(marks[0][0]), events // 5)
    out = []
    start_done, start_s = 0, 0.0
    for done, engine_s in marks:
        if done - start_done >= size or done == marks[-1][0]:
            out.append(
                {
                    "from": stored + start_done,
                    "to": stored + int(done),
                    "events_per_s": round((done - start_done) / (engine_s - start_s)),
                }
            )
            start_done, start_s = int(done), engine_s
    return out


# -- the report ----------------------------------------------------------------------------------


def step_rows(scenario: dict[str, Any]) -> list[str]:
    return [
        f"| {scenario['database']} | {scenario['size']} | {label} | {f['engine_s']:.3f} | "
        f"{f['cpu_s']:.3f} | {f['peak_rss_mb']:.0f} | {f['process_s']:.1f} | {what(f)} |"
        for label, f in scenario["steps"].items()
    ]


def context_cells(scenario: dict[str, Any]) -> list[str]:
    """The scenario's figures without a target: the history's ingest, the backfill, sizes."""
    steps, c = scenario["steps"], scenario["context"]
    history = steps.get("a_history", {}).get("events_per_s")
    bind = steps.get("b_bind", {}).get("engine_s")
    backfill = steps.get("b_backfill", {})
    problems = [p for found in scenario["checks"].values() for p in found]
    return [
        scenario["database"],
        scenario["size"],
        f"{history:,}" if history else "",
        f"{bind:.2f}" if bind is not None else "",
        f"{backfill['engine_s']:.2f}" if backfill else "",
        f"{backfill['counts'].get('delivered', 0):,}" if backfill else "",
        f"{c.get('wall_s', 0):,.0f}",
        f"{c.get('store_mb', 0):,.0f}",
        f"{c.get('emulator_peak_rss_mb') or 0:,.0f}",
        "; ".join(problems[:2]) or ("exact" if scenario["checks"] else "not run"),
    ]


def markdown(report: dict[str, Any]) -> str:
    p = report["parameters"]
    lines = [
        "# Usage at scale: a long history",
        "",
        f"Run {report['date']} with `{report['command']}`, {report['wall_s']:,.0f} s in all, on "
        f"commit {report['source']['commit']}"
        + (" with changes in src/" if report["source"]["src_changes"] else "")
        + ".",
        "",
        report["machine_line"],
        "",
        f"**{report['result']}**",
        "",
        "| database | figure | measured | target | result |",
        "|---|---|--:|---|---|",
    ]
    lines += [
        f"| {r['database']} | {r['figure']} | {r['shown']} | {r['target']} | {r['result']} |"
        for r in report["verdict"]
    ]
    lines += [f"| {db} | not run: {why} | | | NOT RUN |" for db, why in report["not_run"].items()]
    for per_size in report["scenarios"].values():
        for scenario in per_size.values():
            for error in scenario["errors"]:
                lines += [
                    "",
                    f"{scenario['database']}, {scenario['size']}: {error['error']}",
                    "",
                    "```",
                    *error["stderr"][-12:],
                    "```",
                ]
    lines += [
        "",
        "## The scenario",
        "",
        f"- {p['customers']:,} customers, one subject each, created through "
        "`Catalog.create_customer` and synced to the Stripe emulator by metersync's customer "
        "sync (`Pipeline.sync_stripe`); the three Stripe meters by `Pipeline.ensure_meters`.",
        f"- The history: {p['events']:,} events (the small size: {p['small_events']:,}) over the "
        f"{HISTORY_DAYS} days before {p['now']}, in time order, each to a customer drawn at "
        f"random. Split by position: {SPLIT}; {USERS} users per customer. Generated as NDJSON "
        f"bytes {p['chunk']:,} events a chunk, each chunk through `ingest_json`.",
        f"- Meters: `tokens` SUM of $.tokens, `requests` COUNT, `users` UNIQUE_COUNT of $.user "
        f"(sent as month-to-date deltas); usage window {p['window']}; meter events over the v2 "
        f'stream (`usage.stripe_api = "v2"`, {STREAM_RATE:,} requests/s, the default '
        "concurrency); the emulator at latency 0, no rate limit, in a process of its own.",
        "- The first push: `aggregates.bind` (the push's first stretch; a dry run skips it, and "
        "planned nothing over unbound usage), then `Pipeline.push_usage(dry_run=True)` (the "
        "plan), then `Pipeline.push_usage()` (the backfill). Pushes run at the real clock, as "
        "the CLI's do; only the history ends at the bench's now.",
        f"- Ticks: {p['ticks']} no-op pushes; then {p['ticks']} times {p['new_events']:,} new "
        f"events among {p['new_customers']:,} random customers, over the hour before now "
        "(windows the backfill already reported: each change is a new revision), ingested in a "
        "step of their own, then a push.",
        f"- Then (the large size only) {p['more_events']:,} more events over the same 30 days, "
        "new ids, same shape.",
        "- PostgreSQL only: after the history's ingest, after the binding and after the "
        "backfill, `VACUUM (ANALYZE)` of the schema's tables, as autovacuum would after such "
        "bulk writes (the benchmark machine's cluster runs with `autovacuum = off`); timed "
        "apart from the steps, under Maintenance below.",
        "- Every step is a fresh process (bench/usage_history_step.py). Engine time: wall time "
        "around metersync's call inside it (no interpreter start, imports, store opening or "
        "event generation); CPU: the process's, every thread; peak RSS: its VmHWM, imports "
        "included. Process time: the whole child, start-up included.",
        "- Checks after the backfill and after the ticks: the ledger's delivered reports add "
        "up, for every customer and meter, to what the generated events bill (tracked while "
        "generating, not read back from metersync); nothing pending, failed or late; and for "
        f"{p['check_customers']} customers per check, Stripe's event summaries (the emulator's) "
        "over the whole history agree.",
        "",
        "## Steps",
        "",
        "| database | size | step | engine s | CPU s | peak RSS MB | process s | what |",
        "|---|---|---|--:|--:|--:|--:|---|",
    ]
    for per_size in report["scenarios"].values():
        for scenario in per_size.values():
            lines += step_rows(scenario)
    vacuums = [
        f"| {scenario['database']} | {scenario['size']} | {label} | {seconds:,.1f} |"
        for per_size in report["scenarios"].values()
        for scenario in per_size.values()
        for label, seconds in scenario["context"].get("maintenance_s", {}).items()
    ]
    if vacuums:
        lines += ["", "## Maintenance (PostgreSQL: VACUUM (ANALYZE), not part of any step)", ""]
        lines += ["| database | size | when | s |", "|---|---|---|--:|", *vacuums]
    lines += ["", "## Ingest rate as the store grows", ""]
    lines += ["| database | size | step | stored | events/s |", "|---|---|---|---|--:|"]
    for per_size in report["scenarios"].values():
        for scenario in per_size.values():
            for label in ("a_history", "e_more"):
                for s in scenario["steps"].get(label, {}).get("segments", []):
                    lines.append(
                        f"| {scenario['database']} | {scenario['size']} | {label} | "
                        f"{s['from']:,}–{s['to']:,} | {s['events_per_s']:,} |"
                    )
    lines += [
        "",
        "## Context",
        "",
        "| database | size | history events/s | bind s | backfill s | reports | scenario s "
        "| store on disk MB | emulator peak RSS MB | checks |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for per_size in report["scenarios"].values():
        for s in per_size.values():
            lines.append("| " + " | ".join(context_cells(s)) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=10_000_000, help="the large history")
    parser.add_argument("--small-events", type=int, default=100_000, help="the small history")
    parser.add_argument("--more-events", type=int, default=1_000_000, help="step e")
    parser.add_argument("--new-events", type=int, default=1_000, help="step d, per tick")
    parser.add_argument("--new-customers", type=int, default=100, help="step d, per tick")
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=3, help="no-op ticks, and ticks after events")
    parser.add_argument("--window", choices=WINDOWS, default="1h", help="usage.window")
    parser.add_argument("--db", choices=(*DATABASES, "both"), default="both")
    parser.add_argument("--chunk", type=int, default=100_000, help="events per ingest_json call")
    parser.add_argument("--check-customers", type=int, default=3, help="checked in Stripe")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--postgres-url", default=None, help="default: the test database")
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the SQLite files go (GBs at 10M events)",
    )
    parser.add_argument(
        "--rss-cap-mb",
        type=int,
        default=8_000,
        help="a step past this RSS is killed (protects a shared machine)",
    )
    parser.add_argument("--step-timeout", type=int, default=6 * 3600, help="seconds per step")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, writes nothing")
    parser.add_argument("--output", type=Path, default=None, help="results directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.customers, args.events, args.small_events = 100, 3_000, 1_000
        args.more_events, args.new_events, args.new_customers = 2_000, 60, 10
        args.ticks, args.chunk, args.check_customers = 1, 1_000, 2
    for name in (
        "events",
        "small_events",
        "more_events",
        "new_events",
        "new_customers",
        "customers",
        "ticks",
        "chunk",
        "check_customers",
        "rss_cap_mb",
        "step_timeout",
    ):
        if getattr(args, name) < 1:
            parser.error(
                f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}"
            )
    if args.new_customers > args.customers:
        parser.error(
            f"--new-customers ({args.new_customers:,}) cannot exceed --customers "
            f"({args.customers:,})"
        )
    if args.check_customers > min(args.customers, args.new_customers * args.ticks):
        parser.error("--check-customers cannot exceed --customers nor --new-customers × --ticks")
    if not args.scratch.is_dir():
        parser.error(f"--scratch {args.scratch}: not a directory")
    if args.db in ("sqlite", "both"):
        need = (args.events + args.small_events + args.more_events) * SQLITE_BYTES_PER_EVENT
        free = shutil.disk_usage(args.scratch).free
        if free < need:
            parser.error(
                f"--scratch {args.scratch}: {free / 1e9:.1f} GB free, the SQLite "
                f"stores need about {need / 1e9:.1f} GB"
            )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from customers import source_state
    from emulator import machine, machine_line
    from ingest import POSTGRES_URL, postgres_problem, postgres_version

    info = machine()
    print(machine_line(info), flush=True)
    started = time.monotonic()
    now_s = int(time.time()) // 60 * 60
    now = dt.datetime.fromtimestamp(now_s, dt.UTC).isoformat().replace("+00:00", "Z")
    databases = DATABASES if args.db == "both" else (args.db,)
    print(
        f"history: {args.small_events:,} then {args.events:,} events over the {HISTORY_DAYS} "
        f"days before {now}, {args.customers:,} customers, window {args.window}; "
        f"{', '.join(databases)}",
        flush=True,
    )
    postgres = args.postgres_url or POSTGRES_URL
    args.postgres_url = postgres
    scenarios: dict[str, dict[str, Any]] = {}
    not_run: dict[str, str] = {}
    versions: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="usage-history-", dir=args.scratch) as scratch:
        for database in databases:
            if database == "postgresql":
                problem = postgres_problem(postgres)
                if problem is not None:
                    print(f"postgresql not run: {problem}", flush=True)
                    not_run[database] = problem
                    continue
                versions["postgresql_server"] = postgres_version(postgres)
            scenarios[database] = {}
            for size, events in (("small", args.small_events), ("large", args.events)):
                scenario = Scenario(database, size, events, args, now_s).run(Path(scratch))
                held = 0  # events in the store before each step
                for figures in scenario["steps"].values():
                    if "marks" in figures:
                        marks = figures.pop("marks")
                        figures["segments"] = segments(marks, figures["events"], held)
                        held += figures["accepted"]
                scenarios[database][size] = scenario
    verdict = [
        r
        for database, per_size in scenarios.items()
        for r in verdict_rows(database, per_size["small"], per_size["large"], args)
    ]
    results = {r["result"] for r in verdict}
    result = "FAIL" if "FAIL" in results or not verdict else ("NOT RUN" if not_run else "PASS")
    print()
    print(machine_line(info))
    for r in verdict:
        print(
            f"{r['database']:10}  {r['figure']:75}  {r['shown']:>28}  {r['target']:>12}  "
            f"{r['result']}"
        )
    for database, why in not_run.items():
        print(f"{database:10}  NOT RUN ({why})")
    print(f"VERDICT: {result}")
    report = {
        "benchmark": "usage_history",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "bench/usage_history.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": info,
        "machine_line": machine_line(info),
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "source": source_state(),
        "versions": versions,
        "parameters": {
            **{
                k: v
                for k, v in vars(args).items()
                if k not in ("scratch", "output", "postgres_url")
            },
            "now": now,
            "history_days": HISTORY_DAYS,
            "split": SPLIT,
            "users_per_customer": USERS,
            "stream_rate": STREAM_RATE,
        },
        "targets": {
            "plan_s": TARGET_PLAN_S,
            "noop_s": TARGET_NOOP_S,
            "noop_ratio": TARGET_NOOP_RATIO,
            "tick_s": TARGET_TICK_S,
            "ingest_per_s": TARGET_INGEST,
            "peak_rss_mb": TARGET_RSS_MB,
        },
        "verdict": verdict,
        "not_run": not_run,
        "result": result,
        "scenarios": scenarios,
        "wall_s": round(time.monotonic() - started, 1),
    }
    if not args.quick or args.output is not None:
        directory = args.output or RESULTS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "usage_history.json").write_text(json.dumps(report, indent=2) + "\n")
        (directory / "usage_history.md").write_text(markdown(report))
        print(f"wrote {directory / 'usage_history.json'}\nwrote {directory / 'usage_history.md'}")
    return 0 if result == "PASS" else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
