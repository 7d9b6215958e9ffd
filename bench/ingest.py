"""Event ingest throughput: CloudEvents from an NDJSON file into the store, through the fast path.

The targets (the issue), for `ingest_json` (file bytes → usage_event and usage_value rows), with
one SUM meter matching every event and a few hundred distinct subjects:

* ≥ 50,000 events/s into SQLite;
* ≥ 30,000 events/s into PostgreSQL.

N events (default 200,000) are generated in memory as NDJSON: time-ordered over the hour
before the run, ids unique, subjects cycling over S keys (default 300), data
{"tokens", "model", "prompt_chars"}. The meter is `tokens`: SUM of $.tokens, grouped by
$.model, billed on a Stripe meter (so values are also checked non-negative).

Each measured run ingests the whole file into a fresh database: a new SQLite file, or a new
PostgreSQL schema at 127.0.0.1:5432 (created here, dropped afterwards). So the subjects are
unknown and are created (with their auto-customers) through the catalog during the run, as
on a first ingest; the time that takes is reported. The verdict is the median of `--repeat`
runs. For context, not measured against a target: the same database then takes N more (new)
events whose subjects now exist, and the first file again (all duplicates). After each run the
rows are counted: N events, N values, S subjects, S auto-created customers.

    .venv/bin/python bench/ingest.py             # the full run, about a minute
    .venv/bin/python bench/ingest.py --quick     # 20,000 events, one run, writes nothing
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import gc
import json
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

# bench/emulator.py: the machine's description, as every benchmark here reports it.
sys.path.insert(0, str(Path(__file__).resolve().parent))
from emulator import machine

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter, MeterSettings
from metersync.store import Store
from metersync.store.engine import build_engine
from metersync.usage.ingest import DEFAULT_BATCH_SIZE, IngestReport, ingest_json

TARGETS = {"sqlite": 50_000.0, "postgresql": 30_000.0}
RESULTS_DIR = Path(__file__).resolve().parent / "results"
POSTGRES_URL = os.environ.get(
    "METERSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
MODELS = ("gpt-4o", "gpt-4o-mini", "claude", "llama")
METER = MeterSettings.model_validate(
    {
        "slug": "tokens",
        "event_type": "prompt",
        "aggregation": "SUM",
        "value_property": "$.tokens",
        "group_by": {"model": "$.model"},
        "stripe": {"event_name": "tokens"},
    }
)


# -- the events ----------------------------------------------------------------------------------


def ndjson(count: int, subjects: int, *, prefix: str, seed: int) -> bytes:
    """`count` prompt events as NDJSON, spread evenly over the hour before now."""
    rng = random.Random(seed)
    start_ms = (int(time.time()) - 3600) * 1000
    step_ms = 3_600_000 / count
    lines = []
    for i in range(count):
        at = dt.datetime.fromtimestamp((start_ms + int(i * step_ms)) / 1000, dt.UTC)
        event = {
            "specversion": "1.0",
            "id": f"{prefix}-{i:08d}",
            "source": "bench/ingest",
            "type": "prompt",
            "subject": f"customer-{i % subjects:05d}",
            "time": at.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "data": {
                "tokens": rng.randint(1, 4000),
                "model": MODELS[rng.randrange(len(MODELS))],
                "prompt_chars": rng.randint(10, 20_000),
            },
        }
        lines.append(json.dumps(event, separators=(",", ":")))
    return ("\n".join(lines) + "\n").encode()


# -- the databases -------------------------------------------------------------------------------


@contextlib.contextmanager
def sqlite_store(scratch: Path) -> Iterator[Store]:
    path = scratch / f"ingest-{uuid.uuid4().hex[:8]}.db"
    store = Store.open(f"sqlite:///{path}")
    try:
        yield store
    finally:
        store.dispose()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)


def postgres_problem(url: str) -> str | None:
    engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
    except sa.exc.DBAPIError as exc:
        return str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
    finally:
        engine.dispose()
    return None


@contextlib.contextmanager
def postgres_schema(url: str, prefix: str) -> Iterator[str]:
    """A fresh schema of its own: yields a URL whose connections use it; dropped afterwards."""
    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    try:
        scoped = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
        yield scoped.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


@contextlib.contextmanager
def postgres_store(url: str) -> Iterator[Store]:
    """A store in a fresh schema of its own, migrated, dropped afterwards."""
    with postgres_schema(url, "bench_ingest") as scoped:
        store = Store(build_engine(scoped))
        try:
            store.upgrade()
            yield store
        finally:
            store.dispose()


def postgres_version(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar())
    finally:
        engine.dispose()


def counts(store: Store) -> dict[str, int]:
    queries = {
        "events": "SELECT count(*) FROM usage_event",
        "values": "SELECT count(*) FROM usage_value",
        "subjects": "SELECT count(*) FROM subject",
        "auto_customers": "SELECT count(*) FROM customer WHERE auto_created",
    }
    with store.engine.connect() as conn:
        return {name: int(conn.exec_driver_sql(sql).scalar() or 0) for name, sql in queries.items()}


# -- one run -------------------------------------------------------------------------------------


class SubjectTimer:
    """Times Catalog.create_subjects on one catalog: what creating the new subjects cost."""

    def __init__(self, catalog: Catalog) -> None:
        self.seconds = 0.0
        self.created = 0
        create = catalog.create_subjects

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                created = create(*args, **kwargs)
                self.created += len(created)
                return created
            finally:
                self.seconds += time.perf_counter() - started

        catalog.create_subjects = timed  # type: ignore[method-assign]


def measure(
    catalog: Catalog, content: bytes, events: int, batch_size: int
) -> tuple[dict[str, Any], IngestReport]:
    meters = [Meter.of(METER)]
    timer = SubjectTimer(catalog)
    gc.collect()
    cpu, wall = time.process_time(), time.perf_counter()
    report = ingest_json(catalog, meters, content, batch_size=batch_size)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    figures = {
        "events": events,
        "wall_s": round(wall, 3),
        "events_per_s": round(events / wall),
        "cpu_s": round(cpu, 3),
        "subjects_created": timer.created,
        "subject_creation_s": round(timer.seconds, 3),
        "accepted": report.accepted,
        "duplicates": report.duplicates,
        "rejected": report.rejected,
    }
    return figures, report


def run_database(
    name: str,
    open_store: Callable[[], contextlib.AbstractContextManager[Store]],
    args: argparse.Namespace,
    files: dict[str, bytes],
) -> dict[str, Any]:
    runs = []
    context: dict[str, Any] = {}
    for attempt in range(args.repeat):
        with open_store() as store:
            catalog = Catalog(store)
            figures, report = measure(catalog, files["first"], args.events, args.batch_size)
            figures["rows"] = counts(store)
            figures["rows_ok"] = figures["rows"] == {
                "events": args.events,
                "values": args.events,
                "subjects": args.subjects,
                "auto_customers": args.subjects,
            } and (report.accepted, report.rejected) == (args.events, 0)
            runs.append(figures)
            print(f"  {name} run {attempt + 1}: {describe(figures)}", flush=True)
            if attempt == args.repeat - 1 and not args.quick:
                context["new_events_known_subjects"], _ = measure(
                    catalog, files["second"], args.events, args.batch_size
                )
                print(f"  {name} more events: {describe(context['new_events_known_subjects'])}")
                context["all_duplicates"], _ = measure(
                    catalog, files["first"], args.events, args.batch_size
                )
                print(f"  {name} same file again: {describe(context['all_duplicates'])}")
    median = statistics.median(r["events_per_s"] for r in runs)
    ok = all(r["rows_ok"] for r in runs)
    return {
        "runs": runs,
        "median_events_per_s": round(median),
        "target_events_per_s": TARGETS[name],
        "rows_ok": ok,
        "result": "PASS" if median >= TARGETS[name] and ok else "FAIL",
        "context": context,
    }


def describe(figures: dict[str, Any]) -> str:
    return (
        f"{figures['events_per_s']:>7,} events/s  wall {figures['wall_s']:.2f} s  "
        f"CPU {figures['cpu_s']:.2f} s  accepted {figures['accepted']:,}  "
        f"duplicates {figures['duplicates']:,}  subjects created {figures['subjects_created']} "
        f"in {figures['subject_creation_s']:.2f} s"
        + ("" if figures.get("rows_ok", True) else "  ROW COUNTS WRONG")
    )


# -- the report ----------------------------------------------------------------------------------


def versions(pg_version: str | None) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"sqlite": sqlite3.sqlite_version, "postgresql_server": pg_version or "not reached"}
    for name in ("metersync", "msgspec", "sqlalchemy", "psycopg"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "?"
    return found


def markdown(report: dict[str, Any]) -> str:
    m, p = report["machine"], report["parameters"]
    lines = [
        "# Event ingest throughput",
        "",
        f"Run {report['date']} with `{report['command']}`, {report['wall_seconds']:.0f} s in all.",
        "",
        f"**{report['result']}**: {verdict_text(report)}",
        "",
        "| database | events/s (median) | runs | target | rows | result |",
        "|---|--:|---|--:|---|---|",
    ]
    for name, db in report["databases"].items():
        if db.get("not_run"):
            lines.append(f"| {name} | not run | | ≥ {TARGETS[name]:,.0f} | | NOT RUN |")
            continue
        runs = ", ".join(f"{r['events_per_s']:,}" for r in db["runs"])
        lines.append(
            f"| {name} | **{db['median_events_per_s']:,}** | {runs} | "
            f"≥ {db['target_events_per_s']:,.0f} | {'as expected' if db['rows_ok'] else 'WRONG'}"
            f" | {db['result']} |"
        )
    lines += [
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores ({m['usable_cpus']} usable), "
        f"{m['memory_gib']} GiB, {m['python']}, {m['os']}; load average at start "
        f"{m['load_average_at_start']}, at end {report['load_average_at_end']}. "
        f"Versions: {report['versions']}.",
        "",
        "## How",
        "",
        f"- {p['events']:,} events as NDJSON in memory ({p['file_mb']} MB), time-ordered over the "
        f"hour before the run, {p['subjects']} distinct subjects; one meter, `tokens`: SUM of "
        "$.tokens, group_by model, billed on a Stripe meter. Measured: "
        "`ingest_json(catalog, meters, file_bytes)`, wall time, in batches of "
        f"{p['batch_size']:,} events (one transaction each).",
        "- Each run starts from a fresh database (a new SQLite file in WAL mode; a new PostgreSQL "
        "schema, migrated, dropped afterwards), so it also creates the subjects and their "
        "auto-customers through `Catalog.create_subjects` (one transaction per batch); that "
        "time is shown. Afterwards the rows are counted (events, values, subjects, "
        "auto-customers).",
        "- Context, no target: the last run's database then takes as many new events for the "
        "same (now known) subjects, then the first file again (all duplicates).",
        "- Paths: SQLite takes each batch through sqlite3's executemany in one IMMEDIATE "
        "transaction, parsing and writing in turn (a writer thread made it slower: sqlite3 "
        "takes the GIL back for every row). PostgreSQL takes events through COPY into a staging "
        "table and INSERT … ON CONFLICT DO NOTHING, values through COPY, in a writer thread "
        "while the next batch is parsed, so its CPU is below its wall time: the server works "
        "in its own processes.",
        "",
        "| database | run | events/s | wall s | CPU s | subjects created | in s | accepted "
        "| duplicates |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, db in report["databases"].items():
        if db.get("not_run"):
            lines.append(f"| {name} | not run: {db['not_run']} | | | | | | | |")
            continue
        labelled = [(f"fresh {i + 1}", r) for i, r in enumerate(db["runs"])]
        labelled += [(label.replace("_", " "), r) for label, r in db["context"].items()]
        for label, r in labelled:
            lines.append(
                f"| {name} | {label} | {r['events_per_s']:,} | {r['wall_s']:.2f} | "
                f"{r['cpu_s']:.2f} | {r['subjects_created']} | {r['subject_creation_s']:.2f} | "
                f"{r['accepted']:,} | {r['duplicates']:,} |"
            )
    return "\n".join(lines) + "\n"


def command_line(argv: list[str] | None) -> str:
    return " ".join(["python", "bench/ingest.py", *(sys.argv[1:] if argv is None else argv)])


def verdict_text(report: dict[str, Any]) -> str:
    parts = []
    for name, db in report["databases"].items():
        if db.get("not_run"):
            parts.append(f"{name} not run ({db['not_run']})")
            continue
        runs = db["runs"]
        creation = statistics.median(r["subject_creation_s"] for r in runs)
        wall = statistics.median(r["wall_s"] for r in runs)
        parts.append(
            f"{name} {db['median_events_per_s']:,} events/s against ≥ "
            f"{db['target_events_per_s']:,.0f} ({db['result']}); creating the "
            f"{runs[0]['subjects_created']} subjects took {creation:.2f} s of its {wall:.2f} s"
        )
    return "; ".join(parts) + "."


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=200_000, help="events per file")
    parser.add_argument("--subjects", type=int, default=300, help="distinct subjects")
    parser.add_argument("--repeat", type=int, default=3, help="fresh-database runs per database")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--postgres-url", default=POSTGRES_URL)
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--quick", action="store_true", help="20,000 events, one run, no files")
    parser.add_argument("--output", type=Path, default=None, help="results directory")
    args = parser.parse_args(argv)
    if args.quick:
        args.events, args.repeat = min(args.events, 20_000), 1
    if args.events < 1 or args.subjects < 1 or args.repeat < 1:
        parser.error("--events, --subjects and --repeat must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    info = machine()
    started = time.monotonic()
    print(
        f"machine: {info['cpu_model']}, {info['cpu_count']} cores, {info['python']}, load "
        f"{info['load_average_at_start']}",
        flush=True,
    )
    files = {
        "first": ndjson(args.events, args.subjects, prefix="a", seed=1),
        "second": ndjson(args.events, args.subjects, prefix="b", seed=2),
    }
    print(f"{args.events:,} events, {len(files['first']) / 1e6:.1f} MB of NDJSON", flush=True)
    databases: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as scratch:
        databases["sqlite"] = run_database(
            "sqlite", lambda: sqlite_store(Path(scratch)), args, files
        )
    problem = "skipped (--skip-postgres)" if args.skip_postgres else None
    problem = problem or postgres_problem(args.postgres_url)
    pg_version = None
    if problem is None:
        pg_version = postgres_version(args.postgres_url)
        databases["postgresql"] = run_database(
            "postgresql", lambda: postgres_store(args.postgres_url), args, files
        )
    else:
        shown = make_url(args.postgres_url).render_as_string(hide_password=True)
        print(f"PostgreSQL at {shown} not run: {problem}", flush=True)
        databases["postgresql"] = {"not_run": problem, "result": "NOT RUN"}

    results = [db["result"] for db in databases.values()]
    result = "FAIL" if "FAIL" in results else ("PASS" if "NOT RUN" not in results else "NOT RUN")
    report = {
        "benchmark": "ingest",
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": " ".join(
            ["python", "bench/ingest.py", *(sys.argv[1:] if argv is None else argv)]
        ),
        "machine": info,
        "load_average_at_end": [round(x, 2) for x in os.getloadavg()],
        "versions": versions(pg_version),
        "parameters": {
            "events": args.events,
            "subjects": args.subjects,
            "repeat": args.repeat,
            "batch_size": args.batch_size,
            "file_mb": round(len(files["first"]) / 1e6, 1),
            "meter": METER.model_dump(mode="json", exclude_none=True),
        },
        "databases": databases,
        "result": result,
        "wall_seconds": round(time.monotonic() - started, 1),
    }
    print()
    for name, db in databases.items():
        if db.get("not_run"):
            print(f"{name:10}  NOT RUN ({db['not_run']})")
        else:
            print(
                f"{name:10}  {db['median_events_per_s']:>7,} events/s (median of "
                f"{len(db['runs'])})  target ≥ {db['target_events_per_s']:,.0f}  {db['result']}"
            )
    print(f"VERDICT: {result}")
    if not args.quick or args.output is not None:
        directory = args.output or RESULTS_DIR
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "ingest.json").write_text(json.dumps(report, indent=2) + "\n")
        (directory / "ingest.md").write_text(markdown(report))
        print(f"wrote {directory / 'ingest.json'}\nwrote {directory / 'ingest.md'}")
    return 0 if result == "PASS" else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
    sys.exit(130)
