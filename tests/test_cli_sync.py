"""`metersync reconcile`, `status`, `customers link/unlink`: output and exit codes 0/1/2/3/4."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from metersync.cli import app
from metersync.store import Store
from metersync.store.lock import run_lock
from metersync.sync.ports import MANAGED_KEY
from metersync.testing import StripeEmulator

runner = CliRunner()


@pytest.fixture
def emulator() -> Iterator[StripeEmulator]:
    with StripeEmulator() as running:
        yield running


@pytest.fixture
def env(store: Store, database_url: str, emulator: StripeEmulator) -> dict[str, str]:
    return {
        "METERSYNC_DATABASE_URL": database_url,
        "STRIPE_API_KEY": "sk_test_cli",
        "METERSYNC_STRIPE_API_BASE": emulator.url,
        "METERSYNC_SYNC_RATE_LIMIT": "1000",
    }


def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = runner.invoke(app, list(args), env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


def seed(env: dict[str, str], count: int) -> None:
    for i in range(count):
        code, _, err = cli(env, "customers", "create", "--key", f"k{i}", "--name", f"K {i}")
        assert code == 0, err


def test_reconcile_dry_run_then_apply(env: dict[str, str], emulator: StripeEmulator) -> None:
    seed(env, 3)
    code, out, _ = cli(env, "reconcile", "--dry-run")
    assert code == 0 and "plan (incremental; 3 actions" in out and "dry run" in out
    assert emulator.customers() == []
    code, out, _ = cli(env, "reconcile", "--json")
    report = json.loads(out)
    assert code == 0 and report["summary"] == {"created": 3} and report["exitCode"] == 0
    assert [a["action"] for a in report["plan"]["actions"]] == ["create"] * 3
    assert len(emulator.customers()) == 3
    code, out, _ = cli(env, "reconcile", "--full", "--json")
    assert json.loads(out)["plan"]["counts"] == {"skip": 3}


def test_exit_1_when_items_are_blocked(env: dict[str, str]) -> None:
    cli(
        env,
        "customers",
        "create",
        "--key",
        "p",
        "--name",
        "P",
        "--phone",
        "+1 555 0100 0100 0100 0100",
    )
    code, out, _ = cli(env, "reconcile")
    assert code == 1
    assert "blocked" in out and "phone has" in out


def test_exit_2_without_a_stripe_key(env: dict[str, str]) -> None:
    env = {k: v for k, v in env.items() if k != "STRIPE_API_KEY"}
    code, _, err = cli(env, "reconcile")
    assert code == 2 and "stripe.api_key is not set" in err
    code, _, err = cli({**env, "STRIPE_API_KEY": "sk_test_x"}, "reconcile", "--only", "usage")
    assert code == 2 and "--only" in err


def test_exit_2_when_stripe_refuses_the_key(env: dict[str, str]) -> None:
    seed(env, 1)
    code, _, err = cli({**env, "STRIPE_API_KEY": "rk_live_notaccepted"}, "reconcile")
    assert code == 2 and "refused the run" in err


def test_exit_3_while_another_run_holds_the_lock(env: dict[str, str], store: Store) -> None:
    seed(env, 1)
    with run_lock(store):
        code, _, err = cli(env, "reconcile")
    assert code == 3 and "another metersync run holds" in err
    assert cli(env, "reconcile")[0] == 0


def test_reconcile_wait_waits_for_the_lock(env: dict[str, str], store: Store) -> None:
    seed(env, 1)
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with run_lock(store):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(10)
    code, _, err = cli(env, "reconcile", "--wait", "0.3")
    assert code == 3 and "(waited 0.3 s)" in err
    threading.Timer(0.5, release.set).start()
    code, _, err = cli(env, "reconcile", "--wait", "10")
    thread.join()
    assert code == 0, err


def test_exit_4_when_the_guard_trips(env: dict[str, str], emulator: StripeEmulator) -> None:
    seed(env, 6)
    cli(env, "reconcile")
    for i in range(3):
        cli(env, "customers", "delete", f"k{i}")
    code, _, err = cli(env, "reconcile")
    assert code == 4 and "mass-delete guard" in err and len(emulator.customers()) == 6
    code, _, _ = cli(env, "reconcile", "--allow-mass-delete")
    assert code == 0 and len(emulator.customers()) == 3


def test_status_shows_states_failures_and_runs(
    env: dict[str, str], emulator: StripeEmulator
) -> None:
    seed(env, 2)
    cli(env, "customers", "create", "--key", "bad", "--name", "B", "--meta", "x" * 41 + "=v")
    cli(env, "reconcile")
    code, out, _ = cli(env, "status", "--json")
    report = json.loads(out)
    assert code == 0
    assert report["links"]["customer"] == {"synced": 2, "pending": 1}
    assert report["failing"][0]["key"] == "bad"
    assert report["failing"][0]["lastError"].startswith("blocked: ")
    assert report["runs"]["lastTickAt"] and report["lag"]["changes"] == 0
    code, out, _ = cli(env, "status")
    assert code == 0 and "failing or blocked (1)" in out and "last tick:" in out


def test_link_and_unlink(env: dict[str, str], emulator: StripeEmulator) -> None:
    seed(env, 1)
    existing = emulator.client().v1.customers.create({"name": "Old"})
    code, out, _ = cli(env, "customers", "link", "k0", existing.id)
    assert code == 0 and f"linked to {existing.id}" in out
    cli(env, "reconcile")
    held = {c["id"]: c for c in emulator.customers()}
    assert held[existing.id]["metadata"][MANAGED_KEY] == "k0" and len(held) == 1
    code, _, err = cli(env, "customers", "link", "k0", "cus_nope")
    assert code == 2 and "already linked" in err
    code, out, _ = cli(env, "customers", "unlink", "k0")
    assert code == 0 and MANAGED_KEY not in emulator.customers()[0]["metadata"]
    code, _, err = cli(env, "customers", "unlink", "k0")
    assert code == 2 and "not linked" in err
