"""HubSpot end to end: the catalog on SQLite and PostgreSQL, the sync engine, the HubSpot target
over real HTTP against the HubSpot emulator (and the Stripe emulator where both targets run)."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from sqlmodel import delete, update
from typer.testing import CliRunner

from metersync.catalog import Catalog
from metersync.catalog.meters import Meter, MeterSettings
from metersync.chaos.hubspot import hubspot_converged
from metersync.cli import app
from metersync.errors import TargetUnusable
from metersync.store import LinkRow
from metersync.sync.apply import RetryPolicy
from metersync.sync.context import ContextReader
from metersync.sync.customer_sync import RunResult, SyncOptions, sync_customers
from metersync.sync.model import DeletePolicy
from metersync.sync.ports import MANAGED_KEY, ContextNeeds
from metersync.targets.hubspot import STRIPE_ID, HubSpotTarget, usage_property
from metersync.testing import StripeEmulator
from metersync.testing.hubspot import HubSpotEmulator

TOKEN = "pat-na1-00000000-0000-0000-0000-000000000000"
FAST_RETRY = RetryPolicy(attempts=8, base_delay_s=0.01, max_delay_s=0.05)
TOKENS = MeterSettings(
    slug="tokens", event_type="prompt", aggregation="SUM", value_property="$.tokens"
)


@pytest.fixture
def hubspot() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(
        token=TOKEN, rate_limit_per_10s=None, multi_status_needs_trace_id=True
    ) as running:
        yield running


def run(
    catalog: Catalog,
    hubspot: HubSpotEmulator,
    *,
    full: bool = False,
    meters: tuple[Meter, ...] = (),
    contacts: bool = False,
    batch_size: int | None = None,
    requests_per_10s: int = 1000,
    daily_reserve: int = 0,
    **policy: Any,
) -> RunResult:
    options = SyncOptions(
        full=full,
        policy=DeletePolicy(**policy),
        concurrency=200,
        retry=FAST_RETRY,
        meters=meters,
        bind_usage=True,
    )

    async def go() -> RunResult:
        target = HubSpotTarget(
            TOKEN,
            api_base=hubspot.url,
            meters=meters,
            requests_per_10s=requests_per_10s,
            daily_reserve=daily_reserve,
            contacts=contacts,
            **({} if batch_size is None else {"batch_size": batch_size}),
        )
        try:
            return await sync_customers(catalog, target, options)
        finally:
            await target.close()

    return asyncio.run(go())


def seed(catalog: Catalog, count: int = 5) -> None:
    for i in range(count):
        catalog.create_customer(
            {
                "key": f"c{i}",
                "name": f"Customer {i}",
                "primaryEmail": f"billing{i}@c{i}.test",
                "billingAddress": {"country": "DE", "city": "Berlin"},
                "usageAttribution": {"subjectKeys": [f"c{i}"]},
            }
        )


def waive_backoffs(catalog: Catalog) -> None:
    """Stands in for waiting out the backoff of failed items."""
    with catalog.store.session() as session:
        session.exec(update(LinkRow).values(next_attempt_at=None))


def companies_by_key(hubspot: HubSpotEmulator) -> dict[str, dict[str, Any]]:
    return {c["properties"][MANAGED_KEY]: c for c in hubspot.companies()}


def test_create_update_delete_in_batches(catalog: Catalog, hubspot: HubSpotEmulator) -> None:
    seed(catalog, 150)
    result = run(catalog, hubspot)
    assert result.counts["created"] == 150
    assert hubspot_converged(catalog, hubspot) == []
    # 150 records: a few batch requests (two when all are in flight together), never 150.
    upserts = hubspot.requests("companies.batch_upsert")
    assert 2 <= len(upserts) <= 4
    company = companies_by_key(hubspot)["c3"]
    assert company["properties"]["city"] == "Berlin"
    assert company["properties"]["country"] == "DE"

    catalog.update_customer("c3", {"name": "Renamed"})
    catalog.delete_customer("c4")
    result = run(catalog, hubspot)
    assert result.counts == {"updated": 1, "deleted": 1}
    assert hubspot_converged(catalog, hubspot) == []
    assert companies_by_key(hubspot)["c3"]["properties"]["name"] == "Renamed"
    assert "c4" in {c["properties"][MANAGED_KEY] for c in hubspot.companies(archived=True)}

    # A tick with nothing to do makes no call at all.
    calls = hubspot.calls()
    assert run(catalog, hubspot).counts == {}
    assert hubspot.calls() == calls


@pytest.mark.parametrize(("batch_size", "largest"), [(5, 5), (500, 100)])
def test_batches_carry_at_most_the_batch_size_and_never_over_one_hundred(
    catalog: Catalog, hubspot: HubSpotEmulator, batch_size: int, largest: int
) -> None:
    seed(catalog, 120)
    assert run(catalog, hubspot, batch_size=batch_size).counts == {"created": 120}
    sizes = [r["inputs"] for r in hubspot.requests("companies.batch_upsert")]
    assert sum(sizes) == 120 and max(sizes) == largest  # HubSpot's batch limit is 100


def test_properties_are_created_once_in_their_group(
    catalog: Catalog, hubspot: HubSpotEmulator
) -> None:
    seed(catalog, 2)
    run(catalog, hubspot, meters=(Meter.of(TOKENS),))
    names = {p["name"]: p for p in hubspot.properties()}
    assert names[MANAGED_KEY]["hasUniqueValue"] is True
    assert {STRIPE_ID, usage_property("tokens"), f"{usage_property('tokens')}_at"} <= set(names)
    created = len(hubspot.requests("properties.batch_create"))
    catalog.update_customer("c1", {"name": "Again"})
    run(catalog, hubspot, meters=(Meter.of(TOKENS),))
    assert len(hubspot.requests("properties.batch_create")) == created == 1


def test_properties_deleted_in_hubspot_are_created_again_within_the_process(
    catalog: Catalog, hubspot: HubSpotEmulator
) -> None:
    """The once-per-process property check must not outlive the properties: after the portal
    loses them (deleted by someone, or another portal at the same address), the next run of
    the same process creates them again instead of failing every record."""
    seed(catalog, 2)
    assert run(catalog, hubspot).counts == {"created": 2}
    hubspot.reset()  # every company and every custom property gone
    assert run(catalog, hubspot, full=True).counts == {"recreated": 2}
    assert MANAGED_KEY in {p["name"] for p in hubspot.properties()}
    assert hubspot_converged(catalog, hubspot) == []


def test_lost_link_table_adopts_instead_of_duplicating(
    catalog: Catalog, hubspot: HubSpotEmulator
) -> None:
    seed(catalog, 4)
    run(catalog, hubspot)
    with catalog.store.session() as session:
        session.exec(delete(LinkRow))
    result = run(catalog, hubspot, full=True)
    assert result.counts.get("adopted") == 4
    assert len(hubspot.companies()) == 4
    # Even an incremental create with no links at all upserts onto the same companies.
    with catalog.store.session() as session:
        session.exec(delete(LinkRow))
    catalog.update_customer("c0", {"name": "Touched"})
    run(catalog, hubspot)
    assert len(hubspot.companies()) == 4
    assert hubspot_converged(catalog, hubspot) == []


def test_deleted_in_hubspot_is_recreated_and_drift_repaired(
    catalog: Catalog, hubspot: HubSpotEmulator
) -> None:
    seed(catalog, 3)
    run(catalog, hubspot)
    companies = companies_by_key(hubspot)
    hubspot.delete_company(companies["c0"]["id"])
    hubspot.set_company_property(companies["c1"]["id"], "name", "Edited in HubSpot")
    result = run(catalog, hubspot, full=True)
    assert result.counts.get("recreated") == 1
    assert result.counts.get("drift_repaired") == 1
    assert hubspot_converged(catalog, hubspot) == []
    assert companies_by_key(hubspot)["c0"]["id"] != companies["c0"]["id"]


def test_archive_policy_marks_and_keeps(catalog: Catalog, hubspot: HubSpotEmulator) -> None:
    seed(catalog, 3)
    run(catalog, hubspot)
    catalog.delete_customer("c2")
    result = run(catalog, hubspot, on_delete="archive")
    assert result.counts == {"archived": 1}
    company = companies_by_key(hubspot)["c2"]
    assert company["properties"]["metersync_archived_at"]


def test_a_rejected_record_fails_alone_with_its_reason(
    catalog: Catalog, hubspot: HubSpotEmulator
) -> None:
    seed(catalog, 5)
    hubspot.reject_records(lambda properties: properties.get("name") == "Customer 2")
    result = run(catalog, hubspot)
    assert result.counts == {"created": 4, "failed": 1}
    assert result.exit_code == 1
    assert result.applied is not None
    [failure] = result.applied.failures
    assert failure["key"] == "c2" and "VALIDATION_ERROR" in failure["error"]
    assert set(companies_by_key(hubspot)) == {"c0", "c1", "c3", "c4"}


def test_contacts_are_upserted_by_email_and_associated(
    catalog: Catalog, hubspot: HubSpotEmulator
) -> None:
    seed(catalog, 3)
    run(catalog, hubspot, contacts=True)
    contacts = {c["properties"]["email"]: c["id"] for c in hubspot.contacts()}
    assert set(contacts) == {"billing0@c0.test", "billing1@c1.test", "billing2@c2.test"}
    companies = companies_by_key(hubspot)
    assert set(hubspot.associations()) == {
        (companies[f"c{i}"]["id"], contacts[f"billing{i}@c{i}.test"]) for i in range(3)
    }
    catalog.update_customer("c1", {"primaryEmail": "new@c1.test"})
    run(catalog, hubspot, contacts=True)
    new = {c["properties"]["email"]: c["id"] for c in hubspot.contacts()}["new@c1.test"]
    assert (companies["c1"]["id"], new) in set(hubspot.associations())


def test_429s_slow_the_limiter_and_everything_lands(
    catalog: Catalog, hubspot: HubSpotEmulator
) -> None:
    seed(catalog, 30)
    hubspot.fail_next("429_ten_secondly", count=3)
    result = run(catalog, hubspot)
    assert result.counts == {"created": 30}
    assert hubspot_converged(catalog, hubspot) == []


def test_the_daily_limit_stops_the_run_with_a_clear_error(
    catalog: Catalog, hubspot: HubSpotEmulator
) -> None:
    seed(catalog, 3)
    hubspot.fail_next("429_daily")
    with pytest.raises(TargetUnusable, match="daily"):
        run(catalog, hubspot)
    # Below the reserve, no call leaves at all.
    hubspot.configure(daily_limit=10)
    hubspot.reset()
    waive_backoffs(catalog)
    calls = hubspot.calls()
    with pytest.raises(TargetUnusable, match="daily"):
        run(catalog, hubspot, daily_reserve=50)
    assert hubspot.calls() <= calls + 1  # the one answer that told us what is left


def test_random_faults_converge_to_one_company_per_customer(
    catalog: Catalog, hubspot: HubSpotEmulator
) -> None:
    rng = random.Random(7)
    seed(catalog, 40)
    hubspot.configure(fault_rate=0.25, seed=7)
    for round_ in range(5):
        for key in rng.sample([c.key for c in catalog.list_customers()], 5):
            catalog.update_customer(key, {"name": f"{key} round {round_}"})
        run(catalog, hubspot)
        waive_backoffs(catalog)
    hubspot.configure(fault_rate=0.0)
    run(catalog, hubspot)
    run(catalog, hubspot, full=True)
    assert hubspot_converged(catalog, hubspot) == []


# -- both targets --------------------------------------------------------------------------------


def test_one_reconcile_brings_stripe_and_hubspot_to_the_catalog(
    catalog: Catalog, database_url: str, hubspot: HubSpotEmulator, tmp_path: Path
) -> None:
    config = tmp_path / "metersync.toml"
    config.write_text(
        "[[meters]]\n"
        'slug = "tokens"\nevent_type = "prompt"\naggregation = "SUM"\n'
        'value_property = "$.tokens"\n'
        "[meters.stripe]\n"
        'event_name = "tokens"\n'
    )
    seed(catalog, 3)
    now = datetime.now(UTC).replace(microsecond=0)
    events = tmp_path / "events.ndjson"
    events.write_text(
        "\n".join(
            json.dumps(
                {
                    "specversion": "1.0",
                    "id": f"e{i}",
                    "source": "test",
                    "type": "prompt",
                    "subject": f"c{i % 3}",
                    "time": now.isoformat().replace("+00:00", "Z"),
                    "data": {"tokens": 10 + i},
                }
            )
            for i in range(9)
        )
    )
    with StripeEmulator() as stripe:
        env = {
            "METERSYNC_CONFIG": str(config),
            "METERSYNC_DATABASE_URL": database_url,
            "STRIPE_API_KEY": "sk_test_both",
            "METERSYNC_STRIPE_API_BASE": stripe.url,
            "METERSYNC_SYNC_RATE_LIMIT": "1000",
            "METERSYNC_HUBSPOT_ACCESS_TOKEN": TOKEN,
            "METERSYNC_HUBSPOT_API_BASE": hubspot.url,
            "METERSYNC_HUBSPOT_REQUESTS_PER_10S": "1000",
        }
        runner = CliRunner()
        ensured = runner.invoke(app, ["meters", "ensure"], env=env)
        assert ensured.exit_code == 0, ensured.output
        ingested = runner.invoke(app, ["events", "ingest", str(events)], env=env)
        assert ingested.exit_code == 0, ingested.output
        result = runner.invoke(app, ["reconcile", "--json"], env=env)
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["summary"]["created"] == 3
        assert report["targets"]["hubspot"]["summary"]["created"] == 3
        assert hubspot_converged(catalog, hubspot, stripe=stripe) == []
        # The company shows this month's usage, the same total Stripe was sent.
        usage = {
            k: c["properties"][usage_property("tokens")]
            for k, c in companies_by_key(hubspot).items()
        }
        assert usage == {"c0": str(10 + 13 + 16), "c1": str(11 + 14 + 17), "c2": str(12 + 15 + 18)}
        # New usage only: the next reconcile updates the companies, without a catalog change.
        events.write_text(
            json.dumps(
                {
                    "specversion": "1.0",
                    "id": "late-1",
                    "source": "test",
                    "type": "prompt",
                    "subject": "c0",
                    "time": now.isoformat().replace("+00:00", "Z"),
                    "data": {"tokens": 100},
                }
            )
        )
        assert runner.invoke(app, ["events", "ingest", str(events)], env=env).exit_code == 0
        again = runner.invoke(app, ["reconcile", "--json"], env=env)
        assert again.exit_code == 0, again.output
        assert json.loads(again.stdout)["targets"]["hubspot"]["summary"] == {"updated": 1}
        company = companies_by_key(hubspot)["c0"]["properties"]
        assert company[usage_property("tokens")] == str(10 + 13 + 16 + 100)
        status = runner.invoke(app, ["status", "--json"], env=env)
        assert status.exit_code == 0, status.output
        links = json.loads(status.stdout)["targets"]["hubspot"]["links"]
        assert links["customer"]["synced"] == 3


def test_a_refused_contact_fails_only_its_own_company(
    catalog: Catalog, hubspot: HubSpotEmulator
) -> None:
    seed(catalog, 6)
    hubspot.reject_records(lambda p: p.get("email") == "billing3@c3.test", object_type="contacts")
    result = run(catalog, hubspot, contacts=True)
    assert result.counts == {"created": 5, "failed": 1}
    assert result.applied is not None
    assert [f["key"] for f in result.applied.failures] == ["c3"]


def test_a_new_month_re_renders_every_company_with_usage_figures(
    catalog: Catalog, hubspot: HubSpotEmulator
) -> None:
    """Usage properties say "this month": on the first tick of a month each company is looked
    at again, with or without new usage (and a figure from last month is cleared).

    The run happens on the clock of the month's last evening, so its rows are stamped before
    23:00 whatever the real date is (tick: the run's event loop needs time to pass)."""
    with freeze_time("2026-11-30 22:00:00", tick=True):
        seed(catalog, 3)
        run(catalog, hubspot, meters=(Meter.of(TOKENS),))
    reader = ContextReader(
        catalog.store,
        ContextNeeds(usage=True),
        [Meter.of(TOKENS)],
        datetime(2026, 12, 1, 0, 5, tzinfo=UTC),
    )
    assert reader.changed_since(datetime(2026, 11, 30, 23, 0, tzinfo=UTC), "hubspot") == {
        "c0",
        "c1",
        "c2",
    }
    within = ContextReader(
        catalog.store,
        ContextNeeds(usage=True),
        [Meter.of(TOKENS)],
        datetime(2026, 11, 30, 23, 30, tzinfo=UTC),
    )
    assert within.changed_since(datetime(2026, 11, 30, 23, 0, tzinfo=UTC), "hubspot") == set()


# -- HubSpot alone ---------------------------------------------------------------------------------


def hubspot_only_env(config: Path, database_url: str, hubspot: HubSpotEmulator) -> dict[str, str]:
    """Settings with HubSpot and a Stripe meter, and no Stripe key anywhere."""
    config.write_text(
        "[[meters]]\n"
        'slug = "tokens"\nevent_type = "prompt"\naggregation = "SUM"\n'
        'value_property = "$.tokens"\n'
        "[meters.stripe]\n"
        'event_name = "tokens"\n'
    )
    return {
        "METERSYNC_CONFIG": str(config),
        "METERSYNC_DATABASE_URL": database_url,
        "STRIPE_API_KEY": "",
        "METERSYNC_HUBSPOT_ACCESS_TOKEN": TOKEN,
        "METERSYNC_HUBSPOT_API_BASE": hubspot.url,
        "METERSYNC_HUBSPOT_REQUESTS_PER_10S": "1000",
    }


def test_reconcile_of_hubspot_alone_needs_no_stripe_key(
    catalog: Catalog, database_url: str, hubspot: HubSpotEmulator, tmp_path: Path
) -> None:
    seed(catalog, 3)
    env = hubspot_only_env(tmp_path / "metersync.toml", database_url, hubspot)
    runner = CliRunner()
    result = runner.invoke(app, ["reconcile", "--target", "hubspot", "--json"], env=env)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["targets"]["hubspot"]["summary"] == {"created": 3}
    assert sorted(companies_by_key(hubspot)) == ["c0", "c1", "c2"]
    # Stripe's side still asks for its key, and says which.
    refused = runner.invoke(app, ["reconcile", "--target", "stripe"], env=env)
    assert refused.exit_code == 2
    assert "STRIPE_API_KEY" in refused.output and "Traceback" not in refused.output


def test_the_services_hubspot_job_needs_no_stripe_key(
    catalog: Catalog,
    database_url: str,
    hubspot: HubSpotEmulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from metersync.service.daemon import Service
    from metersync.settings import load_settings

    seed(catalog, 2)
    for name, value in hubspot_only_env(tmp_path / "m.toml", database_url, hubspot).items():
        monkeypatch.setenv(name, value)
    service = Service(load_settings(), catalog)
    service.hubspot_tick()
    assert service.last["hubspot"].ok and service.last["hubspot"].counts == {"created": 2}
    # The Stripe jobs fail, logged and counted, and the service goes on.
    service.customer_tick()
    assert not service.last["customers"].ok
