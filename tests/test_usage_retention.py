"""Retention of raw usage (`metersync usage prune`) on both databases: whole months, oldest first,
only past Stripe's 35 days and a margin; months holding usage not known billed stay; the floor
refuses older events at ingest and hides what is below it from the push, verify and show; the
deletes go in batches and a stopped prune is finished by the next."""

from __future__ import annotations

import asyncio
import calendar
import json
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy import func, insert, select, update
from typer.testing import CliRunner

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter, MeterSettings
from metersync.chaos.usage import meters as chaos_meters
from metersync.chaos.usage import push_in_process, setup_usage
from metersync.chaos.usage import target as chaos_target
from metersync.cli import app
from metersync.errors import InvalidInput
from metersync.store import EventRow, LedgerRow, LedgerState, Store, UsageRow
from metersync.store.usage_retention import raise_floor, retention_floor
from metersync.targets.stripe import StripeMeterFigures
from metersync.testing import StripeEmulator
from metersync.usage.ingest import ingest_events
from metersync.usage.retention import PruneResult, latest_cut, prune_usage
from metersync.usage.verify import VerifyResult, verify_usage

HOUR = 3600
# Now, for every test: Stripe's 35 days and the week of margin reach back to 2026-03-09, so
# the latest cut allowed is 2026-03 (every month before it ended by 2026-03-01).
NOW = datetime(2026, 4, 20, 12, 0, tzinfo=UTC)
# Not billed on Stripe: only binding and pending reports can hold a month back.
PROMPTS = MeterSettings.model_validate(
    {"slug": "prompts", "event_type": "prompt", "aggregation": "COUNT"}
)
SIZE = MeterSettings.model_validate(
    {"slug": "size", "event_type": "prompt", "aggregation": "SUM", "value_property": "$.tokens"}
)
# Billed on Stripe: its usage must also be in the ledger.
TOKENS = MeterSettings.model_validate(
    {
        "slug": "tokens",
        "event_type": "prompt",
        "aggregation": "SUM",
        "value_property": "$.tokens",
        "stripe": {"event_name": "tokens"},
    }
)
LOCAL_METERS = [Meter.of(PROMPTS), Meter.of(SIZE)]


def month(year: int, number: int) -> int:
    return calendar.timegm((year, number, 1, 0, 0, 0))


DEC, JAN, FEB, MAR, APR = (
    month(2025, 12),
    month(2026, 1),
    month(2026, 2),
    month(2026, 3),
    month(2026, 4),
)


def stamp(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def prompt(event_id: str, at: int, subject: str = "s0", tokens: int = 5) -> dict[str, Any]:
    return {
        "specversion": "1.0",
        "id": event_id,
        "source": "app",
        "type": "prompt",
        "subject": subject,
        "time": stamp(at),
        "data": {"tokens": tokens, "user": "u1"},
    }


def spread(prefix: str, start: int, events: int) -> list[dict[str, Any]]:
    """`events` events an hour apart from the start of a month (plus ten minutes)."""
    return [prompt(f"{prefix}{i}", start + i * HOUR + 600) for i in range(events)]


def bind_all(store: Store, customer: str = "c0") -> None:
    """What a push's binding does, for tests without Stripe."""
    with store.session() as session:
        session.execute(
            update(UsageRow)
            .where(UsageRow.customer_key.is_(None))  # type: ignore[union-attr]
            .values(customer_key=customer)
        )


def event_ids(store: Store) -> list[str]:
    with store.read_session() as session:
        return sorted(session.execute(select(EventRow.event_id)).scalars())  # type: ignore[call-overload]


def value_count(store: Store) -> int:
    with store.read_session() as session:
        return int(session.execute(select(func.count()).select_from(UsageRow)).scalar_one())


def prune(
    store: Store, cut: int, meters: list[Meter] = LOCAL_METERS, **options: Any
) -> PruneResult:
    return prune_usage(store, cut, meters, window_s=HOUR, target="stripe", now=NOW, **options)


def after_one_batch() -> Callable[[], bool]:
    """A prune's `should_stop` that lets one batch through, then stops it."""
    asked = count()
    return lambda: next(asked) > 0


def months_of(result: PruneResult) -> list[tuple[int, int, int]]:
    return [(m.start, m.events, m.values) for m in result.plan.months]


def test_a_prune_removes_exactly_the_old_months_and_keeps_the_newer(catalog: Catalog) -> None:
    ingest_events(
        catalog,
        LOCAL_METERS,
        spread("d", DEC, 3) + spread("j", JAN, 2) + spread("f", FEB, 4) + spread("a", APR, 1),
        now=NOW,
    )
    bind_all(catalog.store)
    dry = prune(catalog.store, FEB, dry_run=True)
    # Two meter values per event.
    assert months_of(dry) == [(DEC, 3, 6), (JAN, 2, 4)]
    assert dry.deleted is None and dry.plan.kept is None and dry.plan.new_floor == FEB
    assert len(event_ids(catalog.store)) == 10 and retention_floor(catalog.store) == 0

    done = prune(catalog.store, FEB)
    assert months_of(done) == [(DEC, 3, 6), (JAN, 2, 4)]
    assert done.deleted is not None and done.deleted.finished
    assert (done.deleted.events, done.deleted.values) == (5, 10)
    assert event_ids(catalog.store) == ["a0", "f0", "f1", "f2", "f3"]
    assert value_count(catalog.store) == 10
    assert retention_floor(catalog.store) == FEB
    assert done.to_json()["floor"] == {"before": None, "after": "2026-02-01T00:00:00Z"}
    # Again: nothing left to do, and the floor does not move back for an earlier cut.
    again = prune(catalog.store, JAN)
    assert again.plan.months == () and again.deleted is not None and again.deleted.events == 0
    assert retention_floor(catalog.store) == FEB


def test_a_cut_inside_stripes_window_and_margin_is_refused(catalog: Catalog) -> None:
    assert latest_cut(NOW) == MAR
    with pytest.raises(InvalidInput) as refused:
        prune(catalog.store, APR, dry_run=True)
    message = str(refused.value)
    assert message.startswith("before: 2026-04 is too recent")
    assert "the latest cut allowed now is 2026-03" in message
    assert prune(catalog.store, MAR, dry_run=True).plan.kept is None


def test_a_month_with_usage_not_bound_yet_stays_and_so_do_the_later_ones(
    catalog: Catalog,
) -> None:
    ingest_events(catalog, LOCAL_METERS, spread("d", DEC, 2), now=NOW)
    bind_all(catalog.store)
    orphan = [prompt("j0", JAN + 600, subject="nobody"), *spread("f", FEB, 1)]
    ingest_events(catalog, LOCAL_METERS, orphan, now=NOW)
    with catalog.store.session() as session:  # February is bound; January's orphan is not
        session.execute(
            update(UsageRow).where(UsageRow.event_id == "f0").values(customer_key="c0")  # type: ignore[arg-type]
        )
    result = prune(catalog.store, MAR)
    assert months_of(result) == [(DEC, 2, 4)]
    assert result.plan.kept is not None and result.plan.kept.start == JAN
    (reason,) = result.plan.kept.reasons
    assert "2 usage row(s) of subject(s) 'nobody' are not bound to a customer yet" in reason
    assert "metersync reconcile --only usage" in reason
    assert retention_floor(catalog.store) == JAN
    assert event_ids(catalog.store) == ["f0", "j0"]


def test_a_month_with_pending_reports_stays(catalog: Catalog) -> None:
    ingest_events(catalog, LOCAL_METERS, spread("d", DEC, 2) + spread("j", JAN, 1), now=NOW)
    bind_all(catalog.store)
    with catalog.store.session() as session:
        session.execute(
            insert(LedgerRow.__table__),  # type: ignore[attr-defined]
            {
                "target": "stripe",
                "customer_key": "c0",
                "meter": "prompts",
                "window_start": JAN + 3 * HOUR,
                "window_s": HOUR,
                "revision": 1,
                "value": 1,
                "total": 1,
                "identifier": "msu_pending",
                "external_customer_id": "cus_1",
                "event_name": "prompts",
                "timestamp": JAN + 3 * HOUR,
                "state": LedgerState.PENDING,
                "created_at": NOW,
            },
        )
    result = prune(catalog.store, MAR)
    assert months_of(result) == [(DEC, 2, 4)]
    assert result.plan.kept is not None and result.plan.kept.start == JAN
    assert "1 usage report(s) for its windows are pending" in result.plan.kept.reasons[0]
    assert "usage verify --repair --from 2026-01-01`" in result.plan.kept.reasons[0]


def test_a_month_whose_stripe_usage_was_never_reported_stays(catalog: Catalog) -> None:
    """Bound usage of a Stripe meter the ledger lacks (a meter mapped to Stripe later, a
    refused report waiting): a push would still report it, as late usage."""
    meters = [Meter.of(TOKENS)]
    ingest_events(catalog, meters, spread("d", DEC, 2), now=NOW)
    bind_all(catalog.store)
    result = prune(catalog.store, MAR, meters)
    assert result.plan.months == () and result.plan.kept is not None
    assert result.plan.kept.start == DEC
    assert result.plan.kept.reasons == (
        "meter tokens: 2 window(s) hold usage the ledger has not reported: push (`metersync "
        "reconcile --only usage`), which reports it (held as late usage when Stripe no longer "
        "takes it)",
    )
    # Nothing before December holds usage: the months before it went, empty.
    assert len(event_ids(catalog.store)) == 2 and retention_floor(catalog.store) == DEC


def test_the_floor_refuses_older_events_at_ingest_and_keeps_the_rest(catalog: Catalog) -> None:
    ingest_events(catalog, LOCAL_METERS, spread("d", DEC, 2), now=NOW)
    bind_all(catalog.store)
    prune(catalog.store, FEB)
    report = ingest_events(
        catalog,
        LOCAL_METERS,
        [
            prompt("late-jan", JAN + 86400),
            prompt("feb", FEB + 60),
            prompt("d0", DEC + 600),  # a resent copy of a pruned event: not counted again
            prompt("apr", APR + 60),
        ],
        now=NOW,
    )
    assert (report.accepted, report.duplicates, report.rejected) == (2, 0, 2)
    assert [(r.index, r.event_id) for r in report.rejections] == [(0, "late-jan"), (2, "d0")]
    assert report.rejections[0].reason == (
        "time 2026-01-02T00:00:00Z is before the retention floor 2026-02-01T00:00:00Z: usage "
        "before it was pruned (`metersync usage prune`) and takes no new events"
    )
    assert event_ids(catalog.store) == ["apr", "feb"]


def test_a_floor_raised_while_a_batch_waits_refuses_its_older_events(catalog: Catalog) -> None:
    """The writer reads the floor again in each batch's own transaction: an event parsed
    before a prune raised the floor is refused with its position, the rest are stored."""

    def events() -> Iterator[Mapping[str, Any]]:
        yield prompt("m0", MAR + 60)
        yield prompt("m1", MAR + 120)  # the first batch (two events) is stored here
        yield prompt("j0", JAN + 60)  # parsed under no floor
        raise_floor(catalog.store, FEB, lambda _session, _current: True)
        yield prompt("m2", MAR + 180)  # the second batch: j0 is below the floor now
        yield prompt("j1", JAN + 120)  # the parser knows the floor by now

    report = ingest_events(catalog, LOCAL_METERS, events(), now=NOW, batch_size=2)
    assert (report.received, report.accepted, report.rejected) == (5, 3, 2)
    assert [(r.index, r.event_id) for r in report.rejections] == [(2, "j0"), (4, "j1")]
    assert all("retention floor 2026-02-01" in r.reason for r in report.rejections)
    assert event_ids(catalog.store) == ["m0", "m1", "m2"]
    assert value_count(catalog.store) == 6


def test_a_stopped_prune_is_finished_by_the_next(catalog: Catalog) -> None:
    ingest_events(catalog, LOCAL_METERS, spread("d", DEC, 6) + spread("f", FEB, 2), now=NOW)
    bind_all(catalog.store)
    first = prune(catalog.store, FEB, batch_size=4, should_stop=after_one_batch())
    assert first.deleted is not None and not first.deleted.finished
    assert (first.deleted.events, first.deleted.values) == (0, 4)  # one range of values
    # The floor moved before anything was deleted: what is left below it is closed.
    assert retention_floor(catalog.store) == FEB
    late = ingest_events(catalog, LOCAL_METERS, [prompt("d9", DEC + 600)], now=NOW)
    assert late.rejected == 1

    second = prune(catalog.store, FEB, batch_size=4)
    assert months_of(second) == [(DEC, 6, 8)] and second.plan.interrupted(second.plan.months[0])
    assert second.deleted is not None and second.deleted.finished
    assert (second.deleted.events, second.deleted.values) == (6, 8)
    assert event_ids(catalog.store) == ["f0", "f1"] and value_count(catalog.store) == 4


# -- with Stripe: the push and verify after a prune ---------------------------------------------


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    with StripeEmulator() as running:
        yield running


def verify(catalog: Catalog, emulator: StripeEmulator, start: int, end: int) -> VerifyResult:
    async def go() -> VerifyResult:
        t = chaos_target(emulator)
        try:
            return await verify_usage(
                catalog.store,
                StripeMeterFigures(t),
                chaos_meters(),
                window_s=HOUR,
                start=start,
                end=end,
            )
        finally:
            await t.close()

    return asyncio.run(go())


def test_after_a_prune_the_push_plans_nothing_and_verify_skips_the_pruned_months(
    catalog: Catalog, emulator: StripeEmulator
) -> None:
    meters = chaos_meters()  # tokens (SUM), calls (COUNT), peak (MAX), users (UNIQUE_COUNT)
    pushed_at = datetime(2026, 1, 20, 12, 0, tzinfo=UTC)
    with freeze_time(pushed_at, real_asyncio=True) as clock:
        setup_usage(catalog, emulator, customers=1)  # customer c0, subject s0
        december = [prompt("d0", DEC + 21 * 86400 + 600), prompt("d1", DEC + 21 * 86400 + 700)]
        ingest_events(catalog, meters, [*december, prompt("j0", JAN + 14 * 86400)])
        first = push_in_process(catalog, emulator)
        assert first.failed == 0 and first.delivered == first.sent == 8

        clock.move_to(NOW)
        ingest_events(catalog, meters, [prompt("a0", APR + 86400)])
        assert push_in_process(catalog, emulator).delivered == 4
        sent = len(emulator.meter_events())

        # A prune stopped after one batch of one meter value: December's window is part
        # deleted, below the floor. The push reads nothing there, so no total "fell".
        stopped = prune_usage(
            catalog.store,
            JAN,
            meters,
            window_s=HOUR,
            target="stripe",
            batch_size=1,
            should_stop=after_one_batch(),
        )
        assert stopped.deleted is not None and stopped.deleted.values == 1
        after_stop = push_in_process(catalog, emulator)
        assert (after_stop.planned, after_stop.skipped) == (0, [])

        done = prune_usage(catalog.store, JAN, meters, window_s=HOUR, target="stripe")
        assert months_of(done) == [(DEC, 2, 7)]
        assert event_ids(catalog.store) == ["a0", "j0"]
        again = push_in_process(catalog, emulator)
        assert (again.planned, again.skipped, again.late) == (0, [], 0)
        assert len(emulator.meter_events()) == sent

        checked = verify(catalog, emulator, DEC, int(NOW.timestamp()))
        # December is in Stripe and in the ledger, but its events are gone: not compared.
        assert checked.differences == [] and checked.checked > 0
        assert checked.pruned_before == JAN
        assert checked.to_json()["prunedBefore"] == "2026-01-01T00:00:00Z"
        assert verify(catalog, emulator, DEC, JAN).checked == 0


# -- the command ----------------------------------------------------------------------------------

runner = CliRunner()
CONFIG = """
[usage]
window = "1h"

[[meters]]
slug = "prompts"
event_type = "prompt"
aggregation = "COUNT"
"""


@pytest.fixture
def env(store: Store, database_url: str, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "metersync.toml"
    config.write_text(CONFIG)
    return {"METERSYNC_CONFIG": str(config), "METERSYNC_DATABASE_URL": database_url}


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env, input=stdin)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def ndjson(*events: dict[str, Any]) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


def test_usage_prune_from_the_command_line(env: dict[str, str], store: Store) -> None:
    with freeze_time(NOW):
        old = [*spread("d", DEC, 2), *spread("j", JAN, 1), *spread("a", APR, 1)]
        assert cli(env, "events", "ingest", "-", stdin=ndjson(*old))[0] == 0

        code, out, _ = cli(env, "usage", "prune", "--before", "2026-03", "--dry-run")
        assert code == 1  # nothing bound yet: December stays, and every month after it
        assert "kept: 2025-12 and the months after it" in out and "not bound" in out

        bind_all(store)
        code, _, err = cli(env, "usage", "prune", "--before", "2026-04")
        assert code == 2 and "--before" in err and "latest cut allowed now is 2026-03" in err
        assert "Traceback" not in err
        code, _, err = cli(env, "usage", "prune", "--before", "2026-13")
        assert code == 2 and "--before" in err and "no month 13" in err

        code, out, _ = cli(env, "usage", "prune", "--before", "2026-02-15", "--dry-run", "--json")
        assert code == 0
        shown = json.loads(out)
        assert shown["cut"] == "2026-02-01T00:00:00Z" and shown["deleted"] is None
        assert [(m["month"], m["events"], m["values"]) for m in shown["months"]] == [
            ("2025-12", 2, 2),
            ("2026-01", 1, 1),
        ]
        assert len(event_ids(store)) == 4

        code, out, err = cli(env, "usage", "prune", "--before", "2026-02")
        assert code == 0, err
        assert "deleted 3 event(s) and 3 meter value(s)" in out
        assert "retention floor moved to 2026-02" in out
        assert event_ids(store) == ["a0"]
        code, out, _ = cli(env, "status", "--json")
        assert json.loads(out)["usage"]["retentionFloor"] == "2026-02-01T00:00:00Z"

        code, _, err = cli(env, "usage", "show", "--meter", "prompts", "--from", "2026-01-15")
        assert code == 2 and "--from" in err and "the retention floor" in err
        code, out, _ = cli(
            env, "usage", "show", "--meter", "prompts", "--from", "2026-04-01", "--json"
        )
        assert code == 0 and [w["value"] for w in json.loads(out)["data"]] == [1.0]

        late = ndjson(prompt("j7", JAN + 600), prompt("a7", APR + 7200))
        code, out, _ = cli(env, "events", "ingest", "-", "--json", stdin=late)
        assert code == 1
        report = json.loads(out)
        assert report["accepted"] == 1 and "retention floor" in report["rejections"][0]["reason"]
