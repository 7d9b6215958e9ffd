"""`metersync import FILE`"""

from __future__ import annotations

import typer

from metersync.cli.context import writable_catalog
from metersync.cli.options import input_name, read_input
from metersync.cli.output import print_json, print_notes, print_table
from metersync.errors import ExitCode, InvalidInput


def import_command(
    ctx: typer.Context,
    file: str = typer.Argument(..., metavar="FILE", help="JSON array, NDJSON, or - for stdin."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Import subjects and customers in OpenMeter's JSON shape.

    Each rejected record is reported on its own line with its reason; the others are imported.
    Importing the same file again changes nothing. Exit 1 if any record was rejected.
    """
    from metersync.catalog import import_records, read_records
    from metersync.catalog.importer import RecordKind
    from metersync.catalog.views import Outcome

    text = _read(file)
    try:
        records = read_records(text)
    except InvalidInput as exc:
        raise InvalidInput(exc.problems, record=f"{file}: {exc.record}") from None
    report = import_records(writable_catalog(ctx), records)
    for rejection in report.rejected:
        typer.echo(f"rejected: {rejection}", err=True)
    print_notes(report.notes)
    if as_json:
        print_json(
            report.summary()
            | {
                "rejections": [
                    {"where": r.where, "record": r.what, "reason": r.reason}
                    for r in report.rejected
                ]
            }
        )
    else:
        print_table(
            f"imported {report.imported} of {len(records)} records",
            ["kind", "created", "updated", "unchanged"],
            [
                [
                    kind.value + "s",
                    *(
                        report.count(kind, o)
                        for o in (Outcome.CREATED, Outcome.UPDATED, Outcome.UNCHANGED)
                    ),
                ]
                for kind in (RecordKind.CUSTOMER, RecordKind.SUBJECT)
            ]
            + [["rejected", len(report.rejected), "", ""]],
        )
    if report.rejected:
        raise typer.Exit(int(ExitCode.SOME_FAILED))


def _read(file: str) -> str:
    return _decode(read_input(file), input_name(file))


def _decode(data: bytes, source: str) -> str:
    try:
        # utf-8-sig: a byte-order mark, as some editors on Windows write, is not part of the JSON.
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            [], record=f"FILE: {source} is not UTF-8 text ({exc.reason} at byte {exc.start})"
        ) from None
