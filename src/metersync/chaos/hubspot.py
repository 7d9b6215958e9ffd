"""Convergence for the HubSpot target: what the crash and fault tests (and bench/hubspot.py)
check after killing or disturbing a sync.

    differences = hubspot_converged(catalog, hubspot)   # [] when HubSpot matches the catalog
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metersync.catalog import Catalog
from metersync.sync.ports import MANAGED_KEY
from metersync.targets.hubspot import EMAIL, STRIPE_ID
from metersync.testing.emulator import StripeEmulator
from metersync.testing.hubspot import HubSpotEmulator

_FIELDS = {"name": "name", EMAIL: "primary_email", "description": "description"}


def hubspot_converged(
    catalog: Catalog, hubspot: HubSpotEmulator, *, stripe: StripeEmulator | None = None
) -> list[str]:
    """Every difference, in words. Converged: exactly one live company per live customer, with
    its name, email and description, and (given the Stripe emulator) the id of its one Stripe
    customer; no live company for a deleted customer (HubSpot policy `delete` archives it)."""
    by_key: dict[str, list[Mapping[str, Any]]] = {}
    for company in hubspot.companies():
        key = (company.get("properties") or {}).get(MANAGED_KEY)
        if key:
            by_key.setdefault(key, []).append(company)
    stripe_ids: dict[str, str] = {}
    if stripe is not None:
        for record in stripe.customers():
            key = (record.get("metadata") or {}).get(MANAGED_KEY)
            if key:
                stripe_ids[key] = record["id"]
    problems: list[str] = []
    for customer in catalog.list_customers(include_deleted=True):
        found = by_key.pop(customer.key, [])
        if customer.is_deleted:
            if found:
                problems.append(f"{customer.key}: deleted locally, still a live company")
            continue
        if len(found) != 1:
            problems.append(f"{customer.key}: {len(found)} companies, expected 1")
            continue
        properties = found[0].get("properties") or {}
        for prop, attribute in _FIELDS.items():
            want = getattr(customer, attribute) or None
            have = properties.get(prop) or None
            if have != want:
                problems.append(f"{customer.key}: {prop} is {have!r}, expected {want!r}")
        if stripe is not None and (properties.get(STRIPE_ID) or None) != stripe_ids.get(
            customer.key
        ):
            problems.append(
                f"{customer.key}: {STRIPE_ID} is {properties.get(STRIPE_ID)!r}, expected "
                f"{stripe_ids.get(customer.key)!r}"
            )
    for key, extra in by_key.items():
        problems.append(f"{key}: {len(extra)} live company(ies) but unknown locally")
    return problems
