"""Company writes gathered into batch requests.

The engine writes one record per action; `Batcher` gathers the actions in flight into requests
of up to 100 records, and a record that fails in a batch (207, `errors[]`) fails alone.

Exactly one company per customer without idempotency keys (HubSpot has none): companies are
written by `batch/upsert` with `idProperty=metersync_key`, a property with unique values, so a
create repeated after a crash updates the company it made instead of making another. Updates go
by HubSpot id (`batch/update`), so one deleted in HubSpot answers "not found" and the engine
recreates it by policy rather than an upsert silently doing so.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from metersync.mechanics.batching import Batcher
from metersync.sync.ports import MANAGED_KEY
from metersync.targets.hubspot._contacts import associate_contacts
from metersync.targets.hubspot._errors import no_answer, record_errors
from metersync.targets.hubspot._http import COMPANIES, HubSpotApi

BATCH_MAX = 100


@dataclass(frozen=True)
class Upsert:
    key: str
    properties: dict[str, str]
    email: str | None  # associate a contact with this email (contacts on)


@dataclass(frozen=True)
class Update:
    id: str
    properties: dict[str, str]
    email: str | None


class CompanyBatches:
    """Upserts, updates and archives of companies, each kind in its own batches."""

    def __init__(self, api: HubSpotApi, *, size: int, linger_s: float) -> None:
        self._api = api
        # A batch leaves when the limiter gives it a slot: records that arrive while it waits
        # ride along, so at the rate limit every request carries as many as it can.
        paced = api.limiter.acquire
        self._upserts: Batcher[Upsert, str] = Batcher(
            self._send_upserts, max_size=size, linger_s=linger_s, ready=paced
        )
        self._updates: Batcher[Update, None] = Batcher(
            self._send_updates, max_size=size, linger_s=linger_s, ready=paced
        )
        self._archives: Batcher[str, None] = Batcher(
            self._send_archives, max_size=size, linger_s=linger_s, ready=paced
        )

    async def upsert(self, upsert: Upsert) -> str:
        """The company's HubSpot id."""
        return await self._upserts.submit(upsert)

    async def update(self, update: Update) -> None:
        await self._updates.submit(update)

    async def archive(self, company_id: str) -> None:
        await self._archives.submit(company_id)

    async def _send_upserts(self, batch: Sequence[Upsert]) -> list[str | BaseException]:
        body = {
            "inputs": [
                {
                    "idProperty": MANAGED_KEY,
                    "id": u.key,
                    "properties": u.properties,
                    "objectWriteTraceId": u.key,
                }
                for u in batch
            ]
        }
        answer = await self._api.request("POST", f"{COMPANIES}/batch/upsert", json=body, paced=True)
        # Each result by the trace id it echoes (the key we sent), else by its key property.
        ids = {
            str(r.get("objectWriteTraceId") or r.get("properties", {}).get(MANAGED_KEY) or ""): str(
                r["id"]
            )
            for r in answer.get("results", [])
        }
        errors = record_errors(answer)
        results: list[str | BaseException] = [
            ids[u.key] if u.key in ids else errors.get(u.key, no_answer(u.key)) for u in batch
        ]
        linked = [(u.email, ids[u.key]) for u in batch if u.email and u.key in ids]
        failed = await associate_contacts(self._api, linked)
        return [
            failed.get(ids.get(u.key, ""), result) if isinstance(result, str) else result
            for u, result in zip(batch, results, strict=True)
        ]

    async def _send_updates(self, batch: Sequence[Update]) -> list[BaseException | None]:
        body = {
            "inputs": [
                {"id": u.id, "properties": u.properties, "objectWriteTraceId": u.id} for u in batch
            ]
        }
        answer = await self._api.request("POST", f"{COMPANIES}/batch/update", json=body, paced=True)
        done = {str(r["id"]) for r in answer.get("results", [])}
        errors = record_errors(answer)
        failed = await associate_contacts(
            self._api, [(u.email, u.id) for u in batch if u.email and u.id in done]
        )
        return [
            failed.get(u.id) if u.id in done else errors.get(u.id, no_answer(u.id)) for u in batch
        ]

    async def _send_archives(self, batch: Sequence[str]) -> list[BaseException | None]:
        # HubSpot answers 204 and ignores ids it does not hold: deleting twice is fine.
        await self._api.request(
            "POST",
            f"{COMPANIES}/batch/archive",
            json={"inputs": [{"id": i} for i in batch]},
            paced=True,
        )
        return [None for _ in batch]
