"""The properties API: `/crm/v3/properties/{objectType}` (definitions and groups)."""

from __future__ import annotations

from typing import Any

from metersync.testing._hubspot_call import HandlerResult, HubSpotCall, batch_answer, body_object
from metersync.testing._hubspot_errors import HubSpotError, RecordError
from metersync.testing._hubspot_properties import (
    group_from_spec,
    now_iso,
    patched_property,
    property_from_spec,
)
from metersync.testing._hubspot_store import ObjectStore


def already_exists(name: str) -> HubSpotError:
    return HubSpotError(
        409, f"Property named '{name}' already exists.", category="OBJECT_ALREADY_EXISTS"
    )


def list_properties(call: HubSpotCall) -> HandlerResult:
    store = call.store()
    # The emulator never archives a property, so archived=true lists none.
    archived = call.query_bool("archived")
    return 200, {"results": [p for p in store.properties.values() if p["archived"] == archived]}


def get_property(call: HubSpotCall) -> HandlerResult:
    return 200, _existing(call.store(), call.path_params["name"])


def create_property(call: HubSpotCall) -> HandlerResult:
    store = call.store()
    return 201, _create(store, body_object(call))


def batch_create_properties(call: HubSpotCall) -> HandlerResult:
    store = call.store()
    inputs = body_object(call).get("inputs")
    if not isinstance(inputs, list) or any(not isinstance(i, dict) for i in inputs):
        raise HubSpotError(400, "Invalid input JSON: 'inputs' must be a list of objects.")
    results: list[dict[str, Any]] = []
    errors: list[RecordError] = []
    for spec in inputs:
        try:
            results.append(_create(store, spec))
        except HubSpotError as exc:
            errors.append(RecordError(exc.message, [str(spec.get("name"))], category=exc.category))
    return batch_answer(call, results, errors, ok_status=201)


def update_property(call: HubSpotCall) -> HandlerResult:
    store = call.store()
    current = _existing(store, call.path_params["name"])
    updated = patched_property(current, body_object(call), store.groups, now_iso())
    store.properties[current["name"]] = updated
    return 200, updated


def list_groups(call: HubSpotCall) -> HandlerResult:
    return 200, {"results": list(call.store().groups.values())}


def create_group(call: HubSpotCall) -> HandlerResult:
    store = call.store()
    group = group_from_spec(body_object(call))
    if group["name"] in store.groups:
        raise HubSpotError(
            409,
            f"Property group named '{group['name']}' already exists.",
            category="OBJECT_ALREADY_EXISTS",
        )
    store.groups[group["name"]] = group
    return 201, group


def _create(store: ObjectStore, spec: dict[str, Any]) -> dict[str, Any]:
    if spec.get("name") in store.properties:
        raise already_exists(str(spec["name"]))
    definition = property_from_spec(spec, store.groups, now_iso())
    store.add_property(definition)
    return definition


def _existing(store: ObjectStore, name: str) -> dict[str, Any]:
    definition = store.properties.get(name)
    if definition is None:
        raise HubSpotError(
            404,
            f"Unable to find property {name} for object type {store.object_type}",
            category="OBJECT_NOT_FOUND",
        )
    return definition
