"""Property definitions and property values: HubSpot's schema layer.

A definition is kept in the JSON shape the properties API returns. Values are kept as HubSpot
keeps them, as strings: numbers as their decimal text, booleans as "true"/"false", datetimes as
ISO 8601 with milliseconds and Z. An empty string clears a value (HubSpot's own convention).
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import Any

from metersync.testing._hubspot_errors import invalid_request, validation_problem

OBJECT_TYPES = ("companies", "contacts")

# The fieldTypes HubSpot accepts for each type (a "number" shown as a checkbox is refused).
FIELD_TYPES: dict[str, frozenset[str]] = {
    "string": frozenset({"text", "textarea", "phonenumber", "html", "file"}),
    "number": frozenset({"number"}),
    "date": frozenset({"date"}),
    "datetime": frozenset({"date"}),
    "enumeration": frozenset({"select", "radio", "checkbox", "booleancheckbox"}),
    "bool": frozenset({"booleancheckbox"}),
}
# Only single-line text and numbers can be made unique (HubSpot's rule for unique properties).
UNIQUE_CAPABLE_TYPES = frozenset({"string", "number"})
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
# What PATCH may change; name and hasUniqueValue are fixed once created.
PATCHABLE = frozenset(
    {"label", "description", "groupName", "type", "fieldType", "options", "displayOrder"}
    | {"hidden", "formField"}
)
_BOOL_OPTIONS = [
    {"label": "Yes", "value": "true", "displayOrder": 0, "hidden": False},
    {"label": "No", "value": "false", "displayOrder": 1, "hidden": False},
]


def iso(moment: datetime) -> str:
    """ISO 8601 in UTC with milliseconds and Z, as HubSpot writes timestamps."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def now_iso() -> str:
    return iso(datetime.now(UTC))


# -- definitions ---------------------------------------------------------------------------------


def _definition(
    spec: dict[str, Any], created_at: str, *, hubspot_defined: bool = False, read_only: bool = False
) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "name": spec["name"],
        "label": spec["label"],
        "type": spec["type"],
        "fieldType": spec["fieldType"],
        "description": spec.get("description", ""),
        "groupName": spec["groupName"],
        "options": spec.get("options") or (_BOOL_OPTIONS if spec["type"] == "bool" else []),
        "displayOrder": spec.get("displayOrder", -1),
        "calculated": False,
        "externalOptions": False,
        "hasUniqueValue": bool(spec.get("hasUniqueValue", False)),
        "hidden": bool(spec.get("hidden", False)),
        "formField": bool(spec.get("formField", False)),
        "modificationMetadata": {
            "archivable": not hubspot_defined,
            "readOnlyDefinition": hubspot_defined,
            "readOnlyValue": read_only,
        },
        "createdAt": created_at,
        "updatedAt": created_at,
        "archived": False,
    }
    if hubspot_defined:
        definition["hubspotDefined"] = True
    return definition


# (name, label, type, fieldType, read-only value): a working subset of HubSpot's default
# properties (it has hundreds), enough for records that carry a name, an address and a phone.
_TEXT, _NUMBER, _DATETIME = ("string", "text"), ("number", "number"), ("datetime", "date")
_ADDRESS = [
    ("address", "Street Address", *_TEXT),
    ("address2", "Street Address 2", *_TEXT),
    ("city", "City", *_TEXT),
    ("state", "State/Region", *_TEXT),
    ("zip", "Postal Code", *_TEXT),
    ("country", "Country/Region", *_TEXT),
    ("phone", "Phone Number", "string", "phonenumber"),
    ("website", "Website URL", *_TEXT),
]
_BUILT_IN: dict[str, list[tuple[str, str, str, str]]] = {
    "companies": [
        ("name", "Company name", *_TEXT),
        ("domain", "Company Domain Name", *_TEXT),
        ("description", "Description", "string", "textarea"),
        *_ADDRESS,
        ("numberofemployees", "Number of Employees", *_NUMBER),
        ("annualrevenue", "Annual Revenue", *_NUMBER),
        ("hs_lastmodifieddate", "Last Modified Date", *_DATETIME),
    ],
    "contacts": [
        ("email", "Email", *_TEXT),
        ("firstname", "First Name", *_TEXT),
        ("lastname", "Last Name", *_TEXT),
        ("company", "Company Name", *_TEXT),
        ("jobtitle", "Job Title", *_TEXT),
        *_ADDRESS,
        ("lastmodifieddate", "Last Modified Date", *_DATETIME),
    ],
}
_READ_ONLY = frozenset({"hs_object_id", "hs_lastmodifieddate", "lastmodifieddate"})


def built_in_properties(object_type: str, created_at: str) -> list[dict[str, Any]]:
    group = "companyinformation" if object_type == "companies" else "contactinformation"
    rows = [
        ("hs_object_id", "Record ID", *_NUMBER),
        ("createdate", "Create Date", *_DATETIME),
        *_BUILT_IN[object_type],
    ]
    return [
        _definition(
            {"name": name, "label": label, "type": kind, "fieldType": field, "groupName": group},
            created_at,
            hubspot_defined=True,
            read_only=name in _READ_ONLY,
        )
        for name, label, kind, field in rows
    ]


def default_groups(object_type: str) -> list[dict[str, Any]]:
    if object_type == "companies":
        name, label = "companyinformation", "Company information"
    else:
        name, label = "contactinformation", "Contact information"
    return [{"name": name, "label": label, "displayOrder": -1, "archived": False}]


def group_from_spec(spec: dict[str, Any]) -> dict[str, Any]:
    name, label = spec.get("name"), spec.get("label")
    if not isinstance(name, str) or not _NAME.match(name):
        raise invalid_request(f"Invalid property group name: {name!r}")
    if not isinstance(label, str) or not label:
        raise invalid_request("A property group needs a label.")
    return {
        "name": name,
        "label": label,
        "displayOrder": int(spec.get("displayOrder", -1)),
        "archived": False,
    }


def property_from_spec(
    spec: dict[str, Any], groups: dict[str, dict[str, Any]], created_at: str
) -> dict[str, Any]:
    """A new custom property from a create request; 400s for what HubSpot would refuse."""
    for required in ("name", "label", "type", "fieldType", "groupName"):
        if not isinstance(spec.get(required), str) or not spec[required]:
            raise invalid_request(f"Missing required field '{required}' for property create.")
    name = spec["name"]
    if not _NAME.match(name):
        raise invalid_request(
            f"Property name '{name}' is invalid: it must start with a lowercase letter and "
            "contain only lowercase letters, numbers and underscores."
        )
    _check_type(spec)
    if spec["groupName"] not in groups:
        raise invalid_request(f"Property group '{spec['groupName']}' does not exist.")
    if spec.get("hasUniqueValue") and spec["type"] not in UNIQUE_CAPABLE_TYPES:
        raise invalid_request(f"A property of type '{spec['type']}' cannot have unique values.")
    return _definition(spec, created_at)


def patched_property(
    current: dict[str, Any],
    changes: dict[str, Any],
    groups: dict[str, dict[str, Any]],
    updated_at: str,
) -> dict[str, Any]:
    if current.get("hubspotDefined"):
        raise invalid_request(f"Property '{current['name']}' is HubSpot-defined; it is read-only.")
    if "hasUniqueValue" in changes and bool(changes["hasUniqueValue"]) != current["hasUniqueValue"]:
        raise invalid_request("hasUniqueValue cannot be changed once a property exists.")
    unknown = sorted(set(changes) - PATCHABLE - {"name", "hasUniqueValue"})
    if unknown:
        raise invalid_request(f"Unrecognized field '{unknown[0]}' for a property update.")
    updated = {**current, **{k: v for k, v in changes.items() if k in PATCHABLE}}
    _check_type(updated)
    if updated["groupName"] not in groups:
        raise invalid_request(f"Property group '{updated['groupName']}' does not exist.")
    updated["updatedAt"] = updated_at
    return updated


def _check_type(spec: dict[str, Any]) -> None:
    kind, field_type = spec["type"], spec["fieldType"]
    if kind not in FIELD_TYPES:
        raise invalid_request(
            f"Invalid property type '{kind}'; one of {sorted(FIELD_TYPES)} is expected."
        )
    if field_type not in FIELD_TYPES[kind]:
        raise invalid_request(f"fieldType '{field_type}' is not valid for type '{kind}'.")
    options = spec.get("options") or []
    if not isinstance(options, list) or any(
        not isinstance(o, dict) or "label" not in o or "value" not in o for o in options
    ):
        raise invalid_request("options must be a list of {label, value} objects.")
    if kind == "enumeration" and not options:
        raise invalid_request("An enumeration property needs at least one option.")


# -- values --------------------------------------------------------------------------------------


class ValueProblem(Exception):
    """A value a property refuses; `problem` is HubSpot's validation result for it."""

    def __init__(self, problem: dict[str, Any]) -> None:
        super().__init__(problem["message"])
        self.problem = problem


def as_text(raw: Any) -> str:
    """JSON values as HubSpot stores them: null clears, true → "true", 17 → "17"."""
    if raw is None:
        return ""
    if isinstance(raw, bool):
        return "true" if raw else "false"
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw)


def coerce(definition: dict[str, Any], raw: Any) -> str:
    """The stored form of `raw` for this property, or ValueProblem."""
    value = as_text(raw)
    if value == "":
        return value
    name, kind = definition["name"], definition["type"]
    if kind == "number":
        return _number(name, value)
    if kind == "bool":
        if value.lower() not in ("true", "false"):
            raise _problem(name, "INVALID_BOOLEAN", f"{value} was not a valid boolean.", value)
        return value.lower()
    if kind in ("datetime", "date"):
        return _datetime(name, value)
    if kind == "enumeration":
        return _options(definition, value)
    return value


def _problem(name: str, code: str, message: str, value: str) -> ValueProblem:
    return ValueProblem(validation_problem(name, code, message, value))


def _number(name: str, value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        # HubSpot's code says INTEGER though it accepts decimals.
        raise _problem(name, "INVALID_INTEGER", f"{value} was not a valid number.", value)
    return value


def _datetime(name: str, value: str) -> str:
    """Epoch milliseconds or ISO 8601 in; ISO 8601 with milliseconds and Z out."""
    try:
        if value.lstrip("-").isdigit():
            return iso(datetime.fromtimestamp(int(value) / 1000, UTC))
        moment = datetime.fromisoformat(value)
    except (ValueError, OverflowError, OSError):
        raise _problem(name, "INVALID_DATE", f"{value} was not a valid date.", value) from None
    return iso(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _options(definition: dict[str, Any], value: str) -> str:
    allowed = [str(o["value"]) for o in definition["options"]]
    # A multiple checkboxes property takes several options joined by ";".
    chosen = value.split(";") if definition["fieldType"] == "checkbox" else [value]
    for option in chosen:
        if option not in allowed:
            raise _problem(
                definition["name"],
                "INVALID_OPTION",
                f"{option} was not one of the allowed options: [{', '.join(allowed)}]",
                value,
            )
    return value


def comparable(definition: dict[str, Any], value: str) -> float | str:
    """A value in the order search compares it: numbers and datetimes numerically, text without
    case (HubSpot's search index is case-insensitive for text)."""
    kind = definition["type"]
    if kind == "number":
        return float(value)
    if kind in ("datetime", "date"):
        return datetime.fromisoformat(_datetime(definition["name"], value)).timestamp()
    return value.lower()
