"""`metersync events …`"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from metersync.cli.context import app_context, writable_catalog
from metersync.cli.options import command_group, input_name, open_input
from metersync.cli.output import print_json, print_notes, print_table
from metersync.errors import ExitCode, InvalidInput

if TYPE_CHECKING:  # the commands import what they use when they run: see metersync.cli
    from metersync.usage.ingest import IngestReport

app = command_group("Usage events: CloudEvents ingested into the local store.")

# Subjects named in the note about subjects an ingest created; the JSON output lists them all.
_SUBJECTS_SHOWN = 10


@app.command("ingest")
def ingest_command(
    ctx: typer.Context,
    file: str = typer.Argument(
        ...,
        metavar="FILE",
        help="NDJSON (one event per line), a JSON array of events, one event, or - for stdin.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Ingest CloudEvents 1.0 usage events into the local store.

    Each event is checked and measured by the configured meters; an invalid event is reported
    on its own line with its reason, and the others are stored. An event whose (source, id) is
    already stored is a duplicate and changes nothing, so ingesting the same file again is safe.
    Subjects the catalog does not know are created. Exit 1 if any event was rejected.
    """
    from metersync.catalog.meters import Meter
    from metersync.usage.ingest import ingest_file

    writable_catalog(ctx)  # usage from an upstream source: local events would never count
    context = app_context(ctx)
    meters = [Meter.of(settings) for settings in context.settings.meters]
    with open_input(file) as stream:  # a large NDJSON file streams: memory holds a batch
        try:
            report = ingest_file(context.catalog, meters, stream)
        except OSError as exc:
            raise InvalidInput(
                [], record=f"FILE: {input_name(file)} cannot be read: {exc}"
            ) from None
        except InvalidInput as exc:
            raise InvalidInput(exc.problems, record=f"{input_name(file)}: {exc.record}") from None
    for rejection in report.rejections:
        typer.echo(f"rejected: {rejection}", err=True)
    print_notes(_notes(report, configured=bool(meters)))
    if as_json:
        print_json(report.to_json())
    else:
        print_table(
            f"ingested {report.accepted} of {report.received} events",
            ["received", "accepted", "duplicates", "rejected"],
            [[report.received, report.accepted, report.duplicates, report.rejected]],
        )
    if report.rejections:
        raise typer.Exit(int(ExitCode.SOME_FAILED))


def _notes(report: IngestReport, *, configured: bool) -> list[str]:
    notes = list(report.notes)
    created = report.subjects_created
    if created:
        shown = ", ".join(repr(key) for key in created[:_SUBJECTS_SHOWN])
        hidden = len(created) - _SUBJECTS_SHOWN
        more = f" and {hidden} more" if hidden > 0 else ""
        notes.append(f"created {len(created)} new subject(s) the events name: {shown}{more}")
    if not configured and report.accepted:
        notes.append("no meters are configured: the events are stored, but measure nothing")
    return notes
