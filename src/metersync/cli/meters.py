"""`metersync meters …`: the configured meters, and their Stripe billing meters."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import typer

from metersync.cli.context import app_context
from metersync.cli.options import command_group
from metersync.cli.output import print_json, print_table

if TYPE_CHECKING:  # the commands import what they use when they run: see metersync.cli
    from metersync.catalog.meters import MeterSettings
    from metersync.targets.stripe import MeterCheck, StripeTarget

app = command_group("Meters: the configured meters and their Stripe billing meters.")

JSON_OPTION = typer.Option(False, "--json", help="Print JSON instead of a table.")


@app.command("list")
def list_command(ctx: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """The meters of the config file, with their Stripe settings (no Stripe calls)."""
    meters = app_context(ctx).settings.meters
    if as_json:
        print_json([_meter_json(m) for m in meters])
        return
    print_table(
        f"meters ({len(meters)})",
        [
            "slug",
            "event type",
            "aggregation",
            "value property",
            "group by",
            "stripe event name",
            "formula",
            "scale",
        ],
        [_meter_row(m) for m in meters],
    )


@app.command("ensure")
def ensure_command(
    ctx: typer.Context,
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Say what would be created or reactivated; write nothing."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Create the Stripe billing meters the config names, reactivate inactive ones, and check
    existing ones. Exit 2 when a Stripe meter's formula or payload keys differ from what
    metersync sends (Stripe cannot change them), or when the Stripe key is missing."""
    import asyncio

    from metersync.targets.factory import stripe_target

    settings = app_context(ctx).settings
    meters = [m for m in settings.meters if m.stripe is not None]
    if not meters:
        if as_json:
            print_json({"dryRun": dry_run, "meters": []})
        else:
            typer.echo("no meter has a [meters.stripe] section: nothing to ensure")
        return
    checks = asyncio.run(_ensure(stripe_target(settings), meters, dry_run=dry_run))
    if as_json:
        print_json({"dryRun": dry_run, "meters": [c.to_json() for c in checks]})
        return
    for check in checks:
        typer.echo(_check_line(check))
    if dry_run:
        typer.echo("dry run: nothing was written")


async def _ensure(
    target: StripeTarget, meters: Sequence[MeterSettings], *, dry_run: bool
) -> list[MeterCheck]:
    from metersync.targets.stripe import ensure_meters

    try:
        return await ensure_meters(target, meters, dry_run=dry_run)
    finally:
        await target.close()


def _check_line(check: MeterCheck) -> str:
    outcome = check.outcome.value.replace("_", " ")
    where = check.meter_id or "(new meter)"
    line = f"{outcome}: {check.slug} (event_name {check.event_name!r}) → {where}"
    return f"{line} ({check.note})" if check.note else line


def _meter_row(meter: MeterSettings) -> list[Any]:
    stripe = meter.stripe
    return [
        meter.slug,
        meter.event_type,
        meter.aggregation.value,
        meter.value_property or "",
        ", ".join(f"{k}={v}" for k, v in sorted(meter.group_by.items())),
        stripe.event_name if stripe else "",
        meter.stripe_formula or "",
        f"{stripe.scale:g}" if stripe else "",
    ]


def _meter_json(meter: MeterSettings) -> dict[str, Any]:
    stripe = meter.stripe
    return {
        "slug": meter.slug,
        "eventType": meter.event_type,
        "aggregation": meter.aggregation.value,
        "valueProperty": meter.value_property,
        "groupBy": dict(meter.group_by),
        "description": meter.description,
        "stripe": {
            "eventName": stripe.event_name,
            "formula": meter.stripe_formula,
            "scale": stripe.scale,
            "displayName": stripe.display_name or meter.slug,
        }
        if stripe
        else None,
    }
