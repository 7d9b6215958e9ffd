"""The objects API (`/crm/v3/objects/{objectType}`: batch upsert, update, archive, list, read)
and the v4 default associations between companies and contacts.

Batch writes validate every input first and then apply the valid ones in input order, so the
answer lists exactly what was written: results for the inputs that succeeded, one error entry
per input that did not (207).
"""

from __future__ import annotations

from typing import Any

from metersync.testing._hubspot_call import (
    HandlerResult,
    HubSpotCall,
    batch_answer,
    batch_inputs,
    input_properties,
    refuse_duplicates,
    refuse_partial_without_trace_ids,
    trace_id,
)
from metersync.testing._hubspot_errors import (
    HubSpotError,
    RecordError,
    invalid_request,
    not_found,
)
from metersync.testing._hubspot_store import (
    CrmRecord,
    ObjectStore,
    record_error_for_missing,
)

# A rejected record looks like any record HubSpot refuses: a validation error of its own.
REJECTED_MESSAGE = "Property values were not valid: the record was refused (reject_records)."
# HubSpot's default (unlabelled) association type ids between companies and contacts.
DEFAULT_ASSOCIATION_TYPE = {("companies", "contacts"): 280, ("contacts", "companies"): 279}


# -- batch writes --------------------------------------------------------------------------------


def batch_upsert(call: HubSpotCall) -> HandlerResult:
    """Create or update by a unique property's value. An archived record no longer holds its
    value (see ObjectStore.archive), so upserting that value creates a new record."""
    store = call.store()
    inputs = batch_inputs(call)
    keys = [_upsert_key(store, item) for item in inputs]
    refuse_duplicates([value for _, value in keys])
    plans: list[tuple[CrmRecord | None, dict[str, str], dict[str, Any]]] = []
    errors: list[RecordError] = []
    claimed: dict[tuple[str, str], str] = {}
    for (id_property, value), item in zip(keys, inputs, strict=True):
        existing = store.find(id_property, value)
        # The input's id is the unique value; it wins over the same property in `properties`.
        changes = {**input_properties(item), id_property: value}
        try:
            values = _validated(call, store, changes, value, existing, claimed)
        except RecordError as exc:
            exc.trace_id = trace_id(item)
            errors.append(exc)
            continue
        plans.append((existing, values, item))
    refuse_partial_without_trace_ids(call, inputs, errors)
    results = []
    for existing, values, item in plans:
        if existing is None:
            results.append(_written(store.create(values), item, new=True))
        else:
            store.update(existing, values)
            results.append(_written(existing, item, new=False))
    return batch_answer(call, results, errors)


def batch_update(call: HubSpotCall) -> HandlerResult:
    store = call.store()
    inputs = batch_inputs(call)
    refuse_duplicates([str(item.get("id")) for item in inputs])
    plans: list[tuple[CrmRecord, dict[str, str], dict[str, Any]]] = []
    errors: list[RecordError] = []
    claimed: dict[tuple[str, str], str] = {}
    for item in inputs:
        record_id = str(item.get("id"))
        record = _target(store, item, record_id)
        try:
            if record is None:
                raise record_error_for_missing(store, record_id)
            changes = input_properties(item)
            values = _validated(call, store, changes, record_id, record, claimed)
        except RecordError as exc:
            exc.trace_id = trace_id(item)
            errors.append(exc)
            continue
        plans.append((record, values, item))
    refuse_partial_without_trace_ids(call, inputs, errors)
    results = []
    for record, values, item in plans:
        store.update(record, values)
        results.append(_written(record, item))
    return batch_answer(call, results, errors)


def batch_archive(call: HubSpotCall) -> HandlerResult:
    """204 whatever the ids: HubSpot ignores ids it does not know or has archived already."""
    store = call.store()
    for item in batch_inputs(call):
        record = store.get(str(item.get("id")))
        if record is not None:
            store.archive(record)
    return 204, None


def _upsert_key(store: ObjectStore, item: dict[str, Any]) -> tuple[str, str]:
    id_property, value = item.get("idProperty"), item.get("id")
    if not isinstance(id_property, str) or not id_property:
        raise invalid_request("Invalid input JSON: every input needs an 'idProperty'.")
    if value is None or str(value) == "":
        raise invalid_request("Invalid input JSON: every input needs an 'id'.")
    _require_unique(store, id_property)
    return id_property, str(value)


def _require_unique(store: ObjectStore, id_property: str) -> None:
    if id_property not in store.properties:
        raise invalid_request(f'Property "{id_property}" does not exist')
    if not store.is_unique(id_property):
        raise invalid_request(
            f"{id_property} is not a unique property; idProperty must name a property with "
            "hasUniqueValue: true."
        )


def _target(store: ObjectStore, item: dict[str, Any], record_id: str) -> CrmRecord | None:
    id_property = item.get("idProperty")
    if id_property:
        _require_unique(store, str(id_property))
        return store.find(str(id_property), record_id)
    return store.get(record_id)


def _validated(
    call: HubSpotCall,
    store: ObjectStore,
    changes: dict[str, Any],
    input_id: str,
    existing: CrmRecord | None,
    claimed: dict[tuple[str, str], str],
) -> dict[str, str]:
    if call.is_rejected(store.object_type, changes):
        raise RecordError(REJECTED_MESSAGE, [input_id])
    target = existing.id if existing is not None else None
    return store.validate(changes, ids=[input_id], target=target, claimed=claimed)


def _written(record: CrmRecord, item: dict[str, Any], *, new: bool | None = None) -> dict[str, Any]:
    result = record.as_json(dict(record.properties))
    if new is not None:
        result["new"] = new
    if trace_id(item) is not None:
        result["objectWriteTraceId"] = trace_id(item)
    return result


# -- reads ---------------------------------------------------------------------------------------


def list_objects(call: HubSpotCall) -> HandlerResult:
    store = call.store()
    limit = call.query_int("limit", default=10, maximum=100)
    after = _cursor(call.query_value("after"))
    wanted = call.query_list("properties")
    page: list[dict[str, Any]] = []
    for record in store.page(after, archived=call.query_bool("archived")):
        if len(page) == limit:
            link = f"{call.base_url}{call.path}?after={record.id}"
            return 200, {"results": page, "paging": {"next": {"after": record.id, "link": link}}}
        page.append(record.as_json(store.select(record.properties, wanted)))
    return 200, {"results": page}


def get_object(call: HubSpotCall) -> HandlerResult:
    store = call.store()
    key = call.path_params["object_id"]
    id_property = call.query_value("idProperty")
    archived = call.query_bool("archived")
    if id_property:
        _require_unique(store, id_property)
        record = _by_unique_value(store, id_property, key, archived=archived)
    else:
        record = store.get(key, archived=archived)
    if record is None:
        raise not_found("Object not found.  objectId are usually numeric.", key)
    return 200, record.as_json(store.select(record.properties, call.query_list("properties")))


def _by_unique_value(
    store: ObjectStore, id_property: str, value: str, *, archived: bool
) -> CrmRecord | None:
    if not archived:
        return store.find(id_property, value)
    # Archived records are out of the index (their values are free); a scan is fine for a read
    # this rare. The newest archived holder wins.
    holders = [
        r for r in store.records.values() if r.archived and r.properties.get(id_property) == value
    ]
    return holders[-1] if holders else None


def _cursor(after: str | None) -> int:
    if after is None or after == "":
        return 0
    try:
        return int(after)
    except ValueError:
        raise invalid_request(f"Invalid paging cursor 'after': {after}") from None


# -- associations --------------------------------------------------------------------------------


def associate_default(call: HubSpotCall) -> HandlerResult:
    """Companies ↔ contacts, either direction; associating a pair twice keeps one association."""
    from_store, to_store = call.store("from_type"), call.store("to_type")
    pair_type = (from_store.object_type, to_store.object_type)
    if pair_type not in DEFAULT_ASSOCIATION_TYPE:
        raise HubSpotError(
            400, f"The emulator associates companies and contacts only, not {pair_type}."
        )
    results, errors = [], []
    for item in batch_inputs(call):
        from_id, to_id = _endpoint_id(item, "from"), _endpoint_id(item, "to")
        missing = [
            f"{store.singular} {object_id}"
            for store, object_id in ((from_store, from_id), (to_store, to_id))
            if store.get(object_id) is None
        ]
        if missing:
            errors.append(
                RecordError(
                    f"No such object: {', '.join(missing)}.",
                    [from_id, to_id],
                    category="OBJECT_NOT_FOUND",
                )
            )
            continue
        pair = (from_id, to_id) if pair_type[0] == "companies" else (to_id, from_id)
        call.portal.associations.add(pair)
        results.append(_association(pair_type, from_id, to_id))
    return batch_answer(call, results, errors)


def _endpoint_id(item: dict[str, Any], side: str) -> str:
    end = item.get(side)
    if not isinstance(end, dict) or end.get("id") in (None, ""):
        raise invalid_request(f"Invalid input JSON: every input needs '{side}': {{'id': …}}.")
    return str(end["id"])


def _association(pair_type: tuple[str, str], from_id: str, to_id: str) -> dict[str, Any]:
    # The documented result of batch/associate/default (batch/create, labelled associations,
    # answers with fromObjectTypeId/fromObjectId/… instead; the emulator does not serve it).
    return {
        "from": {"id": from_id},
        "to": {"id": to_id},
        "associationSpec": {
            "associationCategory": "HUBSPOT_DEFINED",
            "associationTypeId": DEFAULT_ASSOCIATION_TYPE[pair_type],
        },
    }
