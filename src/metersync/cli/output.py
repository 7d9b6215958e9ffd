"""Printing records: a table for people, OpenMeter-shaped JSON for programs (`--json`)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:  # imported when first used: see the start-up note in metersync.cli
    from rich.console import Console

    from metersync.catalog import Customer, Subject


def _console() -> Console:
    from rich.console import Console

    # Wide enough for keys and emails when piped; a terminal uses its own width.
    return Console(soft_wrap=False, width=None if typer.get_text_stream("stdout").isatty() else 200)


def print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, ensure_ascii=False))


def print_notes(notes: Iterable[str]) -> None:
    for note in notes:
        typer.echo(f"note: {note}", err=True)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    _console().print(table)


def print_details(title: str, fields: Sequence[tuple[str, Any]]) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for name, value in fields:
        table.add_row(name, "" if value is None else str(value))
    _console().print(table)


def _metadata(metadata: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(metadata.items()))


def _deleted(record: Subject | Customer) -> str:
    return record.deleted_at.isoformat(timespec="seconds") if record.deleted_at else ""


def print_subjects(subjects: Sequence[Subject], *, as_json: bool) -> None:
    if as_json:
        print_json([s.to_openmeter() for s in subjects])
        return
    show_deleted = any(s.is_deleted for s in subjects)
    columns = ["key", "display name", "customer", "metadata"] + (
        ["deleted"] if show_deleted else []
    )
    print_table(
        f"subjects ({len(subjects)})",
        columns,
        [
            [s.key, s.display_name, s.customer_key, _metadata(s.metadata)]
            + ([_deleted(s)] if show_deleted else [])
            for s in subjects
        ],
    )


def print_subject(subject: Subject, *, as_json: bool) -> None:
    if as_json:
        print_json(subject.to_openmeter())
        return
    print_details(
        f"subject {subject.key}",
        [
            ("id", subject.id),
            ("key", subject.key),
            ("display name", subject.display_name),
            ("customer", subject.customer_key),
            ("metadata", _metadata(subject.metadata)),
            ("created", subject.created_at.isoformat(timespec="seconds")),
            ("updated", subject.updated_at.isoformat(timespec="seconds")),
            *([("deleted", _deleted(subject))] if subject.is_deleted else []),
        ],
    )


def print_customers(customers: Sequence[Customer], *, as_json: bool) -> None:
    if as_json:
        print_json([c.to_openmeter() for c in customers])
        return
    show_deleted = any(c.is_deleted for c in customers)
    columns = ["key", "name", "email", "currency", "subjects"] + (
        ["deleted"] if show_deleted else []
    )
    print_table(
        f"customers ({len(customers)})",
        columns,
        [
            [
                c.key,
                c.name + (" (auto)" if c.auto_created else ""),
                c.primary_email,
                c.currency,
                ", ".join(c.subject_keys),
            ]
            + ([_deleted(c)] if show_deleted else [])
            for c in customers
        ],
    )


def print_customer(customer: Customer, *, as_json: bool) -> None:
    if as_json:
        print_json(customer.to_openmeter())
        return
    address = customer.billing_address
    print_details(
        f"customer {customer.key}",
        [
            ("id", customer.id),
            ("key", customer.key),
            ("name", customer.name),
            ("description", customer.description),
            ("email", customer.primary_email),
            ("currency", customer.currency),
            ("subjects", ", ".join(customer.subject_keys)),
            (
                "address",
                ", ".join(
                    v
                    for v in (
                        address.line1,
                        address.line2,
                        address.postal_code,
                        address.city,
                        address.state,
                        address.country,
                    )
                    if v
                ),
            ),
            ("phone", address.phone_number),
            ("metadata", _metadata(customer.metadata)),
            ("auto-created", "yes" if customer.auto_created else "no"),
            ("created", customer.created_at.isoformat(timespec="seconds")),
            ("updated", customer.updated_at.isoformat(timespec="seconds")),
            *([("deleted", _deleted(customer))] if customer.is_deleted else []),
        ],
    )
