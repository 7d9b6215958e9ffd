"""`POST /crm/v3/objects/{objectType}/search`: filter groups over an eventually consistent index.

Search reads what the index held `search_lag_s` ago (ObjectStore.visible_to_search): a record
written since then is missing, or shows its previous properties, exactly as a client that
searches right after writing meets it on HubSpot. Groups are ORed, filters in a group ANDed.
Results come in id order (`sorts` is accepted and ignored); free-text `query` is not emulated.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from metersync.testing._hubspot_call import HandlerResult, HubSpotCall, body_object
from metersync.testing._hubspot_errors import invalid_request
from metersync.testing._hubspot_properties import comparable
from metersync.testing._hubspot_store import CrmRecord, ObjectStore, SearchView

# HubSpot's documented search limits.
MAX_GROUPS, MAX_FILTERS_PER_GROUP, MAX_FILTERS = 5, 6, 18
MAX_LIMIT, MAX_RESULTS = 200, 10_000

Value = float | str
Test = Callable[[Value | None], bool]  # None: the record has no value for the property


def search(call: HubSpotCall) -> HandlerResult:
    store = call.store()
    body = body_object(call)
    if body.get("query"):
        raise invalid_request("The emulator does not support free-text search ('query').")
    tests = _filter_groups(store, body.get("filterGroups") or [])
    limit = _int_field(body, "limit", 10)
    offset = _int_field(body, "after", 0)
    if not 1 <= limit <= MAX_LIMIT:
        raise invalid_request(f"limit must be between 1 and {MAX_LIMIT}; got {limit}.")
    if offset + limit > MAX_RESULTS:
        raise invalid_request(f"The search API returns the first {MAX_RESULTS} results only.")
    wanted = body.get("properties") or None
    matches = [
        (record, view)
        for record, view in store.visible_to_search()
        if _matches_any(store, view, tests)
    ]
    page = [_result(store, record, view, wanted) for record, view in matches[offset:][:limit]]
    answer: dict[str, Any] = {"total": len(matches), "results": page}
    if offset + limit < len(matches):
        after = str(offset + limit)
        answer["paging"] = {"next": {"after": after, "link": f"?after={after}"}}
    return 200, answer


def _int_field(body: dict[str, Any], name: str, default: int) -> int:
    raw = body.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except (TypeError, ValueError):
        raise invalid_request(f"Invalid value for '{name}': {raw!r}") from None


def _result(
    store: ObjectStore, record: CrmRecord, view: SearchView, wanted: list[str] | None
) -> dict[str, Any]:
    assert view.properties is not None
    return {
        "id": record.id,
        "properties": store.select(view.properties, wanted),
        "createdAt": record.created_at,
        "updatedAt": view.updated_at,
        "archived": False,
    }


# -- filters -------------------------------------------------------------------------------------

FilterGroups = list[list[tuple[str, Test]]]


def _filter_groups(store: ObjectStore, groups: Any) -> FilterGroups:
    if not isinstance(groups, list) or len(groups) > MAX_GROUPS:
        raise invalid_request(f"filterGroups must be a list of at most {MAX_GROUPS} groups.")
    parsed: FilterGroups = []
    for group in groups:
        filters = group.get("filters") if isinstance(group, dict) else None
        if not isinstance(filters, list) or len(filters) > MAX_FILTERS_PER_GROUP:
            raise invalid_request(
                f"Each filter group needs 'filters', at most {MAX_FILTERS_PER_GROUP} of them."
            )
        parsed.append([_filter(store, f) for f in filters])
    if sum(len(group) for group in parsed) > MAX_FILTERS:
        raise invalid_request(f"A search takes at most {MAX_FILTERS} filters in all.")
    return parsed


def _matches_any(store: ObjectStore, view: SearchView, groups: FilterGroups) -> bool:
    if not groups:
        return True
    assert view.properties is not None
    properties = view.properties
    return any(
        all(test(_comparable(store, name, properties.get(name))) for name, test in group)
        for group in groups
    )


def _comparable(store: ObjectStore, name: str, value: str | None) -> Value | None:
    if value is None:
        return None
    try:
        return comparable(store.properties[name], value)
    except ValueError:
        return value.lower()  # stored before a PATCH changed the property's type


def _filter(store: ObjectStore, spec: Any) -> tuple[str, Test]:
    if not isinstance(spec, dict):
        raise invalid_request("Each filter must be an object.")
    name, operator = spec.get("propertyName"), str(spec.get("operator", "EQ"))
    if not isinstance(name, str) or name not in store.properties:
        raise invalid_request(f"Property {name!r} does not exist; it cannot be filtered on.")
    definition = store.properties[name]

    def one(raw: Any) -> Value:
        try:
            return comparable(definition, str(raw).lower() if isinstance(raw, bool) else str(raw))
        except ValueError:
            raise invalid_request(f"{raw!r} is not a valid value for {name}.") from None

    def value(key: str) -> Value:
        if spec.get(key) is None:
            raise invalid_request(f"Operator {operator} needs '{key}'.")
        return one(spec[key])

    def values() -> set[Value]:
        if not isinstance(spec.get("values"), list):
            raise invalid_request(f"Operator {operator} needs 'values' (a list).")
        return {one(raw) for raw in spec["values"]}

    return name, _test(operator, value, values)


_COMPARISONS: dict[str, Callable[[Value, Value], bool]] = {
    "EQ": lambda a, b: a == b,
    "LT": lambda a, b: a != b and _ordered(a, b),
    "LTE": lambda a, b: _ordered(a, b),
    "GT": lambda a, b: a != b and _ordered(b, a),
    "GTE": lambda a, b: _ordered(b, a),
}


def _test(operator: str, value: Callable[[str], Value], values: Callable[[], set[Value]]) -> Test:
    """The test a filter applies to one record's value (None when the record has none)."""
    if operator == "HAS_PROPERTY":
        return lambda v: v is not None
    if operator == "NOT_HAS_PROPERTY":
        return lambda v: v is None
    if operator == "IN":
        wanted = values()
        return lambda v: v is not None and v in wanted
    if operator == "NOT_IN":
        unwanted = values()
        return lambda v: v is None or v not in unwanted
    if operator == "NEQ":
        other = value("value")
        return lambda v: v is None or v != other
    if operator == "BETWEEN":
        low, high = value("value"), value("highValue")
        return lambda v: v is not None and _ordered(low, v, high)
    if operator in _COMPARISONS:
        compare, target = _COMPARISONS[operator], value("value")
        return lambda v: v is not None and compare(v, target)
    raise invalid_request(f"Operator {operator} is not supported by the emulator.")


def _ordered(*values: Value) -> bool:
    """True when `values` ascend; values of different kinds (text and number) never do."""
    if len({type(v) for v in values}) > 1:
        return False
    return all(a <= b for a, b in itertools.pairwise(values))  # type: ignore[operator]
