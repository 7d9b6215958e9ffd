"""The engine's records in HubSpot's terms and back: a rendered state as company properties,
a company HubSpot answers with as an `External`."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from metersync.sync.model import External
from metersync.sync.ports import ARCHIVED_KEY, MANAGED_KEY
from metersync.times import epoch_seconds_or_zero


def as_properties(state: Mapping[str, Any], *, clearing: bool) -> dict[str, str]:
    """A Desired.state() as HubSpot properties (all strings). `clearing`: an absent value is
    sent as "" (HubSpot's unset); a create leaves it out."""
    merged = {**state.get("fields", {}), **state.get("metadata", {})}
    out: dict[str, str] = {}
    for name, value in merged.items():
        if value is None or value == "":
            if clearing:
                out[name] = ""
            continue
        out[name] = str(value)
    return out


def external(company: Mapping[str, Any]) -> External:
    props: Mapping[str, Any] = company.get("properties") or {}
    key = props.get(MANAGED_KEY) or None
    metadata = {MANAGED_KEY: key} if key else {}
    archived_at = props.get(ARCHIVED_KEY) or None
    if archived_at:
        metadata[ARCHIVED_KEY] = archived_at
    fields = {
        name: (value if value != "" else None)
        for name, value in props.items()
        if name not in (MANAGED_KEY, ARCHIVED_KEY, "hs_object_id", "createdate")
        and name != "hs_lastmodifieddate"
    }
    return External(
        id=str(company["id"]),
        key=key,
        fields=fields,
        metadata=metadata,
        created=epoch_seconds_or_zero(company.get("createdAt")),
        archived=bool(archived_at),
    )
