"""The demo behind `make demo`: the whole customer sync against the bundled Stripe emulator.

It starts the emulator in this process, then drives the real `metersync` command against it,
as you would against Stripe (see README: "Against a real Stripe test key").
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
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
        metersync("status", env=env)
        calls = emulator.stats()["totals"]
        print(f"\nRequests the emulator answered, by status: {calls}")
        print(f"Database kept in {DEMO / 'metersync.db'}; the emulator stops with this demo.")


if __name__ == "__main__":
    main()
