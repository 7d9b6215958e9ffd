"""`metersync usage …`: what the events say per window, and (verify) what Stripe says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import typer

from metersync.cli.context import app_context
from metersync.cli.options import command_group
from metersync.cli.output import print_json, print_table
from metersync.errors import NotFound

if TYPE_CHECKING:  # the commands import what they use when they run: see metersync.cli
    from metersync.catalog.meters import Meter
    from metersync.pipeline import Verification

app = command_group("Usage: aggregates per customer, meter and window.")


def parse_time(value: str, option: str, *, back_from: datetime | None = None) -> datetime:
    """RFC 3339 with a zone, or a date (midnight UTC); with `back_from`, also a duration such
    as 7d or 48h, counted back from it."""
    text = value.strip()
    shapes = "an RFC 3339 time (2024-05-01T00:00:00Z) or a date (2024-05-01)"
    if back_from is not None:
        from metersync.settings import duration_seconds

        try:
            return back_from - timedelta(seconds=duration_seconds(text))
        except ValueError:
            shapes = (
                "an RFC 3339 time (2024-05-01T00:00:00Z), a date (2024-05-01) or a duration "
                "(7d, 48h)"
            )
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not {shapes}", param_hint=option) from None
    if moment.tzinfo is None:
        if len(text) > 10:
            raise typer.BadParameter(
                f"{value!r} has no time zone: add Z or an offset", param_hint=option
            )
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def configured_meter(meters: list[Meter], slug: str) -> Meter:
    for meter in meters:
        if meter.slug == slug:
            return meter
    known = ", ".join(m.slug for m in meters) or "none are configured"
    raise NotFound(f"meter {slug!r} is not configured (meters: {known})")


@app.command("show")
def show_command(
    ctx: typer.Context,
    meter_slug: str = typer.Option(..., "--meter", help="The meter's slug."),
    customer_key: str | None = typer.Option(
        None, "--customer", help="A customer's key (default: all usage)."
    ),
    start: str | None = typer.Option(None, "--from", help="Start, inclusive (default: 24 h ago)."),
    end: str | None = typer.Option(None, "--to", help="End, exclusive (default: now)."),
    window: str | None = typer.Option(
        None, "--window", help="Window size such as 15m, 1h, 1d (default: usage.window)."
    ),
    group: bool = typer.Option(False, "--group", help="Split windows by the meter's group_by."),
    as_json: bool = typer.Option(False, "--json", help="OpenMeter's meter query result shape."),
) -> None:
    """Usage per window, as OpenMeter's meter query shows it."""
    from metersync.catalog.meters import Meter
    from metersync.settings import duration_seconds
    from metersync.usage.aggregate import query_meter

    app = app_context(ctx)
    settings = app.settings
    meter = configured_meter([Meter.of(m) for m in settings.meters], meter_slug)
    until = parse_time(end, "--to") if end else datetime.now(UTC)
    since = parse_time(start, "--from") if start else until - timedelta(days=1)
    if since >= until:
        raise typer.BadParameter(
            f"{since.isoformat()} is not before --to {until.isoformat()}", param_hint="--from"
        )
    try:
        window_s = duration_seconds(window) if window else settings.usage.window_s
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--window") from None
    customer = None
    if customer_key is not None:
        record = app.catalog.get_customer(customer_key, include_deleted=True)
        customer = (record.key, list(record.subject_keys))
    rows = query_meter(
        app.catalog.store,
        meter,
        customer=customer,
        start=int(since.timestamp()),
        end=int(until.timestamp()),
        window_s=window_s,
        group=group,
    )
    if as_json:
        print_json(
            {
                "from": since.isoformat().replace("+00:00", "Z"),
                "to": until.isoformat().replace("+00:00", "Z"),
                "windowSize": window or settings.usage.window,
                "data": [r.to_openmeter(customer_key) for r in rows],
            }
        )
        return
    groups = sorted({name for r in rows for name in r.group_by})
    print_table(
        f"{meter.slug} ({meter.aggregation})" + (f" for {customer_key}" if customer_key else ""),
        ["window start", "window end", *groups, "value"],
        [
            [
                r.to_openmeter()["windowStart"],
                r.to_openmeter()["windowEnd"],
                *(r.group_by.get(g) for g in groups),
                f"{r.value:g}",
            ]
            for r in rows
        ],
    )


@app.command("verify")
def verify_command(
    ctx: typer.Context,
    start: str | None = typer.Option(None, "--from", help="Start (default: 7 days ago)."),
    end: str | None = typer.Option(None, "--to", help="End, exclusive (default: now)."),
    since: str | None = typer.Option(
        None,
        "--since",
        help="Only periods (hours; months for period-to-date meters) that end after this: an "
        "RFC 3339 time, a date, or a duration back from --to such as 7d or 48h. Instead of "
        "--from.",
    ),
    repair: bool = typer.Option(
        False,
        "--repair",
        help="Settle old pending reports, re-plan what Stripe lost, push what is not pushed.",
    ),
    chunk_size: int | None = typer.Option(
        None,
        "--chunk-size",
        help="Customers compared at a time: what bounds memory (default: 500, at most 10000).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Stripe's event summaries vs the ledger vs the usage figures (local aggregates, or
    OpenMeter's when it is the source), every difference named.
    Exit 0 when they agree, 1 when differences remain."""
    import asyncio

    from metersync.cli.progress import ProgressBar
    from metersync.pipeline import Pipeline
    from metersync.store.lock import run_lock
    from metersync.usage.verify import DEFAULT_CHUNK, MAX_CHUNK

    app = app_context(ctx)
    settings = app.settings
    until = parse_time(end, "--to") if end else datetime.now(UTC)
    since_at = _verify_start(start, since, until)
    if chunk_size is not None and not 1 <= chunk_size <= MAX_CHUNK:
        raise typer.BadParameter(
            f"{chunk_size} is not between 1 and {MAX_CHUNK}", param_hint="--chunk-size"
        )
    start_s, end_s = int(since_at.timestamp()), int(until.timestamp())

    async def check() -> Verification:
        async with Pipeline(settings, app.catalog) as pipeline:
            return await pipeline.verify_usage(
                start_s,
                end_s,
                repair=repair,
                chunk_size=chunk_size or DEFAULT_CHUNK,
                progress=progress,
            )

    with run_lock(app.catalog.store), ProgressBar("verifying", quiet=as_json) as progress:
        result = asyncio.run(check())
    if as_json:
        print_json(result.to_json())
    else:
        for diff in result.differences:
            typer.echo(
                f"{diff.customer_key} / {diff.meter} {_short_time(diff.period_start)}: local "
                f"{diff.local}, ledger {diff.delivered} delivered + {diff.pending} pending, "
                f"Stripe {diff.stripe}: {diff.problem}"
            )
        if repair:
            typer.echo(
                f"repair: settled {result.settled} old pending report(s), re-planned "
                f"{result.replanned} lost one(s); pushed {result.pushed_counts}"
            )
        typer.echo(
            f"checked {result.checked} customer-meter periods; "
            f"{len(result.differences)} difference(s)"
        )
    raise typer.Exit(1 if result.differences else 0)


def _verify_start(start: str | None, since: str | None, until: datetime) -> datetime:
    """Where verify starts: --from, or --since (which also takes a duration back from --to),
    or 7 days before --to."""
    if start is not None and since is not None:
        raise typer.BadParameter("give --since or --from, not both", param_hint="--since")
    option = "--since" if since is not None else "--from"
    if since is not None:
        moment = parse_time(since, option, back_from=until)
    elif start is not None:
        moment = parse_time(start, option)
    else:
        moment = until - timedelta(days=7)
    if moment >= until:
        raise typer.BadParameter(
            f"{moment.isoformat()} is not before --to {until.isoformat()}", param_hint=option
        )
    return moment


def _short_time(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M")
