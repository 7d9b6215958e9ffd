"""`metersync usage …`: what the events say per window, and (verify) what Stripe says."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import typer

from metersync.cli.context import app_context
from metersync.cli.options import command_group
from metersync.cli.output import print_json, print_notes, print_table
from metersync.errors import NotFound

if TYPE_CHECKING:  # the commands import what they use when they run: see metersync.cli
    from metersync.catalog.meters import Meter
    from metersync.pipeline import Verification
    from metersync.usage.retention import PruneResult

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
    from metersync.usage.retention import pruned_problem

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
    # Raw usage below the retention floor was pruned: a window there would show part of its
    # total, or none, so the range is refused rather than shown short.
    pruned = pruned_problem(app.catalog.store, int(since.timestamp()) // window_s * window_s)
    if pruned is not None:
        raise typer.BadParameter(pruned, param_hint="--from")
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
        if result.pruned_before:
            print_notes(
                [
                    f"periods before {_short_time(result.pruned_before)} were not checked: raw "
                    "usage before the retention floor was pruned (`metersync usage prune`)"
                ]
            )
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


_MONTH = re.compile(r"(\d{4})-(\d{2})")


def parse_cut(value: str, option: str) -> int:
    """A cut: a month (2026-03), or an RFC 3339 time or date, as the first second of the
    month that holds it (UTC), since only whole months before a moment are wholly before it."""
    import calendar

    from metersync.times import month_start

    match = _MONTH.fullmatch(value.strip())
    if match is None:
        return month_start(int(parse_time(value, option).timestamp()))
    year, month = int(match.group(1)), int(match.group(2))
    if not 1 <= month <= 12:
        raise typer.BadParameter(f"{value!r} has no month {month:02d}", param_hint=option)
    return calendar.timegm((year, month, 1, 0, 0, 0))


@app.command("prune")
def prune_command(
    ctx: typer.Context,
    before: str = typer.Option(
        ...,
        "--before",
        help="The cut: a month (2026-03) or an RFC 3339 date; the whole months before it go.",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Show what would go (rows per month); delete nothing."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the outcome as JSON."),
) -> None:
    """Delete the raw usage (events and their meter values) of whole months before --before,
    oldest first, once nothing in them can still be billed; later events older than what is
    kept are refused at ingest. Exit 0 when every month before the cut went, 1 when one had to
    stay (named, with what to do), 3 when another run holds the lock (stop the service)."""
    from metersync.catalog.meters import Meter
    from metersync.clock import utcnow
    from metersync.store.lock import run_lock
    from metersync.usage.retention import cut_problem, prune_usage

    app = app_context(ctx)
    settings = app.settings
    cut = parse_cut(before, "--before")
    now = utcnow()
    problem = cut_problem(cut, now)
    if problem is not None:
        raise typer.BadParameter(problem, param_hint="--before")

    def prune() -> PruneResult:
        return prune_usage(
            app.catalog.store,
            cut,
            [Meter.of(m) for m in settings.meters],
            window_s=settings.usage.window_s,
            target="stripe",
            now=now,
            dry_run=dry_run,
        )

    if dry_run:  # reads only: it may run beside the service
        result = prune()
    else:
        # The push's own lock: a push never runs in the middle of a prune.
        with run_lock(app.catalog.store):
            result = prune()
    if as_json:
        print_json(result.to_json())
    else:
        _print_prune(result)
    raise typer.Exit(1 if result.plan.kept else 0)


def _print_prune(result: PruneResult) -> None:
    from metersync.times import month_label

    plan, deleted = result.plan, result.deleted
    if result.dry_run:
        typer.echo("dry run: nothing is deleted")
    if plan.months:
        # The note column only when a month needs one.
        notes = any(plan.interrupted(m) for m in plan.months)
        print_table(
            f"raw usage to prune before {month_label(plan.cut)}",
            ["month", "events", "meter values", *(["note"] if notes else [])],
            [
                [
                    month_label(m.start),
                    m.events,
                    m.values,
                    *(["left by a prune stopped midway" if plan.interrupted(m) else ""] * notes),
                ]
                for m in plan.months
            ],
        )
    else:
        typer.echo(f"no raw usage to prune before {month_label(plan.cut)}")
    if plan.kept is not None:
        typer.echo(
            f"kept: {month_label(plan.kept.start)} and the months after it, as months go "
            "oldest first:"
        )
        for reason in plan.kept.reasons:
            typer.echo(f"  - {reason}")
    if plan.new_floor > plan.floor:
        verb = "would move" if result.dry_run else "moved"
        typer.echo(
            f"retention floor {verb} to {month_label(plan.new_floor)}: events before it are "
            "refused at ingest, and `usage show` and `usage verify` start there"
        )
    if deleted is not None:
        typer.echo(f"deleted {deleted.events} event(s) and {deleted.values} meter value(s)")
        if not deleted.finished:
            typer.echo("stopped before the end: run the same command again to finish")
