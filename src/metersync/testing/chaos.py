"""Crash testing: kill a sync at random moments, re-run it, and check the target converged.

Used by metersync's own tests and benchmarks; usable for yours:

    differences = converged(catalog, emulator)      # [] when Stripe matches the catalog
    kill_after(["metersync", "reconcile"], env, seconds=0.4)
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from typing import Any

from metersync.catalog import Catalog
from metersync.targets.stripe import ADDRESS_FIELDS, MANAGED_KEY, StripeTarget
from metersync.testing.emulator import StripeEmulator


def converged(
    catalog: Catalog,
    emulator: StripeEmulator,
    *,
    unmanaged_before: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[str]:
    """Every difference between the catalog and the emulator, in words; [] when converged.

    Converged means: exactly one live Stripe customer per live local key, holding the owned
    fields and metadata the catalog asks for; none for a deleted local key (delete policy
    `delete`); and every unmanaged customer exactly as it was (`unmanaged_before`, by id).
    """
    render = StripeTarget("sk_test_render").render
    live = {c["id"]: c for c in emulator.customers()}
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for record in live.values():
        key = (record.get("metadata") or {}).get(MANAGED_KEY)
        if key is not None:
            by_key.setdefault(key, []).append(record)
    problems = []
    for customer in catalog.list_customers(include_deleted=True):
        found = by_key.pop(customer.key, [])
        if customer.is_deleted:
            if found:
                problems.append(
                    f"{customer.key}: deleted locally, still in Stripe "
                    f"({', '.join(c['id'] for c in found)})"
                )
            continue
        if len(found) != 1:
            problems.append(f"{customer.key}: {len(found)} Stripe customers, expected 1")
            continue
        desired = render(customer)
        actual = found[0]
        for name, value in desired.fields.items():
            have = actual.get(name)
            if name == "address":
                have = {f: have.get(f) for f in ADDRESS_FIELDS} if have else None
                value = {f: v for f, v in (value or {}).items() if v} or None
                have = {f: v for f, v in (have or {}).items() if v} or None
            if (have or None) != (value or None):
                problems.append(f"{customer.key}: {name} is {have!r}, expected {value!r}")
        metadata = actual.get("metadata") or {}
        for name, value in desired.metadata.items():
            if metadata.get(name) != value:
                problems.append(
                    f"{customer.key}: metadata.{name} is {metadata.get(name)!r}, expected {value!r}"
                )
    for key, extra in by_key.items():
        problems.append(
            f"{key}: managed in Stripe ({', '.join(c['id'] for c in extra)}) but unknown locally"
        )
    for customer_id, before in (unmanaged_before or {}).items():
        if live.get(customer_id) != before:
            problems.append(f"unmanaged customer {customer_id} was changed or deleted")
    return problems


def unmanaged(emulator: StripeEmulator) -> dict[str, dict[str, Any]]:
    """Stripe customers metersync does not manage, by id: to prove they are never touched."""
    return {
        c["id"]: c for c in emulator.customers() if MANAGED_KEY not in (c.get("metadata") or {})
    }


def kill_after(
    command: Sequence[str], env: Mapping[str, str], seconds: float, *, cwd: str | None = None
) -> int | None:
    """Start `command`, SIGKILL it after `seconds` unless it ended first; its exit code, or
    None when it was killed."""
    process = subprocess.Popen(  # noqa: S603 - the caller's own command line
        list(command),
        env={**os.environ, **env},
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        code = process.poll()
        if code is not None:
            return code
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return None
