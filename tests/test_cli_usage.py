"""The usage commands end to end through the CLI: meters ensure, events ingest, reconcile with
and without --only usage, usage show and verify, status; output and exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from typer.testing import CliRunner

from metersync.cli import app
from metersync.store import Store
from metersync.testing import StripeEmulator

runner = CliRunner()
CONFIG = """
[usage]
window = "1h"

[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"
value_property = "$.tokens"
group_by = { model = "$.model" }
[meters.stripe]
event_name = "tokens"
"""


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    with StripeEmulator() as running:
        yield running


@pytest.fixture
def env(
    store: Store, database_url: str, emulator: StripeEmulator, tmp_path: Path
) -> dict[str, str]:
    config = tmp_path / "metersync.toml"
    config.write_text(CONFIG)
    return {
        "METERSYNC_CONFIG": str(config),
        "METERSYNC_DATABASE_URL": database_url,
        "STRIPE_API_KEY": "sk_test_cli",
        "METERSYNC_STRIPE_API_BASE": emulator.url,
        "METERSYNC_SYNC_RATE_LIMIT": "1000",
        "METERSYNC_USAGE_METER_EVENT_RATE": "1000",
    }


def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env, input=stdin)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def events(hour: datetime) -> str:
    lines = []
    for i, (tokens, model) in enumerate([(5, "a"), (7, "b"), (11, "a")]):
        stamp = (hour + timedelta(minutes=10 * i)).isoformat().replace("+00:00", "Z")
        lines.append(
            json.dumps(
                {
                    "specversion": "1.0",
                    "id": f"e{i}",
                    "source": "app",
                    "type": "prompt",
                    "subject": "acme-api",
                    "time": stamp,
                    "data": {"tokens": tokens, "model": model},
                }
            )
        )
    return "\n".join(lines) + "\n"


def test_ingest_push_show_verify_and_status(env: dict[str, str], emulator: StripeEmulator) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    code, out, err = cli(env, "meters", "ensure")
    assert code == 0, err
    code, _, err = cli(
        env, "customers", "create", "--key", "acme", "--name", "Acme", "--subject", "acme-api"
    )
    assert code == 0, err
    code, out, err = cli(env, "events", "ingest", "-", "--json", stdin=events(hour))
    assert code == 0, err
    assert json.loads(out)["accepted"] == 3

    # The plain reconcile creates the customer, then pushes its usage.
    code, out, err = cli(env, "reconcile", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["summary"] == {"created": 1}
    assert report["usage"]["summary"] == {"planned": 1, "sent": 1, "delivered": 1}
    assert [int(e["payload"]["value"]) for e in emulator.meter_events()] == [23]

    code, out, _ = cli(env, "reconcile", "--only", "usage", "--json")
    assert code == 0 and "summary" not in out.split('"usage"')[0]
    assert json.loads(out)["usage"]["summary"] == {}

    start = hour.isoformat().replace("+00:00", "Z")
    code, out, err = cli(
        env,
        "usage",
        "show",
        "--meter",
        "tokens",
        "--customer",
        "acme",
        "--from",
        start,
        "--group",
        "--json",
    )
    assert code == 0, err
    shown = json.loads(out)
    assert [(w["groupBy"]["model"], w["value"]) for w in shown["data"]] == [("a", 16.0), ("b", 7.0)]
    assert shown["data"][0]["windowStart"] == start

    code, out, err = cli(env, "usage", "verify", "--json")
    assert code == 0, err
    assert json.loads(out)["differences"] == []

    code, out, _ = cli(env, "status", "--json")
    usage = json.loads(out)["usage"]
    assert usage["ledger"] == {"delivered": 1} and usage["lagSeconds"] == 0
    code, out, _ = cli(env, "status")
    assert code == 0 and "usage ledger (stripe)" in out


def test_a_key_refused_during_the_push_is_one_line_and_loses_nothing(
    env: dict[str, str], emulator: StripeEmulator
) -> None:
    hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=2)
    assert cli(env, "meters", "ensure")[0] == 0
    cli(env, "customers", "create", "--key", "acme", "--name", "Acme", "--subject", "acme-api")
    assert cli(env, "reconcile", "--only", "customers")[0] == 0
    assert cli(env, "events", "ingest", "-", stdin=events(hour))[0] == 0
    # The key is revoked: every meter event is refused.
    revoked = {**env, "STRIPE_API_KEY": "rk_live_notaccepted"}
    result = runner.invoke(app, ["reconcile", "--only", "usage"], env=revoked)
    assert result.exit_code == 2, result.output
    assert "meter events are refused" in result.stderr and "Traceback" not in result.output
    assert emulator.meter_events() == []
    # What was written stays owed (pending, retried after a backoff) and is delivered, once,
    # with a working key.
    code, out, _ = cli(env, "status", "--json")
    assert json.loads(out)["usage"]["ledger"] == {"pending": 1}
    with freeze_time(datetime.now(UTC) + timedelta(minutes=5), tick=True):
        code, out, err = cli(env, "reconcile", "--only", "usage", "--json")
    assert code == 0, err
    assert json.loads(out)["usage"]["summary"] == {"sent": 1, "delivered": 1}
    assert [int(e["payload"]["value"]) for e in emulator.meter_events()] == [23]


def test_user_mistakes_are_one_line_errors(env: dict[str, str]) -> None:
    code, _, err = cli(env, "usage", "show", "--meter", "nope")
    assert code == 2 and "meter 'nope' is not configured (meters: tokens)" in err
    code, _, err = cli(env, "usage", "show", "--meter", "tokens", "--from", "yesterday")
    assert code == 2 and "--from" in err and "Traceback" not in err
    code, _, err = cli(env, "reconcile", "--only", "invoices")
    assert code == 2 and "--only" in err
    code, _, err = cli(env, "events", "ingest", "/no/such/file.ndjson")
    assert code == 2 and "does not exist" in err


def test_only_usage_without_meters_is_a_config_error(env: dict[str, str], tmp_path: Path) -> None:
    bare = tmp_path / "bare.toml"
    bare.write_text("")
    code, _, err = cli({**env, "METERSYNC_CONFIG": str(bare)}, "reconcile", "--only", "usage")
    assert code == 2 and "no [[meters]] with a stripe section" in err


def prompts(stamps: list[tuple[str, datetime, int]]) -> str:
    """`prompt` events of acme-api: (id, time, tokens)."""
    return "".join(
        json.dumps(
            {
                "specversion": "1.0",
                "id": event_id,
                "source": "app",
                "type": "prompt",
                "subject": "acme-api",
                "time": stamp.isoformat().replace("+00:00", "Z"),
                "data": {"tokens": tokens, "model": "a"},
            }
        )
        + "\n"
        for event_id, stamp, tokens in stamps
    )


def test_verify_since_compares_only_the_periods_that_end_after_it(
    env: dict[str, str], emulator: StripeEmulator
) -> None:
    frozen = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    old, recent = frozen - timedelta(hours=30), frozen - timedelta(hours=2)
    with freeze_time(frozen, real_asyncio=True, tick=True):
        assert cli(env, "meters", "ensure")[0] == 0
        cli(env, "customers", "create", "--key", "acme", "--name", "Acme", "--subject", "acme-api")
        pushed = prompts([("o1", old, 5), ("r1", recent, 5)])
        assert cli(env, "events", "ingest", "-", stdin=pushed)[0] == 0
        assert cli(env, "reconcile")[0] == 0
        # One hour 30 hours back and one 2 hours back each get an event not pushed yet.
        late = prompts([("o2", old + timedelta(minutes=5), 2), ("r2", recent, 3)])
        assert cli(env, "events", "ingest", "-", stdin=late)[0] == 0

        def gaps(*args: str) -> list[tuple[str, int]]:
            code, out, err = cli(env, "usage", "verify", "--json", *args)
            assert code == 1, err
            found = json.loads(out)["differences"]
            return [(d["from"], d["local"] - d["ledgerDelivered"]) for d in found]

        both = [("2026-03-09T06:00:00Z", 2), ("2026-03-10T10:00:00Z", 3)]
        assert gaps() == both  # the default: 7 days back
        assert gaps("--since", "48h") == both
        assert gaps("--since", "24h") == both[1:]
        assert gaps("--since", "2026-03-09T07:00:00Z") == both[1:]
        assert gaps("--since", "2026-03-09T06:59:59Z") == both  # that hour ends after it
        assert gaps("--since", "2d", "--chunk-size", "1") == both


def test_verify_option_mistakes_are_one_line_errors(env: dict[str, str]) -> None:
    mistakes = {
        ("--since", "yesterday"): "Invalid value for --since: 'yesterday' is not an RFC 3339 time "
        "(2024-05-01T00:00:00Z), a date (2024-05-01) or a duration (7d, 48h)",
        ("--since", "7d", "--from", "2026-01-01"): "give --since or --from, not both",
        ("--since", "2026-01-01T00:00:00"): "--since: '2026-01-01T00:00:00' has no time zone",
        ("--since", "2h", "--to", "2026-01-01", "--from", "x"): "--since or --from, not both",
        ("--chunk-size", "0"): "Invalid value for --chunk-size: 0 is not between 1 and 10000",
        ("--chunk-size", "10001"): "--chunk-size: 10001 is not between 1 and 10000",
        ("--chunk-size", "many"): "--chunk-size",
    }
    for args, message in mistakes.items():
        code, _, err = cli(env, "usage", "verify", *args)
        errors = [line for line in err.splitlines() if line.startswith("Error:")]
        assert code == 2 and len(errors) == 1 and message in errors[0], (args, err)
        assert "Traceback" not in err
