"""`/v1/customers`: create, retrieve, update, delete, list, search; Stripe's field limits."""

from __future__ import annotations

import base64
import copy
import time
from typing import Any

from metersync.testing import _params as p
from metersync.testing._errors import StripeApiError, invalid, no_such
from metersync.testing._routes import Call, HandlerResult, Route, route
from metersync.testing._search import parse_query
from metersync.testing._state import CustomerVersion, EmulatorState, now

NAME_MAX = 256
EMAIL_MAX = 512
PHONE_MAX = 20
METADATA_KEYS_MAX = 50
METADATA_KEY_MAX = 40
METADATA_VALUE_MAX = 500
ADDRESS_FIELDS = ("city", "country", "line1", "line2", "postal_code", "state")
_WRITABLE = {
    "address",
    "description",
    "email",
    "metadata",
    "name",
    "phone",
    "preferred_locales",
    "shipping",
    "tax_exempt",
    "balance",
    "invoice_prefix",
    "next_invoice_sequence",
    "business_name",
    "individual_name",
}
_LIST_PARAMS = {"limit", "starting_after", "ending_before", "email", "created", "test_clock"}
_SCALARS = {
    "name": NAME_MAX,
    "email": EMAIL_MAX,
    "phone": PHONE_MAX,
    # No description limit: none is among the Stripe facts we rely on, and an emulator stricter
    # than Stripe would report failures production never sees.
    "description": None,
}


def routes() -> list[Route]:
    return [
        route("POST", "/v1/customers", "customers.create", create, mutates=True),
        route("GET", "/v1/customers/search", "customers.search", search, endpoint_class="search"),
        route("GET", "/v1/customers", "customers.list", list_),
        route("GET", "/v1/customers/{id}", "customers.retrieve", retrieve),
        route("POST", "/v1/customers/{id}", "customers.update", update, mutates=True),
        route("DELETE", "/v1/customers/{id}", "customers.delete", delete, mutates=True),
    ]


def blank_customer(state: EmulatorState) -> dict[str, Any]:
    """A new customer with every field of Stripe's customer object (fixtures3.json)."""
    return {
        "id": state.new_id("cus_"),
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": now(),
        "currency": None,
        "default_source": None,
        "delinquent": False,
        "description": None,
        "discount": None,
        "email": None,
        "invoice_prefix": state.new_id("", 8).upper(),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": {},
        "name": None,
        "next_invoice_sequence": 1,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def create(call: Call) -> HandlerResult:
    p.only(call.params, _WRITABLE)
    customer = blank_customer(call.state)
    _apply(customer, call.params, creating=True)
    state = call.state
    state.customers[customer["id"]] = customer
    state.customer_order[customer["id"]] = state.next_counter()
    _index(call, customer)
    call.emitted.append({"type": "customer.created", "object": copy.deepcopy(customer)})
    return 200, customer


def retrieve(call: Call) -> HandlerResult:
    customer_id = call.path_params["id"]
    if customer_id in call.state.deleted_customers:
        return 200, {"id": customer_id, "object": "customer", "deleted": True}
    return 200, _live(call.state, customer_id)


def update(call: Call) -> HandlerResult:
    p.only(call.params, _WRITABLE)
    customer = _live(call.state, call.path_params["id"])
    before = copy.deepcopy(customer)
    staged = copy.deepcopy(customer)
    _apply(staged, call.params, creating=False)  # validate fully before changing anything
    customer.clear()
    customer.update(staged)
    _index(call, customer)
    previous = {k: before[k] for k in customer if before.get(k) != customer.get(k)}
    if previous:
        call.emitted.append(
            {
                "type": "customer.updated",
                "object": copy.deepcopy(customer),
                "previous_attributes": previous,
            }
        )
    return 200, customer


def delete(call: Call) -> HandlerResult:
    customer_id = call.path_params["id"]
    customer = _live(call.state, customer_id)
    del call.state.customers[customer_id]
    call.state.deleted_customers.add(customer_id)
    _index(call, None, customer_id=customer_id)
    call.emitted.append({"type": "customer.deleted", "object": copy.deepcopy(customer)})
    return 200, {"id": customer_id, "object": "customer", "deleted": True}


def list_(call: Call) -> HandlerResult:
    params = call.params
    p.only(params, _LIST_PARAMS)
    limit, starting_after, ending_before = p.list_page(params)
    email = p.text(params, "email")
    created = params.get("created")
    state = call.state
    ordered = sorted(state.customers, key=lambda cid: -state.customer_order[cid])
    if email is not None:
        ordered = [cid for cid in ordered if state.customers[cid]["email"] == email]
    if created is not None:
        ordered = [cid for cid in ordered if _created_matches(state.customers[cid], created)]
    page, has_more = p.paginate(
        ordered,
        limit,
        starting_after,
        ending_before,
        exists=lambda cid: cid in state.customers or cid in state.deleted_customers,
        kind="customer",
    )
    return 200, p.list_object([state.customers[cid] for cid in page], has_more, "/v1/customers")


def search(call: Call) -> HandlerResult:
    params = call.params
    p.only(params, {"query", "limit", "page"})
    query = p.text(params, "query", required=True)
    assert query is not None
    limit = p.integer(params, "limit", minimum=1, maximum=100) or 10
    offset = _page_offset(p.text(params, "page"))
    predicate = parse_query(query)
    visible = _searchable(call.state)
    hits = [c for c in visible if predicate(c)]
    hits.sort(key=lambda c: -call.state.customer_order.get(c["id"], 0))
    page = hits[offset : offset + limit]
    has_more = len(hits) > offset + limit
    return 200, {
        "object": "search_result",
        "data": page,
        "has_more": has_more,
        "next_page": _page_token(offset + limit) if has_more else None,
        "url": "/v1/customers/search",
    }


# -- helpers ------------------------------------------------------------------------------------


def _live(state: EmulatorState, customer_id: str) -> dict[str, Any]:
    customer = state.customers.get(customer_id)
    if customer is None:
        raise no_such("customer", customer_id)
    return customer


def _apply(customer: dict[str, Any], params: dict[str, Any], *, creating: bool) -> None:
    for name, max_len in _SCALARS.items():
        value = p.text(params, name, max_len=max_len)
        if value is not None:
            # "" unsets an optional field on update, and means "not set" on create.
            customer[name] = value or None
    if "address" in params:
        address = p.obj(params, "address")
        assert address is not None
        if not address:
            customer["address"] = None
        else:
            p.only(address, set(ADDRESS_FIELDS), prefix="address.")
            merged = dict(customer["address"] or dict.fromkeys(ADDRESS_FIELDS))
            for field in ADDRESS_FIELDS:
                value = p.text(address, field, max_len=200, param=f"address[{field}]")
                if value is not None:
                    merged[field] = value or None
            customer["address"] = merged
    if "metadata" in params:
        customer["metadata"] = _merged_metadata(customer["metadata"], params, creating=creating)
    if "preferred_locales" in params:
        locales = params["preferred_locales"]
        customer["preferred_locales"] = [] if locales == "" else list(locales)
    tax_exempt = p.text(params, "tax_exempt")
    if tax_exempt is not None:
        if tax_exempt not in ("none", "exempt", "reverse", ""):
            raise invalid(f"Invalid tax_exempt: {tax_exempt}", param="tax_exempt")
        customer["tax_exempt"] = tax_exempt or "none"
    balance = p.integer(params, "balance")
    if balance is not None:
        customer["balance"] = balance
    sequence = p.integer(params, "next_invoice_sequence", minimum=1)
    if sequence is not None:
        customer["next_invoice_sequence"] = sequence
    if "shipping" in params:
        shipping = p.obj(params, "shipping")
        customer["shipping"] = shipping or None


def _merged_metadata(
    current: dict[str, str], params: dict[str, Any], *, creating: bool
) -> dict[str, str]:
    given = p.obj(params, "metadata")
    assert given is not None
    if not given:
        return {}  # metadata="" unsets every key
    merged = {} if creating else dict(current)
    for key, value in given.items():
        if len(key) > METADATA_KEY_MAX:
            raise invalid(
                f"Metadata keys can have at most {METADATA_KEY_MAX} characters "
                f"(key {key!r} has {len(key)}).",
                param=f"metadata[{key}]",
            )
        if not isinstance(value, str):
            raise invalid(
                f"Metadata values must be strings (key {key!r}).", param=f"metadata[{key}]"
            )
        if len(value) > METADATA_VALUE_MAX:
            raise invalid(
                f"Metadata values can have at most {METADATA_VALUE_MAX} characters (key {key!r}).",
                param=f"metadata[{key}]",
            )
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > METADATA_KEYS_MAX:
        raise invalid(
            f"You can have at most {METADATA_KEYS_MAX} metadata keys (this request "
            f"would leave {len(merged)}).",
            param="metadata",
        )
    return merged


def _created_matches(customer: dict[str, Any], created: Any) -> bool:
    value = customer["created"]
    if isinstance(created, dict):
        checks = {"gt": value.__gt__, "gte": value.__ge__, "lt": value.__lt__, "lte": value.__le__}
        for op, bound in created.items():
            if op not in checks:
                raise invalid(f"Received unknown parameter: created[{op}]", param=f"created[{op}]")
            try:
                if not checks[op](int(bound)):
                    return False
            except ValueError:
                raise invalid(f"Invalid integer: {bound}", param=f"created[{op}]") from None
        return True
    try:
        return bool(value == int(created))
    except (TypeError, ValueError):
        raise invalid(f"Invalid integer: {created}", param="created") from None


def _index(call: Call, customer: dict[str, Any] | None, *, customer_id: str | None = None) -> None:
    """Search sees a write only `search_delay_s` later (Stripe: usually < 1 min, up to 1 h)."""
    delay = float(getattr(call.config, "search_delay_s", 0.0) or 0.0)
    key = customer["id"] if customer is not None else customer_id
    assert key is not None
    call.state.search_versions.setdefault(key, []).append(
        CustomerVersion(time.time() + delay, copy.deepcopy(customer) if customer else None)
    )


def _searchable(state: EmulatorState) -> list[dict[str, Any]]:
    moment = time.time()
    visible = []
    for versions in state.search_versions.values():
        current = None
        for version in versions:
            if version.visible_at <= moment:
                current = version
        if current is not None and current.snapshot is not None:
            visible.append(current.snapshot)
    return visible


def _page_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _page_offset(token: str | None) -> int:
    if not token:
        return 0
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind != "offset":
            raise ValueError(kind)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise StripeApiError(400, f"Invalid page token: {token}", param="page") from None
