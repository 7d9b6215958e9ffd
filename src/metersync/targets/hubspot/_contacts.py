"""Contacts for companies: a contact upserted per primary email and associated with its
company (contacts on)."""

from __future__ import annotations

from collections.abc import Sequence

from metersync.targets.hubspot._errors import HubSpotError, no_answer, record_errors
from metersync.targets.hubspot._http import ASSOCIATE, CONTACTS, HubSpotApi


async def associate_contacts(
    api: HubSpotApi, pairs: Sequence[tuple[str | None, str]]
) -> dict[str, BaseException]:
    """Upsert a contact per email and associate it with its company. Returns the errors by
    company id: that company's action fails and is retried (both calls are idempotent)."""
    # HubSpot keeps emails in lower case: two spellings of one address are one contact
    # (and the same id twice in a batch would fail the whole request).
    wanted = [(e.lower(), c) for e, c in pairs if e]
    if not wanted:
        return {}
    emails = sorted({e for e, _ in wanted})
    inputs = [
        # The trace id: a refused address fails alone (207), not the whole batch.
        {"idProperty": "email", "id": e, "properties": {"email": e}, "objectWriteTraceId": e}
        for e in emails
    ]
    try:
        answer = await api.request("POST", f"{CONTACTS}/batch/upsert", json={"inputs": inputs})
    except HubSpotError as exc:
        return {c: exc for _, c in wanted}
    contact_ids = {
        str(r.get("properties", {}).get("email", "")).lower(): str(r["id"])
        for r in answer.get("results", [])
    }
    errors = record_errors(answer)
    failed: dict[str, BaseException] = {}
    links = []
    for email, company in wanted:
        contact = contact_ids.get(str(email).lower())
        if contact is None:
            failed[company] = errors.get(str(email), no_answer(f"contact {email}"))
        else:
            links.append({"from": {"id": company}, "to": {"id": contact}})
    if links:
        try:
            associated = await api.request("POST", ASSOCIATE, json={"inputs": links})
        except HubSpotError as exc:
            return {**failed, **{link["from"]["id"]: exc for link in links}}
        # An association error names both ends; a company fails only when its own pair is
        # named (a contact id may equal some other company's id).
        refused = record_errors(associated)
        for link in links:
            company, contact = link["from"]["id"], link["to"]["id"]
            if company in refused and contact in refused:
                failed[company] = refused[company]
    return failed
