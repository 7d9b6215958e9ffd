"""Metersync's custom company properties in a portal: created once, in a `metersync` group, an
older version upgraded in place; checked once per process per portal."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any, ClassVar

from metersync.catalog.meters import Meter
from metersync.logs import get_logger
from metersync.sync.ports import MANAGED_KEY, ErrorKind
from metersync.targets.hubspot._errors import MISSING_PROPERTY, HubSpotError
from metersync.targets.hubspot._http import PROPERTIES, HubSpotApi
from metersync.targets.hubspot._properties import GROUP, SCHEMA_VERSION, property_definitions

_log = get_logger("metersync.targets.hubspot")


class PropertyCheck:
    """The properties of one portal (by API base and token digest) under the current schema."""

    # Portals (by API base and token digest) whose properties this process has checked under
    # the current schema: the service builds a target per job, and checks once.
    _checked: ClassVar[set[tuple[str, str, tuple[str, ...]]]] = set()

    def __init__(
        self,
        api: HubSpotApi,
        meters: Sequence[Meter],
        features: Sequence[str] = (),
        *,
        api_base: str,
        token: str,
    ):
        self._api = api
        self._meters = meters
        self._features = features
        self._portal = (
            api_base,
            hashlib.sha256(token.encode()).hexdigest(),
            tuple(d["name"] for d in self._wanted()),
        )
        self._lock = asyncio.Lock()

    async def ready(self) -> None:
        """Create or upgrade the custom properties, once per process."""
        if self._portal in self._checked:
            return
        async with self._lock:
            if self._portal not in self._checked:
                await self.ensure()
                self._checked.add(self._portal)

    def names_a_missing_property(self, error: HubSpotError) -> bool:
        missing = MISSING_PROPERTY.findall(str(error))
        return bool(missing) and bool(set(missing) & set(self._portal[2]))

    def forget(self) -> None:
        """The next `ready` checks the properties again."""
        self._checked.discard(self._portal)

    async def ensure(self) -> dict[str, int]:
        existing = {
            p["name"]: p for p in (await self._api.request("GET", PROPERTIES)).get("results", [])
        }
        wanted = self._wanted()
        missing = [d for d in wanted if d["name"] not in existing]
        stale = [
            d
            for d in wanted
            if d["name"] in existing
            and not str(existing[d["name"]].get("description", "")).endswith(f"[{SCHEMA_VERSION}]")
        ]
        key_property = existing.get(MANAGED_KEY)
        if key_property is not None and not key_property.get("hasUniqueValue"):
            raise HubSpotError(
                ErrorKind.FATAL,
                f"the company property {MANAGED_KEY} exists without unique values, and a "
                "property's uniqueness cannot be changed: delete or rename it in HubSpot",
            )
        if missing:
            await self._ensure_group()
            await self._api.request("POST", f"{PROPERTIES}/batch/create", json={"inputs": missing})
        for definition in stale:
            patch = {k: v for k, v in definition.items() if k not in ("name", "hasUniqueValue")}
            await self._api.request("PATCH", f"{PROPERTIES}/{definition['name']}", json=patch)
        if missing or stale:
            _log.info("hubspot properties", created=len(missing), upgraded=len(stale))
        return {"created": len(missing), "upgraded": len(stale)}

    def _wanted(self) -> list[dict[str, Any]]:
        return property_definitions(self._meters, self._features)

    async def _ensure_group(self) -> None:
        try:
            await self._api.request(
                "POST", f"{PROPERTIES}/groups", json={"name": GROUP, "label": "metersync"}
            )
        except HubSpotError as exc:
            if exc.status != 409:
                raise
