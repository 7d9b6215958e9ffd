"""Reading typed parameters the way Stripe does: strings on the wire, checked per endpoint."""

from __future__ import annotations

from typing import Any

from metersync.testing._errors import invalid, missing_param, unknown_param

# Accepted everywhere; stripe-python may send `expand[]`.
_ALWAYS_ALLOWED = frozenset({"expand"})


def only(params: dict[str, Any], allowed: set[str] | frozenset[str], prefix: str = "") -> None:
    for name in params:
        if name not in allowed and name not in _ALWAYS_ALLOWED:
            raise unknown_param(prefix + name)


def text(
    params: dict[str, Any],
    name: str,
    *,
    required: bool = False,
    max_len: int | None = None,
    param: str | None = None,
) -> str | None:
    where = param or name
    if name not in params:
        if required:
            raise missing_param(where)
        return None
    value = params[name]
    if not isinstance(value, str):
        raise invalid(f"Invalid string: {where} must be a string.", param=where)
    if required and value == "":
        raise invalid(
            f"You passed an empty string for '{where}'. We assume empty values are an "
            "attempt to unset a parameter; however, this parameter cannot be unset.",
            param=where,
        )
    if max_len is not None and len(value) > max_len:
        raise invalid(f"Invalid {where}: must be at most {max_len} characters", param=where)
    return value


def integer(
    params: dict[str, Any],
    name: str,
    *,
    required: bool = False,
    minimum: int | None = None,
    maximum: int | None = None,
    param: str | None = None,
) -> int | None:
    where = param or name
    if name not in params:
        if required:
            raise missing_param(where)
        return None
    raw = params[name]
    if isinstance(raw, bool) or not isinstance(raw, int | str):
        raise invalid(f"Invalid integer: {raw!r}", param=where, code="parameter_invalid_integer")
    try:
        value = int(raw)
    except ValueError:
        raise invalid(
            f"Invalid integer: {raw}", param=where, code="parameter_invalid_integer"
        ) from None
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise invalid(f"Invalid {where}: must be {bounds}", param=where)
    return value


def obj(params: dict[str, Any], name: str, *, param: str | None = None) -> dict[str, Any] | None:
    """A nested object; "" (Stripe's way to unset it) comes back as {}."""
    where = param or name
    if name not in params:
        return None
    value = params[name]
    if value == "":
        return {}
    if not isinstance(value, dict):
        raise invalid(f"Invalid object: {where} must be an object (hash)", param=where)
    return value


def list_page(params: dict[str, Any]) -> tuple[int, str | None, str | None]:
    limit = integer(params, "limit", minimum=1, maximum=100)
    starting_after = text(params, "starting_after")
    ending_before = text(params, "ending_before")
    if starting_after and ending_before:
        raise invalid(
            "You may only specify one of these parameters: ending_before, starting_after.",
            param="ending_before",
        )
    return (10 if limit is None else limit), starting_after, ending_before


def paginate(
    ordered_ids: list[str],
    limit: int,
    starting_after: str | None,
    ending_before: str | None,
    *,
    exists: Any,
    kind: str,
) -> tuple[list[str], bool]:
    """Stripe list pagination over ids already in list order (newest first)."""
    if starting_after is not None:
        if not exists(starting_after):
            raise invalid(
                f"No such {kind}: '{starting_after}'",
                param="starting_after",
                code="resource_missing",
            )
        index = ordered_ids.index(starting_after) if starting_after in ordered_ids else -1
        tail = ordered_ids[index + 1 :]
        return tail[:limit], len(tail) > limit
    if ending_before is not None:
        if not exists(ending_before):
            raise invalid(
                f"No such {kind}: '{ending_before}'", param="ending_before", code="resource_missing"
            )
        index = ordered_ids.index(ending_before) if ending_before in ordered_ids else 0
        head = ordered_ids[:index]
        return head[-limit:], len(head) > limit
    return ordered_ids[:limit], len(ordered_ids) > limit


def list_object(data: list[dict[str, Any]], has_more: bool, url: str) -> dict[str, Any]:
    """Stripe's list envelope."""
    return {"object": "list", "data": data, "has_more": has_more, "url": url}
