"""Stripe's customer object and the engine's records, both ways (pure): a listed page or a
retrieved customer read as an External, and a Desired's state written as create or update
parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

from metersync.stripe_facts import CUSTOMER_ADDRESS_FIELDS
from metersync.sync.model import Change, External
from metersync.sync.ports import ARCHIVED_KEY, MANAGED_KEY


# A list page as the engine reads it: msgspec decodes the JSON straight into these and skips
# every other field, several times cheaper than json.loads and dicts over 1,000 pages.
class _ListedAddress(msgspec.Struct):
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None


class _ListedCustomer(msgspec.Struct):
    id: str
    created: int = 0
    name: str | None = None
    email: str | None = None
    description: str | None = None
    phone: str | None = None
    address: _ListedAddress | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class _CustomerPage(msgspec.Struct):
    data: list[_ListedCustomer]
    has_more: bool = False


decode_page = msgspec.json.Decoder(_CustomerPage).decode


def external(customer: Mapping[str, Any]) -> External:
    metadata = dict(customer.get("metadata") or {})
    address = customer.get("address")
    return External(
        id=customer["id"],
        key=metadata.get(MANAGED_KEY),
        fields={
            "name": customer.get("name"),
            "email": customer.get("email"),
            "description": customer.get("description"),
            "phone": customer.get("phone"),
            "address": {f: address.get(f) for f in CUSTOMER_ADDRESS_FIELDS} if address else None,
        },
        metadata=metadata,
        created=int(customer.get("created") or 0),
        archived=ARCHIVED_KEY in metadata,
    )


def listed(customer: _ListedCustomer) -> External:
    """The same record as external() makes of a full customer object."""
    metadata = customer.metadata
    address = customer.address
    return External(
        id=customer.id,
        key=metadata.get(MANAGED_KEY),
        fields={
            "name": customer.name,
            "email": customer.email,
            "description": customer.description,
            "phone": customer.phone,
            "address": {
                "line1": address.line1,
                "line2": address.line2,
                "city": address.city,
                "state": address.state,
                "postal_code": address.postal_code,
                "country": address.country,
            }
            if address
            else None,
        },
        metadata=metadata,
        created=customer.created,
        archived=ARCHIVED_KEY in metadata,
    )


def create_params(state: Mapping[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, value in state["fields"].items():
        if name == "address":
            if value:
                params["address"] = {k: v for k, v in value.items() if v}
        elif value is not None and value != "":
            params[name] = value
    params["metadata"] = dict(state["metadata"])
    return params


def update_params(changes: tuple[Change, ...], state: Mapping[str, Any]) -> dict[str, Any]:
    """Only what changed; "" unsets (Stripe's convention), for fields and metadata keys alike."""
    params: dict[str, Any] = {}
    metadata: dict[str, str] = {}
    for change in changes:
        if change.field.startswith("metadata."):
            metadata[change.field.removeprefix("metadata.")] = change.after or ""
        elif change.field == "address":
            address = state["fields"].get("address")
            params["address"] = (
                {f: (address or {}).get(f) or "" for f in CUSTOMER_ADDRESS_FIELDS}
                if address
                else ""
            )
        else:
            params[change.field] = "" if change.after is None else change.after
    if metadata:
        params["metadata"] = metadata
    return params
