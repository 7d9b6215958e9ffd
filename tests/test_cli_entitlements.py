"""`metersync features …` and `metersync entitlements …` through the CLI, on both databases:
each command's table and OpenMeter-shaped JSON, amounts printed exactly, and bad input as one
error naming the option, exit 2, no traceback."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from metersync.cli import app

runner = CliRunner()
CONFIG = """
[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"
group_by = { model = "$.model" }

[[meters]]
slug = "latest"
event_type = "ping"
aggregation = "LATEST"
value_property = "$.v"
"""


@pytest.fixture
def env(database_url: str, tmp_path: Path) -> dict[str, str]:
    config = tmp_path / "metersync.toml"
    config.write_text(CONFIG)
    env = {"METERSYNC_CONFIG": str(config), "METERSYNC_DATABASE_URL": database_url}
    code, _, err = cli(env, "db", "upgrade")
    assert code == 0, err
    code, _, err = cli(
        env, "customers", "create", "--key", "acme", "--name", "Acme", "--subject", "acme-api"
    )
    assert code == 0, err
    return env


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env, input=stdin)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def ok(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    code, out, err = cli(env, *args, stdin=stdin)
    assert code == 0, err
    return out


def ok_json(env: dict[str, str], *args: str) -> object:
    return json.loads(ok(env, *args, "--json"))


def refused(env: dict[str, str], *args: str) -> str:
    """A bad input: exit 2, one `error:` line (click's usage errors add their usage lines)."""
    code, out, err = cli(env, *args)
    assert code == 2, out + err
    assert "Traceback" not in out + err
    return err


def stamp(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def tokens_feature(env: dict[str, str]) -> None:
    ok(
        env,
        "features",
        "create",
        "--key",
        "gpt_tokens",
        "--name",
        "GPT tokens",
        "--meter",
        "tokens",
    )


# -- features ------------------------------------------------------------------------------------


def test_features_create_list_show_archive(env: dict[str, str]) -> None:
    code, out, err = cli(
        env,
        "features",
        "create",
        "--key",
        "gpt4_tokens",
        "--name",
        "GPT-4 tokens",
        "--meter",
        "tokens",
        "--filter",
        "model=gpt-4",
        "--meta",
        "tier=pro",
    )
    assert code == 0, err
    assert "feature 'gpt4_tokens': created" in err
    assert "gpt4_tokens" in out and "model=gpt-4" in out
    ok(env, "features", "create", "--key", "sso", "--name", "Single sign-on")

    features = ok_json(env, "features", "list")
    assert isinstance(features, list)
    assert [f["key"] for f in features] == ["gpt4_tokens", "sso"]
    first = features[0]
    assert set(first) == {
        "id",
        "key",
        "name",
        "metadata",
        "meterSlug",
        "meterGroupByFilters",
        "advancedMeterGroupByFilters",
        "createdAt",
        "updatedAt",
    }
    assert first["meterSlug"] == "tokens"
    assert first["meterGroupByFilters"] == {"model": "gpt-4"}
    assert first["advancedMeterGroupByFilters"] == {"model": {"$eq": "gpt-4"}}
    assert first["metadata"] == {"tier": "pro"}
    assert first["createdAt"].endswith("Z")
    assert set(features[1]) == {"id", "key", "name", "createdAt", "updatedAt"}

    out = ok(env, "features", "list")
    assert "features (2)" in out and "GPT-4 tokens" in out
    by_id = ok_json(env, "features", "show", first["id"])
    assert by_id == ok_json(env, "features", "show", "gpt4_tokens") == first
    assert "Single sign-on" in ok(env, "features", "show", "sso")

    assert ok(env, "features", "archive", "sso") == "feature 'sso': archived\n"
    assert [f["key"] for f in ok_json(env, "features", "list")] == ["gpt4_tokens"]
    archived = ok_json(env, "features", "list", "--include-archived")
    assert [f["key"] for f in archived if "archivedAt" in f] == ["sso"]
    assert "archived" in ok(env, "features", "list", "--include-archived")
    # The key is free again.
    ok(env, "features", "create", "--key", "sso", "--name", "SSO v2")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--key", "Bad-Key", "--name", "n"], "error: --key (key): "),
        (["--key", "k", "--name", ""], "error: --name (name): must not be empty"),
        (["--key", "k", "--name", "n", "--meter", "nope"], "error: --meter (meterSlug): no meter"),
        (
            ["--key", "k", "--name", "n", "--meter", "tokens", "--filter", "region=eu"],
            "error: --filter (meterGroupByFilters): meter 'tokens' does not group by region",
        ),
        (["--key", "k", "--name", "n", "--filter", "model=a"], "--filter"),
        (["--key", "k", "--name", "n", "--meter", "tokens", "--filter", "model"], "--filter"),
        (["--key", "k", "--name", "n", "--meta", "novalue"], "--meta"),
    ],
)
def test_feature_create_bad_input_names_the_option(
    env: dict[str, str], args: list[str], expected: str
) -> None:
    assert expected in refused(env, "features", "create", *args)


def test_feature_conflicts_and_unknowns(env: dict[str, str]) -> None:
    ok(env, "features", "create", "--key", "k", "--name", "n")
    assert refused(env, "features", "create", "--key", "k", "--name", "n") == (
        "error: feature 'k' already exists\n"
    )
    assert refused(env, "features", "show", "nope") == "error: feature 'nope' does not exist\n"
    assert refused(env, "features", "archive", "nope") == "error: feature 'nope' does not exist\n"


def test_writes_are_refused_when_openmeter_is_the_source(env: dict[str, str]) -> None:
    upstream = env | {"METERSYNC_OPENMETER_URL": "http://openmeter.invalid"}
    for args in (
        ["features", "create", "--key", "k", "--name", "n"],
        ["entitlements", "create", "acme", "--feature", "k", "--type", "boolean"],
        ["entitlements", "void", "01J00000000000000000000000"],
    ):
        err = refused(upstream, *args)
        assert err.startswith("error: features and entitlements come from OpenMeter"), err
        assert err.count("\n") == 1
    # Reads still work.
    assert ok_json(upstream, "features", "list") == []


# -- entitlements --------------------------------------------------------------------------------


def test_entitlements_of_each_kind_list_and_show(env: dict[str, str]) -> None:
    tokens_feature(env)
    ok(env, "features", "create", "--key", "sso", "--name", "SSO")
    ok(env, "features", "create", "--key", "seats", "--name", "Seats")
    code, out, err = cli(
        env,
        "entitlements",
        "create",
        "acme",
        "--feature",
        "gpt_tokens",
        "--type",
        "metered",
        "--interval",
        "MONTH",
        "--anchor",
        "2026-01-01T00:00:00Z",
        "--measure-from",
        "CURRENT_PERIOD_START",
        "--issue",
        "1000.50",
        "--issue-priority",
        "2",
        "--soft-limit",
        "--meta",
        "plan=pro",
    )
    assert code == 0, err
    assert "entitlement of 'acme' to 'gpt_tokens': created" in err
    assert "issue 1000.50 (priority 2)" in out and "soft" in out
    ok(env, "entitlements", "create", "acme", "--feature", "sso", "--type", "boolean")
    ok(
        env,
        "entitlements",
        "create",
        "acme",
        "--feature",
        "seats",
        "--type",
        "static",
        "--config",
        '{"seats": 5}',
    )

    listed = ok_json(env, "entitlements", "list")
    assert isinstance(listed, list)
    metered, boolean, static = listed
    assert metered["type"] == "metered" and metered["featureKey"] == "gpt_tokens"
    assert metered["customerKey"] == "acme" and metered["customerId"]
    assert metered["usagePeriod"] == {
        "interval": "MONTH",
        "intervalISO": "P1M",
        "anchor": "2026-01-01T00:00:00.000Z",
    }
    assert set(metered["currentUsagePeriod"]) == {"from", "to"}
    assert metered["measureUsageFrom"] == metered["lastReset"]
    assert metered["measureUsageFrom"].endswith(":00:00.000Z")
    assert metered["isSoftLimit"] is True and metered["preserveOverageAtReset"] is False
    # Exact amounts, as JSON numbers.
    assert metered["issue"] == {"amount": 1000.5, "priority": 2}
    assert '"amount": 1000.50' in ok(env, "entitlements", "list", "--json")
    assert metered["metadata"] == {"plan": "pro"}
    assert boolean["type"] == "boolean" and "usagePeriod" not in boolean
    assert "isSoftLimit" not in boolean
    assert static["config"] == '{"seats": 5}'
    for entitlement in listed:
        assert {"id", "featureId", "createdAt", "updatedAt", "activeFrom"} <= set(entitlement)

    table = ok(env, "entitlements", "list", "acme")
    assert "entitlements (3)" in table and "MONTH from 2026-01-01T00:00:00+00:00" in table
    assert [e["featureKey"] for e in ok_json(env, "entitlements", "list", "--feature", "sso")] == [
        "sso"
    ]
    shown = ok_json(env, "entitlements", "show", "acme", "gpt_tokens")
    assert shown == metered
    assert ok_json(env, "entitlements", "show", "acme", metered["id"]) == metered


def test_entitlement_from_json_file_and_stdin(env: dict[str, str], tmp_path: Path) -> None:
    tokens_feature(env)
    body = tmp_path / "entitlement.json"
    body.write_text(
        json.dumps(
            {
                "type": "metered",
                "featureKey": "gpt_tokens",
                "usagePeriod": {"interval": "P1D"},
                "issueAfterReset": 0.1,
            }
        )
    )
    created = ok_json(env, "entitlements", "create", "acme", "--from-json", str(body))
    assert isinstance(created, dict)
    assert created["usagePeriod"]["interval"] == "DAY"
    assert created["issueAfterReset"] == 0.1
    err = refused(env, "entitlements", "create", "acme", "--from-json", "-", "--type", "boolean")
    assert "--from-json" in err and "--type" in err
    err = refused(env, "entitlements", "create", "acme", "--from-json", str(tmp_path / "nope"))
    assert "does not exist" in err
    code, _, err = cli(env, "entitlements", "create", "acme", "--from-json", "-", stdin="[1]")
    assert code == 2 and "must be a JSON object" in err
    code, _, err = cli(
        env,
        "entitlements",
        "create",
        "acme",
        "--from-json",
        "-",
        stdin='{"type": "metered", "featureKey": "gpt_tokens"}',
    )
    # Fields of a body are named as the body names them.
    assert code == 2 and err == "error: usagePeriod: is required\n"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--type", "credit"], "--type"),
        (["--type", "metered"], "error: --interval (usagePeriod): is required"),
        (
            ["--type", "metered", "--interval", "FORTNIGHT"],
            "error: --interval (usagePeriod.interval): 'FORTNIGHT' is neither",
        ),
        (["--type", "metered", "--interval", "MONTH", "--anchor", "2026-01-01T00:00"], "--anchor"),
        (["--type", "metered", "--interval", "MONTH", "--measure-from", "soon"], "--measure-from"),
        (
            ["--type", "metered", "--interval", "MONTH", "--issue", "lots"],
            "error: --issue (issue.amount): 'lots' is not a number",
        ),
        (
            ["--type", "metered", "--interval", "MONTH", "--issue", "-5"],
            "error: --issue (issue.amount): must not be negative",
        ),
        (
            ["--type", "metered", "--interval", "MONTH", "--issue", "5", "--issue-priority", "0"],
            "error: --issue-priority (issue.priority):",
        ),
        (["--type", "boolean", "--soft-limit"], "--soft-limit"),
        (["--type", "boolean", "--config", "{}"], "--config"),
        (["--type", "static"], "error: --config (config): is required"),
        (["--type", "static", "--config", "{nope"], "error: --config (config): is not JSON"),
    ],
)
def test_entitlement_create_bad_input_names_the_option(
    env: dict[str, str], args: list[str], expected: str
) -> None:
    tokens_feature(env)
    err = refused(env, "entitlements", "create", "acme", "--feature", "gpt_tokens", *args)
    assert expected in err


def test_entitlement_create_refusals(env: dict[str, str]) -> None:
    tokens_feature(env)
    ok(env, "features", "create", "--key", "sso", "--name", "SSO")
    assert "--type" in refused(env, "entitlements", "create", "acme", "--feature", "sso")
    assert "--feature" in refused(env, "entitlements", "create", "acme", "--type", "boolean")
    err = refused(
        env, "entitlements", "create", "acme", "--feature", "sso", "--type", "metered",
        "--interval", "DAY",
    )  # fmt: skip
    assert err == "error: --feature (featureKey): feature 'sso' has no meter\n"
    err = refused(env, "entitlements", "create", "nobody", "--feature", "sso", "--type", "boolean")
    assert err == "error: customer 'nobody' does not exist\n"
    ok(env, "entitlements", "create", "acme", "--feature", "sso", "--type", "boolean")
    err = refused(env, "entitlements", "create", "acme", "--feature", "sso", "--type", "boolean")
    assert "already has an entitlement to 'sso'" in err


def test_override_and_delete(env: dict[str, str]) -> None:
    tokens_feature(env)
    first = ok_json(
        env, "entitlements", "create", "acme", "--feature", "gpt_tokens", "--type", "metered",
        "--interval", "MONTH", "--issue", "100",
    )  # fmt: skip
    assert isinstance(first, dict)
    code, out, err = cli(
        env, "entitlements", "override", "acme", "gpt_tokens", "--type", "metered",
        "--interval", "DAY", "--issue", "250",
    )  # fmt: skip
    assert code == 0, err
    assert "overridden" in err and "issue 250" in out
    live = ok_json(env, "entitlements", "list", "acme")
    assert isinstance(live, list) and len(live) == 1
    assert live[0]["id"] != first["id"] and live[0]["usagePeriod"]["interval"] == "DAY"
    every = ok_json(env, "entitlements", "list", "acme", "--include-deleted")
    assert isinstance(every, list)
    assert [e["id"] for e in every if "deletedAt" in e] == [first["id"]]
    assert "--interval" in refused(
        env, "entitlements", "override", "acme", "gpt_tokens", "--type", "metered"
    )
    assert "does not exist" in refused(
        env, "entitlements", "override", "acme", "nope", "--type", "boolean"
    )

    new_id = live[0]["id"]
    assert ok(env, "entitlements", "delete", new_id) == f"entitlement {new_id}: deleted\n"
    assert ok_json(env, "entitlements", "list") == []
    assert refused(env, "entitlements", "delete", new_id) == (
        f"error: entitlement {new_id!r} is deleted already\n"
    )
    assert "does not exist" in refused(env, "entitlements", "delete", "nope")


# -- grants --------------------------------------------------------------------------------------


def metered(env: dict[str, str], *more: str) -> dict[str, object]:
    tokens_feature(env)
    created = ok_json(
        env, "entitlements", "create", "acme", "--feature", "gpt_tokens", "--type", "metered",
        "--interval", "MONTH", *more,
    )  # fmt: skip
    assert isinstance(created, dict)
    return created


def test_grants_create_list_void(env: dict[str, str]) -> None:
    entitlement = metered(env)
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    code, out, err = cli(
        env, "entitlements", "grant", "acme", "gpt_tokens", "--amount", "0.1",
        "--effective-at", stamp(day + timedelta(seconds=30)), "--priority", "3",
        "--expires", "day:30", "--max-rollover", "0.05", "--recurrence", "MONTH",
        "--meta", "reason=promo",
    )  # fmt: skip
    assert code == 0, err
    assert "created" in err and "0.1" in out and "30 × DAY" in out
    ok(env, "entitlements", "grant", "acme", entitlement["id"], "--amount", "1E+3",
       "--effective-at", "2026-01-02")  # fmt: skip

    grants = ok_json(env, "entitlements", "grants", "acme")
    assert isinstance(grants, list)
    promo, big = grants
    assert promo["entitlementId"] == entitlement["id"]
    assert promo["amount"] == 0.1 and promo["maxRolloverAmount"] == 0.05
    assert promo["minRolloverAmount"] == 0 and promo["priority"] == 3
    effective = day + timedelta(minutes=1)  # ceiled to the minute
    assert promo["effectiveAt"] == effective.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert promo["expiration"] == {"duration": "DAY", "count": 30}
    expires = effective + timedelta(days=30)
    assert promo["expiresAt"] == expires.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert promo["recurrence"]["interval"] == "MONTH" and "nextRecurrence" in promo
    assert promo["metadata"] == {"reason": "promo"}
    assert big["amount"] == 1000
    # Tables: exact digits, no exponent.
    table = ok(env, "entitlements", "grants", "acme", "gpt_tokens")
    assert "1000 " in table and "0.1 " in table and "1E+3" not in table
    assert "0–0.05" in table

    code, out, _ = cli(env, "entitlements", "void", promo["id"])
    assert code == 0 and out.startswith(f"grant {promo['id']}: voided at ")
    assert [g["id"] for g in ok_json(env, "entitlements", "grants", "acme")] == [big["id"]]
    voided = ok_json(env, "entitlements", "grants", "acme", "--include-voided")
    assert isinstance(voided, list) and "voidedAt" in voided[0]
    assert "voided already" in refused(env, "entitlements", "void", promo["id"])
    assert "does not exist" in refused(env, "entitlements", "void", "nope")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--amount", "ten"], "error: --amount (amount): 'ten' is not a number"),
        (["--amount", "-1"], "error: --amount (amount): must not be negative"),
        (["--amount", "1", "--priority", "0"], "error: --priority (priority):"),
        (["--amount", "1", "--expires", "DAY"], "--expires"),
        (["--amount", "1", "--expires", "FORTNIGHT:2"], "--expires"),
        (["--amount", "1", "--expires", "DAY:0"], "error: --expires (expiration.count):"),
        (["--amount", "1", "--recurrence", "sometimes"], "error: --recurrence"),
        (["--amount", "1", "--min-rollover", "x"], "error: --min-rollover (minRolloverAmount)"),
    ],
)
def test_grant_bad_input_names_the_option(
    env: dict[str, str], args: list[str], expected: str
) -> None:
    metered(env)
    err = refused(
        env, "entitlements", "grant", "acme", "gpt_tokens", "--effective-at", "2026-01-01", *args
    )
    assert expected in err


def test_grant_needs_a_metered_entitlement(env: dict[str, str]) -> None:
    ok(env, "features", "create", "--key", "sso", "--name", "SSO")
    ok(env, "entitlements", "create", "acme", "--feature", "sso", "--type", "boolean")
    err = refused(
        env, "entitlements", "grant", "acme", "sso", "--amount", "1", "--effective-at",
        "2026-01-01",
    )  # fmt: skip
    assert err == "error: FEATURE_OR_ID (entitlement): a boolean entitlement has no grants\n"
    assert "--effective-at" in refused(env, "entitlements", "grant", "acme", "sso", "--amount", "1")


# -- values, access, history, reset --------------------------------------------------------------


def ingest(env: dict[str, str], start: datetime, amounts: list[int]) -> None:
    lines = [
        json.dumps(
            {
                "specversion": "1.0",
                "id": f"e{i}",
                "source": "app",
                "type": "prompt",
                "subject": "acme-api",
                "time": stamp(start + timedelta(minutes=10 * i)),
                "data": {"tokens": tokens, "model": "a"},
            }
        )
        for i, tokens in enumerate(amounts)
    ]
    ok(env, "events", "ingest", "-", stdin="\n".join(lines) + "\n")


def test_value_access_history_and_reset(env: dict[str, str]) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
    entitlement = metered(
        env, "--anchor", stamp(hour), "--measure-from", stamp(hour), "--issue", "100.25"
    )
    ok(env, "features", "create", "--key", "sso", "--name", "SSO")
    ok(env, "entitlements", "create", "acme", "--feature", "sso", "--type", "boolean")
    ingest(env, hour + timedelta(minutes=5), [5, 7, 11])

    value = ok_json(env, "entitlements", "value", "acme", "gpt_tokens")
    assert value == {
        "hasAccess": True,
        "balance": 77.25,
        "usage": 23,
        "overage": 0,
        "totalAvailableGrantAmount": 100.25,
    }
    table = ok(env, "entitlements", "value", "acme", entitlement["id"])
    assert "77.25" in table and "100.25" in table
    at_now = ok_json(
        env, "entitlements", "value", "acme", "gpt_tokens", "--at", stamp(datetime.now(UTC))
    )
    assert at_now == value
    # Before the entitlement was created: nothing yet, and no access.
    before = ok_json(env, "entitlements", "value", "acme", "gpt_tokens", "--at", stamp(hour))
    assert before == {
        "hasAccess": False,
        "balance": 0,
        "usage": 0,
        "overage": 0,
        "totalAvailableGrantAmount": 0,
    }
    assert ok_json(env, "entitlements", "value", "acme", "sso") == {"hasAccess": True}

    access = ok_json(env, "entitlements", "access", "acme")
    assert isinstance(access, dict)
    assert set(access["entitlements"]) == {"gpt_tokens", "sso"}
    assert access["entitlements"]["gpt_tokens"]["balance"] == 77.25
    assert "gpt_tokens" in ok(env, "entitlements", "access", "acme")

    history = ok_json(
        env, "entitlements", "history", "acme", "gpt_tokens", "--from", stamp(hour),
        "--to", stamp(hour + timedelta(hours=3)), "--window", "hour", "--tz", "Europe/Berlin",
    )  # fmt: skip
    assert isinstance(history, dict)
    assert set(history) == {"windowedHistory", "burndownHistory"}
    assert sum(w["usage"] for w in history["windowedHistory"]) == 23
    assert history["windowedHistory"][0]["balanceAtStart"] == 100.25
    assert {"period", "usage", "overage", "grantUsages"} <= set(history["burndownHistory"][0])
    out = ok(
        env, "entitlements", "history", "acme", "gpt_tokens", "--from", stamp(hour),
        "--to", stamp(hour + timedelta(hours=3)),
    )  # fmt: skip
    assert "windows" in out and "burn-down" in out

    reset_at = hour + timedelta(hours=1)
    done = ok_json(env, "entitlements", "reset", "acme", "gpt_tokens", "--at", stamp(reset_at))
    assert isinstance(done, dict)
    assert done["effectiveAt"] == reset_at.strftime("%Y-%m-%dT%H:%M:%S.000Z")
    after = ok_json(env, "entitlements", "value", "acme", "gpt_tokens")
    assert isinstance(after, dict) and after["usage"] == 0 and after["balance"] == 100.25
    shown = ok_json(env, "entitlements", "show", "acme", "gpt_tokens")
    assert isinstance(shown, dict) and shown["lastReset"] == done["effectiveAt"]
    assert shown["usagePeriod"]["anchor"] == done["effectiveAt"]


def test_value_history_reset_bad_input(env: dict[str, str]) -> None:
    metered(env)
    assert "--at" in refused(env, "entitlements", "value", "acme", "gpt_tokens", "--at", "later")
    assert "does not exist" in refused(env, "entitlements", "value", "acme", "nope")
    base = ["entitlements", "history", "acme", "gpt_tokens"]
    span = ["--from", "2026-01-02", "--to", "2026-01-03"]
    assert "--window" in refused(env, *base, *span, "--window", "WEEK")
    assert "--tz" in refused(env, *base, *span, "--tz", "Mars/Olympus")
    assert "--from" in refused(env, *base, "--from", "2026-01-03", "--to", "2026-01-02")
    future = stamp(datetime.now(UTC) + timedelta(days=1))
    err = refused(env, "entitlements", "reset", "acme", "gpt_tokens", "--at", future)
    assert err.startswith("error: --at (effectiveAt): ") and "in the future" in err
