"""`metersync customers …`"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from metersync.cli.context import app_context, name_cli_options, tombstone_hint, writable_catalog
from metersync.cli.options import (
    INCLUDE_DELETED_OPTION,
    JSON_OPTION,
    META_OPTION,
    command_group,
    parse_meta,
)
from metersync.cli.output import print_customer, print_customers, print_notes

if TYPE_CHECKING:  # the commands import what they use when they run: see metersync.cli
    from metersync.sync.ports import Target

T = TypeVar("T")

app = command_group("Customers: the entities that pay, each with its subjects.")

# Which option sets which OpenMeter field, so errors can name both.
FIELD_OPTIONS = {
    "key": "--key",
    "name": "--name",
    "description": "--description",
    "primaryEmail": "--email",
    "currency": "--currency",
    "metadata": "--meta",
    "usageAttribution.subjectKeys": "--subject",
    "billingAddress.country": "--country",
    "billingAddress.postalCode": "--postal-code",
    "billingAddress.state": "--state",
    "billingAddress.city": "--city",
    "billingAddress.line1": "--line1",
    "billingAddress.line2": "--line2",
    "billingAddress.phoneNumber": "--phone",
}

ADDRESS_OPTIONS = {
    "country": "country",
    "postal_code": "postalCode",
    "state": "state",
    "city": "city",
    "line1": "line1",
    "line2": "line2",
    "phone": "phoneNumber",
}


def _record(
    *,
    name: str | None,
    description: str | None,
    email: str | None,
    currency: str | None,
    subjects: list[str] | None,
    clear_subjects: bool,
    meta: list[str] | None,
    clear_meta: bool,
    address: dict[str, str | None],
) -> dict[str, Any]:
    """Only the options given become fields, so an update leaves the rest alone."""
    data: dict[str, Any] = {}
    for field, value in (
        ("name", name),
        ("description", description),
        ("primaryEmail", email),
        ("currency", currency),
    ):
        if value is not None:
            data[field] = value
    if subjects and clear_subjects:
        raise typer.BadParameter(
            "give either --subject or --clear-subjects", param_hint="--clear-subjects"
        )
    if subjects or clear_subjects:
        data["usageAttribution"] = {"subjectKeys": list(subjects or [])}
    metadata = parse_meta(meta)
    if metadata and clear_meta:
        raise typer.BadParameter("give either --meta or --clear-meta", param_hint="--clear-meta")
    if metadata is not None or clear_meta:
        data["metadata"] = metadata or {}
    given_address = {ADDRESS_OPTIONS[k]: v for k, v in address.items() if v is not None}
    if given_address:
        data["billingAddress"] = given_address
    return data


NAME = typer.Option(None, "--name", help="Display name (1–256 characters).")
DESCRIPTION = typer.Option(None, "--description", help="Free text (≤ 1024 characters).")
EMAIL = typer.Option(None, "--email", help="Primary billing email.")
CURRENCY = typer.Option(None, "--currency", help="ISO 4217 code, such as USD.")
SUBJECT = typer.Option(
    None,
    "--subject",
    help="A subject whose usage this customer pays for; "
    "repeat for more. Missing subjects are created.",
)
COUNTRY = typer.Option(None, "--country", help="Billing address: ISO 3166-1 alpha-2 country.")
POSTAL = typer.Option(None, "--postal-code", help="Billing address: postal code.")
STATE = typer.Option(None, "--state", help="Billing address: state or province.")
CITY = typer.Option(None, "--city", help="Billing address: city.")
LINE1 = typer.Option(None, "--line1", help="Billing address: first line.")
LINE2 = typer.Option(None, "--line2", help="Billing address: second line.")
PHONE = typer.Option(None, "--phone", help="Billing address: phone number.")


@app.command("create")
def create(
    ctx: typer.Context,
    key: str = typer.Option(..., "--key", help="The customer key (unique, immutable)."),
    name: str = typer.Option(..., "--name", help="Display name (1–256 characters)."),
    description: str | None = DESCRIPTION,
    email: str | None = EMAIL,
    currency: str | None = CURRENCY,
    subject: list[str] | None = SUBJECT,
    meta: list[str] | None = META_OPTION,
    country: str | None = COUNTRY,
    postal_code: str | None = POSTAL,
    state: str | None = STATE,
    city: str | None = CITY,
    line1: str | None = LINE1,
    line2: str | None = LINE2,
    phone: str | None = PHONE,
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a customer and attribute its subjects to it."""
    from metersync.catalog import CustomerCreate, parse

    name_cli_options(ctx, FIELD_OPTIONS)
    data = _record(
        name=name,
        description=description,
        email=email,
        currency=currency,
        subjects=subject,
        clear_subjects=False,
        meta=meta,
        clear_meta=False,
        address={
            "country": country,
            "postal_code": postal_code,
            "state": state,
            "city": city,
            "line1": line1,
            "line2": line2,
            "phone": phone,
        },
    )
    if not key.strip():
        # In a JSON body an empty key means "take the single subject's key"; on the command
        # line it is a mistake.
        raise typer.BadParameter("must not be empty", param_hint="--key")
    data["key"] = key
    result = writable_catalog(ctx).create_customer(parse(CustomerCreate, data))
    print_notes(result.notes)
    if not as_json:
        typer.echo(f"customer {key!r}: {result.outcome.value}", err=True)
    print_customer(result.record, as_json=as_json)


@app.command("update")
def update(
    ctx: typer.Context,
    key: str = typer.Argument(..., help="The customer to change."),
    name: str | None = NAME,
    description: str | None = DESCRIPTION,
    email: str | None = EMAIL,
    currency: str | None = CURRENCY,
    subject: list[str] | None = typer.Option(
        None, "--subject", help="Replaces the customer's subjects with these; repeat for more."
    ),
    clear_subjects: bool = typer.Option(False, "--clear-subjects", help="Detach every subject."),
    meta: list[str] | None = META_OPTION,
    clear_meta: bool = typer.Option(False, "--clear-meta", help="Remove all metadata."),
    country: str | None = COUNTRY,
    postal_code: str | None = POSTAL,
    state: str | None = STATE,
    city: str | None = CITY,
    line1: str | None = LINE1,
    line2: str | None = LINE2,
    phone: str | None = PHONE,
    as_json: bool = JSON_OPTION,
) -> None:
    """Change the fields given; "" clears an optional field."""
    from metersync.catalog import CustomerUpdate, parse

    name_cli_options(ctx, FIELD_OPTIONS | {"key": "KEY"})
    data = _record(
        name=name,
        description=description,
        email=email,
        currency=currency,
        subjects=subject,
        clear_subjects=clear_subjects,
        meta=meta,
        clear_meta=clear_meta,
        address={
            "country": country,
            "postal_code": postal_code,
            "state": state,
            "city": city,
            "line1": line1,
            "line2": line2,
            "phone": phone,
        },
    )
    if not data:
        raise typer.BadParameter(
            "nothing to change: give at least one option", param_hint="options"
        )
    result = writable_catalog(ctx).update_customer(key, parse(CustomerUpdate, data))
    print_notes(result.notes)
    if not as_json:
        typer.echo(f"customer {key!r}: {result.outcome.value}", err=True)
    print_customer(result.record, as_json=as_json)


@app.command("get")
def get(
    ctx: typer.Context,
    key: str = typer.Argument(...),
    include_deleted: bool = INCLUDE_DELETED_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Show one customer with its subjects."""
    with tombstone_hint():
        customer = app_context(ctx).catalog.get_customer(key, include_deleted=include_deleted)
    print_customer(customer, as_json=as_json)


@app.command("list")
def list_(
    ctx: typer.Context,
    include_deleted: bool = INCLUDE_DELETED_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """List customers, ordered by key."""
    customers = app_context(ctx).catalog.list_customers(include_deleted=include_deleted)
    print_customers(customers, as_json=as_json)


@app.command("delete")
def delete(ctx: typer.Context, key: str = typer.Argument(...), as_json: bool = JSON_OPTION) -> None:
    """Delete a customer: a tombstone stays until every target has deleted its copy; its
    subjects stay, without a customer."""
    result = writable_catalog(ctx).delete_customer(key)
    print_notes(result.notes)
    if as_json:
        print_customer(result.record, as_json=True)
    else:
        typer.echo(f"customer {key!r}: {result.outcome.value.replace('_', ' ')}")


@app.command("link")
def link(
    ctx: typer.Context,
    key: str = typer.Argument(..., help="The local customer."),
    external_id: str = typer.Argument(..., metavar="CUS_ID", help="The Stripe customer (cus_…)."),
) -> None:
    """Link a customer to an existing Stripe customer (checked: it exists, it is not linked to
    another key). The next reconcile pushes the catalog's fields to it."""
    import asyncio

    from metersync.store.lock import run_lock
    from metersync.sync.manual import link_customer

    app = app_context(ctx)
    with run_lock(app.catalog.store):
        asyncio.run(_with_target(app, lambda t: link_customer(app.catalog, t, key, external_id)))
    typer.echo(f"customer {key!r} linked to {external_id}; run `metersync reconcile` to push it")


@app.command("unlink")
def unlink(ctx: typer.Context, key: str = typer.Argument(..., help="The local customer.")) -> None:
    """Stop managing the Stripe customer linked to KEY: the Stripe record stays, without
    metersync's marker, and the local customer has no Stripe customer until the next reconcile
    creates one (or you link another)."""
    import asyncio

    from metersync.store.lock import run_lock
    from metersync.sync.manual import unlink_customer

    app = app_context(ctx)
    with run_lock(app.catalog.store):
        external_id = asyncio.run(_with_target(app, lambda t: unlink_customer(app.catalog, t, key)))
    typer.echo(f"customer {key!r} unlinked from {external_id or 'nothing'}")


async def _with_target(app: Any, work: Callable[[Target], Awaitable[T]]) -> T:
    from metersync.pipeline import Pipeline

    async with Pipeline(app.settings, app.catalog) as pipeline:
        return await work(pipeline.stripe())
