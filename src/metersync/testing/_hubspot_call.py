"""One API call as a HubSpot handler sees it, and what batch handlers share: reading `inputs`,
refusing duplicates, and answering 200 COMPLETE or 207 with per-input errors."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from metersync.testing._hubspot_config import HubSpotConfig
from metersync.testing._hubspot_errors import HubSpotError, RecordError, invalid_request
from metersync.testing._hubspot_properties import OBJECT_TYPES, as_text, now_iso
from metersync.testing._hubspot_store import ObjectStore, Portal

MAX_BATCH = 100
RecordPredicate = Callable[[dict[str, str]], bool]
HandlerResult = tuple[int, dict[str, Any] | None]  # None: no body (204)


@dataclass
class HubSpotCall:
    portal: Portal
    config: HubSpotConfig
    path_params: dict[str, str]
    query: dict[str, list[str]]
    body: Any
    base_url: str  # for paging links
    path: str
    rejects: dict[str, RecordPredicate] = field(default_factory=dict)  # by object type
    started_at: str = field(default_factory=now_iso)

    def store(self, param: str = "object_type") -> ObjectStore:
        object_type = self.path_params[param]
        if object_type not in OBJECT_TYPES:
            # HubSpot's answer for an object type it cannot resolve; the emulator knows two.
            raise invalid_request(f"Unable to infer object type from: {object_type}")
        return self.portal.store(object_type)

    def query_value(self, name: str) -> str | None:
        values = self.query.get(name)
        return values[-1] if values else None

    def query_list(self, name: str) -> list[str]:
        """A list parameter given as repeats (`a=1&a=2`), commas (`a=1,2`) or both."""
        return [v for raw in self.query.get(name, []) for v in raw.split(",") if v]

    def query_bool(self, name: str) -> bool:
        return (self.query_value(name) or "false").lower() == "true"

    def query_int(self, name: str, default: int, maximum: int) -> int:
        raw = self.query_value(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise invalid_request(f"Invalid value '{raw}' for query parameter '{name}'.") from None
        if not 1 <= value <= maximum:
            raise invalid_request(f"'{name}' must be between 1 and {maximum}; got {value}.")
        return value

    def is_rejected(self, object_type: str, properties: dict[str, Any]) -> bool:
        predicate = self.rejects.get(object_type)
        return predicate is not None and predicate({k: as_text(v) for k, v in properties.items()})


def body_object(call: HubSpotCall) -> dict[str, Any]:
    if not isinstance(call.body, dict):
        raise invalid_request("Invalid input JSON: the request body must be a JSON object.")
    return call.body


def batch_inputs(call: HubSpotCall) -> list[dict[str, Any]]:
    """The `inputs` of a batch request: a list of objects, at most 100."""
    inputs = body_object(call).get("inputs")
    if not isinstance(inputs, list) or any(not isinstance(i, dict) for i in inputs):
        raise invalid_request("Invalid input JSON: 'inputs' must be a list of objects.")
    if len(inputs) > MAX_BATCH:
        # HubSpot refuses the whole batch; the docs do not quote the message.
        raise invalid_request(
            f"Batch input size {len(inputs)} exceeds the maximum of {MAX_BATCH} inputs."
        )
    return inputs


def input_properties(item: dict[str, Any]) -> dict[str, Any]:
    properties = item.get("properties", {})
    if not isinstance(properties, dict):
        raise invalid_request("Invalid input JSON: 'properties' must be an object.")
    return properties


def refuse_duplicates(ids: list[str]) -> None:
    duplicates = sorted(i for i, count in Counter(ids).items() if count > 1)
    if duplicates:
        raise invalid_request(
            f"Duplicate IDs found in batch input: [{', '.join(duplicates)}]. IDs must be unique"
        )


def refuse_partial_without_trace_ids(
    call: HubSpotCall, inputs: list[dict[str, Any]], errors: list[RecordError]
) -> None:
    """With `multi_status_needs_trace_id`, a batch with a failed input fails whole (400, nothing
    written) unless every input carries an objectWriteTraceId, as on real HubSpot."""
    if not errors or not call.config.multi_status_needs_trace_id:
        return
    if all(item.get("objectWriteTraceId") for item in inputs):
        return
    first = errors[0]
    extra: dict[str, Any] = {"errors": first.details} if first.details else {}
    raise HubSpotError(400, first.message, category=first.category, **extra)


def trace_id(item: dict[str, Any]) -> str | None:
    value = item.get("objectWriteTraceId")
    return None if value is None else str(value)


def batch_answer(
    call: HubSpotCall,
    results: list[dict[str, Any]],
    errors: list[RecordError],
    *,
    ok_status: int = 200,
) -> HandlerResult:
    body: dict[str, Any] = {
        "status": "COMPLETE",
        "results": results,
        "startedAt": call.started_at,
        "completedAt": now_iso(),
    }
    if not errors:
        return ok_status, body
    body["numErrors"] = len(errors)
    body["errors"] = [error.entry() for error in errors]
    return 207, body
