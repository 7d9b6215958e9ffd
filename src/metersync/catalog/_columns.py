"""A customer input (CustomerCreate, CustomerUpdate) as the customer row's columns."""

from __future__ import annotations

from typing import Any

from metersync.catalog.schemas import CustomerCreate, CustomerUpdate
from metersync.store import CustomerRow

# Customer columns set from a CustomerCreate / CustomerUpdate, by the input field they come from.
ADDRESS_COLUMNS = {
    "country": "address_country",
    "postal_code": "address_postal_code",
    "state": "address_state",
    "city": "address_city",
    "line1": "address_line1",
    "line2": "address_line2",
    "phone_number": "address_phone_number",
}
SCALAR_COLUMNS = {
    "name": "name",
    "description": "description",
    "primary_email": "primary_email",
    "currency": "currency",
    "metadata": "meta",
}


def replacing(create: CustomerCreate) -> CustomerUpdate:
    """A whole record as an update that sets every field, so left-out fields are cleared."""
    # model_dump writes every field, None included, so every field (and every address field)
    # counts as given and is replaced.
    return CustomerUpdate.model_validate(create.model_dump(exclude={"key", "deleted_at"}))


def apply_update(row: CustomerRow, update: CustomerUpdate) -> bool:
    """Set the columns the update gives; returns whether any value changed."""
    given = update.given()
    values: dict[str, Any] = {}
    for field, column in SCALAR_COLUMNS.items():
        if field in given:
            value = getattr(update, field)
            values[column] = dict(value or {}) if field == "metadata" else value
    if "billing_address" in given:
        address = update.billing_address
        for field, column in ADDRESS_COLUMNS.items():
            if address is None:
                values[column] = None
            elif field in address.model_fields_set:
                values[column] = getattr(address, field)
    changed = False
    for column, value in values.items():
        if getattr(row, column) != value:
            setattr(row, column, value)
            changed = True
    return changed
