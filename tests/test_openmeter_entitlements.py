"""Entitlement figures with OpenMeter as the source: the OpenMeter emulator (seeded figures;
it computes no balance) → `metersync reconcile` → the HubSpot emulator, over real HTTP, on
SQLite and PostgreSQL. The companies show OpenMeter's figures; a run without a change upstream
writes nothing; a changed figure rewrites that company alone; a pull costs one access read per
customer, and one entitlement list per customer holding a metered one; local entitlement
writes are refused."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from metersync.catalog import Catalog
from metersync.cli import app
from metersync.store import UpstreamEntitlementRow
from metersync.sync.ports import MANAGED_KEY
from metersync.targets.hubspot import entitlement_property
from metersync.testing import OpenMeterEmulator
from metersync.testing.hubspot import HubSpotEmulator

OM_TOKEN = "om-test-token"
HS_TOKEN = "pat-na1-00000000-0000-0000-0000-000000000000"
PERIOD = (datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))
CONFIG = """
[hubspot]
entitlement_features = ["gpt_4", "sso"]
"""
LIST = "/api/v2/customers/"


@pytest.fixture
def openmeter() -> Iterator[OpenMeterEmulator]:
    with OpenMeterEmulator(token=OM_TOKEN) as running:
        yield running


@pytest.fixture
def hubspot() -> Iterator[HubSpotEmulator]:
    with HubSpotEmulator(token=HS_TOKEN, rate_limit_per_10s=None) as running:
        yield running


@pytest.fixture
def env(
    database_url: str, openmeter: OpenMeterEmulator, hubspot: HubSpotEmulator, tmp_path: Path
) -> dict[str, str]:
    config = tmp_path / "metersync.toml"
    config.write_text(CONFIG)
    return {
        "METERSYNC_CONFIG": str(config),
        "METERSYNC_DATABASE_URL": database_url,
        "STRIPE_API_KEY": "",
        "METERSYNC_OPENMETER_URL": openmeter.url,
        "METERSYNC_OPENMETER_TOKEN": OM_TOKEN,
        "METERSYNC_OPENMETER_RETRIES": "1",
        "METERSYNC_OPENMETER_TIMEOUT_S": "5",
        "METERSYNC_HUBSPOT_ACCESS_TOKEN": HS_TOKEN,
        "METERSYNC_HUBSPOT_API_BASE": hubspot.url,
        "METERSYNC_HUBSPOT_REQUESTS_PER_10S": "1000",
    }


def reconcile(env: dict[str, str]) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["reconcile", "--target", "hubspot", "--json"], env=env)
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.stdout)
    return report


def figures(hubspot: HubSpotEmulator, key: str, feature: str) -> dict[str, str | None]:
    (company,) = [c for c in hubspot.companies() if c["properties"][MANAGED_KEY] == key]
    return {
        figure: company["properties"].get(entitlement_property(feature, figure)) or None
        for figure in ("access", "balance", "usage", "period_end")
    }


def company_writes(hubspot: HubSpotEmulator) -> int:
    """Company records written (batch inputs, or single writes), properties aside."""
    writes = [
        r
        for r in hubspot.requests()
        if r["method"] != "GET" and "/objects/companies" in r["path"] and "/search" not in r["path"]
    ]
    return sum(int(r.get("inputs") or 1) for r in writes)


def metered(openmeter: OpenMeterEmulator, key: str, balance: float, usage: float) -> None:
    openmeter.set_entitlement(
        key,
        "gpt_4",
        value={"hasAccess": balance > 0, "balance": balance, "usage": usage, "overage": 0},
        current_period=PERIOD,
    )


def stored(catalog: Catalog) -> dict[tuple[str, str], tuple[Any, ...]]:
    e = UpstreamEntitlementRow.__table__.c  # type: ignore[attr-defined]
    with catalog.store.read_session() as session:
        rows = session.execute(
            select(e.customer_key, e.feature_key, e.held, e.kind, e.balance, e.usage, e.overage)
        ).all()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def test_companies_show_openmeters_figures_and_are_written_only_when_they_change(
    catalog: Catalog, env: dict[str, str], openmeter: OpenMeterEmulator, hubspot: HubSpotEmulator
) -> None:
    ids = [
        openmeter.create_customer(f"c{i}", f"Customer {i}", subject_keys=[f"s{i}"])["id"]
        for i in range(3)
    ]
    metered(openmeter, "c0", 900.5, 99.5)
    openmeter.set_entitlement("c1", "sso", type="boolean")
    # Not a configured feature: neither read nor stored.
    openmeter.set_entitlement("c2", "seats", type="static", config='{"n": 3}')

    first = reconcile(env)
    assert first["targets"]["hubspot"]["summary"] == {"created": 3}
    assert first["source"]["entitlements"]["counts"] == {"customers": 3, "changed": 2}
    assert figures(hubspot, "c0", "gpt_4") == {
        "access": "true",
        "balance": "900.5",
        "usage": "99.5",
        "period_end": "2026-04-01T00:00:00.000Z",
    }
    assert figures(hubspot, "c1", "sso") == {
        "access": "true",
        "balance": None,
        "usage": None,
        "period_end": None,
    }
    empty = dict.fromkeys(("access", "balance", "usage", "period_end"))
    assert figures(hubspot, "c1", "gpt_4") == empty
    assert figures(hubspot, "c2", "gpt_4") == figures(hubspot, "c2", "sso") == empty
    assert stored(catalog) == {
        ("c0", "gpt_4"): (True, "metered", "900.5", "99.5", "0"),
        ("c1", "sso"): (True, "boolean", None, None, None),
    }
    # The cost: one access read per customer, one list for the customer with a metered one.
    assert len(access_reads(openmeter)) == 3
    assert [r["path"] for r in openmeter.requests(LIST)] == [
        f"/api/v2/customers/{ids[0]}/entitlements"
    ]

    # Nothing changed upstream: the figures are read again, nothing is written.
    writes = company_writes(hubspot)
    second = reconcile(env)
    assert second["targets"]["hubspot"]["summary"] == {}
    assert second["source"]["entitlements"]["counts"] == {"customers": 3}
    assert company_writes(hubspot) == writes
    assert len(access_reads(openmeter)) == 6

    # Usage upstream moves c0's figures: that company alone is written.
    metered(openmeter, "c0", 850, 150)
    third = reconcile(env)
    assert third["targets"]["hubspot"]["summary"] == {"updated": 1}
    assert third["source"]["entitlements"]["counts"] == {"customers": 3, "changed": 1}
    assert company_writes(hubspot) == writes + 1
    assert figures(hubspot, "c0", "gpt_4")["balance"] == "850"
    assert figures(hubspot, "c0", "gpt_4")["usage"] == "150"

    # An entitlement deleted upstream clears that company's figures.
    openmeter.delete_entitlement("c1", "sso")
    fourth = reconcile(env)
    assert fourth["targets"]["hubspot"]["summary"] == {"updated": 1}
    assert figures(hubspot, "c1", "sso") == empty
    assert stored(catalog)[("c1", "sso")] == (False, None, None, None, None)


def test_local_entitlement_writes_are_refused(env: dict[str, str]) -> None:
    refused = CliRunner().invoke(
        app, ["entitlements", "create", "c0", "--feature", "gpt_4", "--type", "boolean"], env=env
    )
    assert refused.exit_code != 0
    assert refused.stderr.startswith("error: features and entitlements come from OpenMeter")


def test_nothing_is_read_without_entitlement_features(
    catalog: Catalog, env: dict[str, str], openmeter: OpenMeterEmulator, tmp_path: Path
) -> None:
    openmeter.create_customer("c0", "Customer 0")
    metered(openmeter, "c0", 10, 0)
    config = tmp_path / "plain.toml"
    config.write_text("")
    report = reconcile(env | {"METERSYNC_CONFIG": str(config)})
    assert report["targets"]["hubspot"]["summary"] == {"created": 1}
    assert "entitlements" not in report["source"]
    assert access_reads(openmeter) == openmeter.requests(LIST) == []


def access_reads(openmeter: OpenMeterEmulator) -> list[dict[str, Any]]:
    return [r for r in openmeter.requests("/api/v1/customers/") if r["path"].endswith("/access")]


def test_a_failing_read_is_retried_and_an_outage_fails_the_run(
    catalog: Catalog, env: dict[str, str], openmeter: OpenMeterEmulator, hubspot: HubSpotEmulator
) -> None:
    customer = openmeter.create_customer("c0", "Customer 0")
    metered(openmeter, "c0", 10, 0)
    openmeter.fail_next("503", 1, path_prefix="/api/v2/customers/")
    openmeter.fail_next("reset", 1, path_prefix=f"/api/v1/customers/{customer['id']}/access")
    reconcile(env)
    assert figures(hubspot, "c0", "gpt_4")["balance"] == "10"
    faults = [r["fault"] for r in openmeter.requests() if r["fault"]]
    assert sorted(faults) == ["503", "reset"]

    # OpenMeter down after the catalog pull: the run fails, HubSpot is not written.
    metered(openmeter, "c0", 5, 5)
    writes = company_writes(hubspot)
    openmeter.fail_next("503", 10, path_prefix="/api/v2/customers/")
    failed = CliRunner().invoke(app, ["reconcile", "--target", "hubspot", "--json"], env=env)
    assert failed.exit_code != 0
    assert "did not answer" in failed.output
    assert company_writes(hubspot) == writes
    assert figures(hubspot, "c0", "gpt_4")["balance"] == "10"
