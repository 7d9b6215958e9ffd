"""`metersync subjects …`"""

from __future__ import annotations

from typing import Any

import typer

from metersync.cli.context import app_context, name_cli_options, tombstone_hint, writable_catalog
from metersync.cli.options import (
    INCLUDE_DELETED_OPTION,
    JSON_OPTION,
    META_OPTION,
    command_group,
    parse_meta,
)
from metersync.cli.output import print_notes, print_subject, print_subjects

app = command_group("Subjects: the entities that produce usage.")


@app.command("upsert")
def upsert(
    ctx: typer.Context,
    key: str = typer.Argument(..., help="The subject key (1–256 characters, immutable)."),
    display_name: str | None = typer.Option(
        None, "--display-name", help='Human-readable name; "" clears it.'
    ),
    meta: list[str] | None = META_OPTION,
    clear_meta: bool = typer.Option(False, "--clear-meta", help="Remove all metadata."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a subject, or change the fields given (the others are kept)."""
    from metersync.catalog import SubjectUpsert, parse

    name_cli_options(ctx, {"key": "KEY", "displayName": "--display-name", "metadata": "--meta"})
    data: dict[str, Any] = {"key": key}
    if display_name is not None:
        data["displayName"] = display_name
    metadata = parse_meta(meta)
    if clear_meta and metadata:
        raise typer.BadParameter("give either --meta or --clear-meta", param_hint="--clear-meta")
    if metadata is not None or clear_meta:
        data["metadata"] = metadata or {}
    result = writable_catalog(ctx).upsert_subject(parse(SubjectUpsert, data))
    print_notes(result.notes)
    if not as_json:
        typer.echo(f"subject {key!r}: {result.outcome.value}", err=True)
    print_subject(result.record, as_json=as_json)


@app.command("get")
def get(
    ctx: typer.Context,
    key: str = typer.Argument(...),
    include_deleted: bool = INCLUDE_DELETED_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Show one subject."""
    with tombstone_hint():
        subject = app_context(ctx).catalog.get_subject(key, include_deleted=include_deleted)
    print_subject(subject, as_json=as_json)


@app.command("list")
def list_(
    ctx: typer.Context,
    include_deleted: bool = INCLUDE_DELETED_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """List subjects, ordered by key."""
    subjects = app_context(ctx).catalog.list_subjects(include_deleted=include_deleted)
    print_subjects(subjects, as_json=as_json)


@app.command("delete")
def delete(ctx: typer.Context, key: str = typer.Argument(...), as_json: bool = JSON_OPTION) -> None:
    """Delete a subject: it leaves its customer; its usage is kept."""
    result = writable_catalog(ctx).delete_subject(key)
    print_notes(result.notes)
    if as_json:
        print_subject(result.record, as_json=True)
    else:
        typer.echo(f"subject {key!r}: {result.outcome.value.replace('_', ' ')}")
