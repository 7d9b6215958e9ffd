"""End to end, through the commands a user runs: events of two subjects of one customer burn
one customer entitlement; `metersync reconcile` bills the usage to Stripe and writes the
figures to the customer's HubSpot company. The company's usage equals what Stripe's event
summaries hold for that customer over the entitlement's period, and both equal the events
as written; its balance is the grant less that usage."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dateutil.relativedelta import relativedelta
from typer.testing import CliRunner

from metersync.catalog import Catalog
from metersync.cli import app
from metersync.sync.ports import MANAGED_KEY
from metersync.targets.hubspot import entitlement_property
from metersync.testing import StripeEmulator
from metersync.testing.hubspot import HubSpotEmulator

TOKEN = "pat-na1-00000000-0000-0000-0000-000000000000"
GRANTED = 1000


@pytest.fixture
def hubspot() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(token=TOKEN, rate_limit_per_10s=None) as running:
        yield running


def ok(runner: CliRunner, env: dict[str, str], *args: str) -> Any:
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output
    return result


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def test_two_subjects_burn_one_customer_entitlement_billed_and_shown_alike(
    catalog: Catalog, database_url: str, hubspot: HubSpotEmulator, tmp_path: Path
) -> None:
    config = tmp_path / "metersync.toml"
    config.write_text(
        "[[meters]]\n"
        'slug = "tokens"\nevent_type = "prompt"\naggregation = "SUM"\n'
        'value_property = "$.tokens"\n'
        "[meters.stripe]\n"
        'event_name = "tokens"\n'
        "[hubspot]\n"
        'entitlement_features = ["gpt_4"]\n'
    )
    catalog.create_customer(
        {"key": "acme", "name": "Acme", "usageAttribution": {"subjectKeys": ["app-1", "app-2"]}}
    )
    # The period starts on an hour two hours back, so every event of it lies in the past and
    # in whole push windows (the push reports by the hour), whatever the date and time.
    start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    written = [("app-1", 5, 120), ("app-2", 40, 300), ("app-1", 70, 45), ("app-2", 100, 80)]
    events = tmp_path / "events.ndjson"
    events.write_text(
        "\n".join(
            json.dumps(
                {
                    "specversion": "1.0",
                    "id": f"e{i}",
                    "source": "test",
                    "type": "prompt",
                    "subject": subject,
                    "time": stamp(start + timedelta(minutes=minutes)),
                    "data": {"tokens": tokens},
                }
            )
            for i, (subject, minutes, tokens) in enumerate(written)
        )
    )
    used = sum(tokens for _, _, tokens in written)  # from the events as written: 545
    with StripeEmulator() as stripe:
        env = {
            "METERSYNC_CONFIG": str(config),
            "METERSYNC_DATABASE_URL": database_url,
            "STRIPE_API_KEY": "sk_test_entitlements",
            "METERSYNC_STRIPE_API_BASE": stripe.url,
            "METERSYNC_SYNC_RATE_LIMIT": "1000",
            "METERSYNC_HUBSPOT_ACCESS_TOKEN": TOKEN,
            "METERSYNC_HUBSPOT_API_BASE": hubspot.url,
            "METERSYNC_HUBSPOT_REQUESTS_PER_10S": "1000",
        }
        runner = CliRunner()
        ok(runner, env, "meters", "ensure")
        ok(
            runner,
            env,
            "features",
            "create",
            "--key",
            "gpt_4",
            "--name",
            "GPT-4",
            "--meter",
            "tokens",
        )
        ok(
            runner,
            env,
            "entitlements",
            "create",
            "acme",
            "--feature",
            "gpt_4",
            "--type",
            "metered",
            "--interval",
            "MONTH",
            "--anchor",
            stamp(start),
            "--measure-from",
            stamp(start),
            "--issue",
            str(GRANTED),
        )
        ok(runner, env, "events", "ingest", str(events))
        ok(runner, env, "reconcile")

        company = next(
            c["properties"]
            for c in hubspot.companies()
            if c["properties"].get(MANAGED_KEY) == "acme"
        )
        shown_usage = company[entitlement_property("gpt_4", "usage")]
        shown_balance = company[entitlement_property("gpt_4", "balance")]
        (meter,) = stripe.meters()
        customer = next(
            c["id"] for c in stripe.customers() if c["metadata"].get("metersync_key") == "acme"
        )
        end = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
        summaries = {
            item["customer"]: item["summaries"]
            for item in stripe.meter_event_summaries(
                meter["id"], int(start.timestamp()), int(end.timestamp())
            )
        }
        billed = sum(s["aggregated_value"] for s in summaries[customer])
        assert billed == used
        assert float(shown_usage) == used
        assert float(shown_balance) == GRANTED - used
        assert company[entitlement_property("gpt_4", "access")] == "true"
        period_end = company[entitlement_property("gpt_4", "period_end")]
        assert datetime.fromisoformat(period_end) == start + relativedelta(months=1)
        value = json.loads(
            ok(runner, env, "entitlements", "value", "acme", "gpt_4", "--json").stdout
        )
        assert (value["usage"], value["balance"]) == (used, GRANTED - used)
