"""The demo behind `make demo`: customer sync and usage to Stripe meters, against the bundled
Stripe emulator.

It starts the emulator in this process, then drives the real `metersync` command against it,
as you would against Stripe (see README: "Against a real Stripe test key").
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from metersync.testing import DEFAULT_TEST_KEY, StripeEmulator

ROOT = Path(__file__).resolve().parent.parent
DEMO = Path(os.environ.get("DEMO_DIR", ROOT / "demo"))


def metersync(*args: str, env: dict[str, str]) -> int:
    print(f"\n$ metersync {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "metersync", *args], env=env, check=False)
    if done.returncode:
        print(f"(exit code {done.returncode})", flush=True)
    return done.returncode


def show_stripe(emulator: StripeEmulator) -> None:
    print("\nWhat the Stripe emulator now holds:")
    for customer in sorted(
        emulator.customers(), key=lambda c: c["metadata"].get("metersync_key", "")
    ):
        key = customer["metadata"].get("metersync_key", "-")
        print(f"  {customer['id']}  {key:<12} {customer['name']!s:<24} {customer['email'] or ''}")


def write_events(path: Path) -> None:
    """A dozen prompt events over the last three hours (Stripe takes the last 35 days), one
    of them a duplicate and one invalid, as an application would send them."""
    now = datetime.now(UTC).replace(microsecond=0)
    events = []
    for i, (subject, tokens, model) in enumerate(
        [
            ("acme-department1", 120, "small"),
            ("acme-department1", 80, "large"),
            ("acme-department2", 45, "small"),
            ("globex-research", 300, "large"),
            ("globex-operations", 12, "small"),
            ("kong-air", 64, "small"),
            ("acme-department2", 33, "large"),
            ("globex-research", 150, "small"),
        ]
    ):
        events.append(
            {
                "specversion": "1.0",
                "id": f"evt-{i}",
                "source": "demo-app",
                "type": "prompt",
                "subject": subject,
                "time": (now - timedelta(minutes=20 * i)).isoformat().replace("+00:00", "Z"),
                "data": {"tokens": tokens, "model": model},
            }
        )
    events.append(dict(events[0]))  # sent twice: counted once
    events.append({**events[1], "id": "evt-bad", "data": {"tokens": "many"}})  # rejected
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def main() -> None:
    shutil.rmtree(DEMO, ignore_errors=True)
    DEMO.mkdir(parents=True)
    with StripeEmulator(latency_ms=20, jitter_ms=10, rate_limit=25) as emulator:
        env = {
            **os.environ,
            "METERSYNC_DATABASE_URL": f"sqlite:///{DEMO / 'metersync.db'}",
            "STRIPE_API_KEY": DEFAULT_TEST_KEY,
            "METERSYNC_STRIPE_API_BASE": emulator.url,
            "METERSYNC_LOG_FORMAT": "console",
            "METERSYNC_LOG_LEVEL": "warning",
        }
        print(f"Stripe emulator running at {emulator.url} (25 requests/s, 20±10 ms latency)")
        metersync("import", str(ROOT / "examples" / "catalog.json"), env=env)
        metersync("customers", "list", env=env)
        metersync("reconcile", "--dry-run", env=env)
        metersync("reconcile", env=env)
        show_stripe(emulator)
        metersync("customers", "update", "acme", "--name", "ACME Corporation", env=env)
        metersync("customers", "delete", "initech", env=env)
        metersync("reconcile", env=env)
        show_stripe(emulator)
        metersync("reconcile", "--full", env=env)

        print("\n-- usage to Stripe meters (examples/metersync.toml) --")
        env["METERSYNC_CONFIG"] = str(ROOT / "examples" / "metersync.toml")
        events = DEMO / "events.ndjson"
        write_events(events)
        metersync("meters", "ensure", env=env)
        metersync("events", "ingest", str(events), env=env)
        metersync("reconcile", "--only", "usage", env=env)
        metersync("usage", "show", "--customer", "acme", "--meter", "tokens", env=env)
        metersync("usage", "verify", env=env)

        print("\n-- an entitlement: acme's departments burn one allowance of tokens --")
        since = (datetime.now(UTC) - timedelta(hours=3)).replace(minute=0, second=0, microsecond=0)
        metersync("features", "create", "--key", "gpt_tokens", "--name", "GPT tokens",
                  "--meter", "tokens", env=env)  # fmt: skip
        metersync("entitlements", "create", "acme", "--feature", "gpt_tokens", "--type",
                  "metered", "--interval", "MONTH", "--anchor", since.isoformat(),
                  "--measure-from", since.isoformat(), "--issue", "1000", env=env)  # fmt: skip
        metersync("entitlements", "value", "acme", "gpt_tokens", env=env)
        metersync("status", env=env)
        calls = emulator.stats()["totals"]
        print(f"\nRequests the emulator answered, by status: {calls}")
        print(f"Database kept in {DEMO / 'metersync.db'}; the emulator stops with this demo.")


if __name__ == "__main__":
    main()
