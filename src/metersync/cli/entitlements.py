"""`metersync entitlements …`: what customers may use of features, their grants, balances and
resets.

The commands take OpenMeter's customer-based (v2) API's inputs as options, or a whole request
body with `--from-json`; `--json` prints OpenMeter's response shapes."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import typer

from metersync.cli.context import app_context, name_cli_options
from metersync.cli.entitlement_output import (
    print_access,
    print_entitlement,
    print_entitlements,
    print_exact_json,
    print_grant,
    print_grants,
    print_history,
    print_value,
)
from metersync.cli.options import (
    JSON_OPTION,
    META_OPTION,
    command_group,
    input_name,
    parse_meta,
    read_input,
)
from metersync.cli.usage import parse_time
from metersync.errors import ConfigError, InvalidInput

if TYPE_CHECKING:  # the commands import what they use when they run: see metersync.cli
    from metersync.entitlements import EntitlementBook, EntitlementValues

app = command_group("Entitlements: customers' access to features, their grants and balances.")

# Which option sets which OpenMeter field, so errors can name both.
ENTITLEMENT_OPTIONS = {
    "type": "--type",
    "featureKey": "--feature",
    "featureId": "--feature",
    "usagePeriod": "--interval",
    "usagePeriod.interval": "--interval",
    "usagePeriod.anchor": "--anchor",
    "isSoftLimit": "--soft-limit",
    "preserveOverageAtReset": "--preserve-overage",
    "measureUsageFrom": "--measure-from",
    "issue": "--issue",
    "issue.amount": "--issue",
    "issue.priority": "--issue-priority",
    "config": "--config",
    "metadata": "--meta",
    "entitlement": "FEATURE_OR_ID",
    "key": "CUSTOMER",
}
GRANT_OPTIONS = {
    "amount": "--amount",
    "effectiveAt": "--effective-at",
    "priority": "--priority",
    "expiration": "--expires",
    "expiration.duration": "--expires",
    "expiration.count": "--expires",
    "minRolloverAmount": "--min-rollover",
    "maxRolloverAmount": "--max-rollover",
    "recurrence": "--recurrence",
    "recurrence.interval": "--recurrence",
    "metadata": "--meta",
    "entitlement": "FEATURE_OR_ID",
}
RESET_OPTIONS = {"effectiveAt": "--at", "entitlement": "FEATURE_OR_ID"}

KINDS = ("metered", "boolean", "static")
WindowName = Literal["HOUR", "DAY", "MONTH"]
WINDOWS: dict[str, WindowName] = {"HOUR": "HOUR", "DAY": "DAY", "MONTH": "MONTH"}
METERED_OPTIONS = (
    "--soft-limit",
    "--preserve-overage",
    "--measure-from",
    "--issue",
    "--issue-priority",
)
# A feature id as metersync writes it (a ULID, upper case); a feature key is lower case.
FEATURE_ID = re.compile(r"[0-7][0-9A-HJKMNP-TV-Z]{25}")


def entitlement_book(ctx: typer.Context, *, write: bool = False) -> EntitlementBook:
    """The features and entitlements, for a command; a write is refused (exit 2) when OpenMeter
    is the source: its customers are OpenMeter's, and so are their entitlements."""
    from metersync.catalog.meters import Meter
    from metersync.entitlements import EntitlementBook

    app = app_context(ctx)
    if write and app.settings.openmeter.enabled:
        raise ConfigError(
            "features and entitlements come from OpenMeter when it is the source "
            "(openmeter.url is set): make this change in OpenMeter"
        )
    return EntitlementBook(app.catalog.store, [Meter.of(m) for m in app.settings.meters])


def entitlement_values(ctx: typer.Context, book: EntitlementBook) -> EntitlementValues:
    from metersync.catalog.meters import Meter
    from metersync.entitlements import EntitlementValues

    app = app_context(ctx)
    return EntitlementValues(book, app.catalog.store, [Meter.of(m) for m in app.settings.meters])


def _moment(value: str | None, option: str) -> str | None:
    return None if value is None else parse_time(value, option).isoformat()


def _at(value: str | None, option: str) -> datetime | None:
    return None if value is None else parse_time(value, option)


# -- create and override -------------------------------------------------------------------------

FEATURE = typer.Option(
    None, "--feature", metavar="KEY", help="The feature's key (or id); required unless --from-json."
)
TYPE = typer.Option(
    None, "--type", metavar="metered|boolean|static", help="Required unless --from-json."
)
INTERVAL = typer.Option(
    None,
    "--interval",
    help="Usage period: DAY, WEEK, MONTH, YEAR or an ISO-8601 duration such as P1D, PT6H "
    "(metered: required).",
)
ANCHOR = typer.Option(
    None, "--anchor", metavar="RFC3339", help="Where usage periods start (default: now)."
)
SOFT_LIMIT = typer.Option(
    False, "--soft-limit", help="Metered: access stays when the balance runs out."
)
PRESERVE = typer.Option(
    False, "--preserve-overage", help="Metered: a reset deducts the overage from the new period."
)
MEASURE_FROM = typer.Option(
    None,
    "--measure-from",
    metavar="NOW|CURRENT_PERIOD_START|RFC3339",
    help="Metered: where usage starts to count (default: NOW).",
)
ISSUE = typer.Option(
    None,
    "--issue",
    metavar="AMOUNT",
    help="Metered: a grant of AMOUNT issued now and restored at every reset.",
)
ISSUE_PRIORITY = typer.Option(
    None, "--issue-priority", metavar="N", help="The issued grant's priority (1–255; default 1)."
)
CONFIG = typer.Option(None, "--config", metavar="JSON", help="Static: the JSON config.")
FROM_JSON = typer.Option(
    None,
    "--from-json",
    metavar="FILE|-",
    help="OpenMeter's entitlement create body, from FILE or standard input, instead of options.",
)


def _entitlement_body(
    *,
    kind: str | None,
    feature: str | None,
    interval: str | None,
    anchor: str | None,
    soft_limit: bool,
    preserve_overage: bool,
    measure_from: str | None,
    issue: str | None,
    issue_priority: int | None,
    config: str | None,
    meta: list[str] | None,
    from_json: str | None,
) -> dict[str, Any]:
    """OpenMeter's EntitlementV2CreateInputs, from a file or from the options."""
    given = [
        option
        for option, value in (
            ("--type", kind),
            ("--interval", interval),
            ("--anchor", anchor),
            ("--soft-limit", soft_limit or None),
            ("--preserve-overage", preserve_overage or None),
            ("--measure-from", measure_from),
            ("--issue", issue),
            ("--issue-priority", issue_priority),
            ("--config", config),
            ("--meta", meta or None),
        )
        if value is not None
    ]
    if from_json is not None:
        if given:
            raise typer.BadParameter(
                f"takes the whole entitlement: give it without {', '.join(given)}",
                param_hint="--from-json",
            )
        try:
            loaded: Any = json.loads(read_input(from_json))
        except ValueError as exc:
            raise InvalidInput(
                [], record=f"--from-json: {input_name(from_json)} is not JSON: {exc}"
            ) from None
        if not isinstance(loaded, dict):
            raise InvalidInput([], record="--from-json: the body must be a JSON object")
        if feature is not None:
            loaded.pop("featureId", None)
            loaded.pop("featureKey", None)
            loaded.update(_feature_field(feature))
        return loaded
    if kind is None:
        raise typer.BadParameter("is required (or --from-json)", param_hint="--type")
    kind = kind.lower()
    if kind not in KINDS:
        raise typer.BadParameter(f"{kind!r} is not one of {', '.join(KINDS)}", param_hint="--type")
    if feature is None:
        raise typer.BadParameter("is required (or --from-json)", param_hint="--feature")
    metered_only = [option for option in METERED_OPTIONS if option in given]
    if kind != "metered" and metered_only:
        raise typer.BadParameter(
            f"only a metered entitlement takes it, not a {kind} one", param_hint=metered_only[0]
        )
    if kind != "static" and config is not None:
        raise typer.BadParameter(
            f"only a static entitlement has a config, not a {kind} one", param_hint="--config"
        )
    if issue_priority is not None and issue is None:
        raise typer.BadParameter(
            "is the priority of --issue's grant: give --issue too", param_hint="--issue-priority"
        )
    if anchor is not None and interval is None:
        raise typer.BadParameter(
            "anchors the usage period: give --interval too", param_hint="--anchor"
        )
    body: dict[str, Any] = {"type": kind, **_feature_field(feature)}
    if interval is not None:
        body["usagePeriod"] = {"interval": interval}
        if anchor is not None:
            body["usagePeriod"]["anchor"] = _moment(anchor, "--anchor")
    if kind == "metered":
        body["isSoftLimit"] = soft_limit
        body["preserveOverageAtReset"] = preserve_overage
        if measure_from is not None:
            named = measure_from.upper()
            body["measureUsageFrom"] = (
                named
                if named in ("NOW", "CURRENT_PERIOD_START")
                else _moment(measure_from, "--measure-from")
            )
        if issue is not None:
            body["issue"] = {"amount": issue}
            if issue_priority is not None:
                body["issue"]["priority"] = issue_priority
    if config is not None:
        body["config"] = config
    metadata = parse_meta(meta)
    if metadata:
        body["metadata"] = metadata
    return body


def _feature_field(feature: str) -> dict[str, str]:
    return {"featureId": feature} if FEATURE_ID.fullmatch(feature) else {"featureKey": feature}


@app.command("create")
def create(
    ctx: typer.Context,
    customer: str = typer.Argument(..., metavar="CUSTOMER", help="The customer's key or id."),
    feature: str | None = FEATURE,
    kind: str | None = TYPE,
    interval: str | None = INTERVAL,
    anchor: str | None = ANCHOR,
    soft_limit: bool = SOFT_LIMIT,
    preserve_overage: bool = PRESERVE,
    measure_from: str | None = MEASURE_FROM,
    issue: str | None = ISSUE,
    issue_priority: int | None = ISSUE_PRIORITY,
    config: str | None = CONFIG,
    meta: list[str] | None = META_OPTION,
    from_json: str | None = FROM_JSON,
    as_json: bool = JSON_OPTION,
) -> None:
    """Give a customer an entitlement to a feature: metered (a balance of grants burnt down by
    usage), boolean (access) or static (a JSON config)."""
    name_cli_options(ctx, {} if from_json is not None else ENTITLEMENT_OPTIONS)
    body = _entitlement_body(
        kind=kind,
        feature=feature,
        interval=interval,
        anchor=anchor,
        soft_limit=soft_limit,
        preserve_overage=preserve_overage,
        measure_from=measure_from,
        issue=issue,
        issue_priority=issue_priority,
        config=config,
        meta=meta,
        from_json=from_json,
    )
    book = entitlement_book(ctx, write=True)
    created = book.create_entitlement(customer, body)
    if not as_json:
        typer.echo(
            f"entitlement of {created.customer_key!r} to {created.feature_key!r}: created",
            err=True,
        )
    print_entitlement(created, as_json=as_json)


@app.command("override")
def override(
    ctx: typer.Context,
    customer: str = typer.Argument(..., metavar="CUSTOMER", help="The customer's key or id."),
    entitlement: str = typer.Argument(
        ..., metavar="FEATURE_OR_ID", help="The live entitlement: its feature's key, or its id."
    ),
    feature: str | None = typer.Option(
        None, "--feature", metavar="KEY", help="The new entitlement's feature (default: the same)."
    ),
    kind: str | None = TYPE,
    interval: str | None = INTERVAL,
    anchor: str | None = ANCHOR,
    soft_limit: bool = SOFT_LIMIT,
    preserve_overage: bool = PRESERVE,
    measure_from: str | None = MEASURE_FROM,
    issue: str | None = ISSUE,
    issue_priority: int | None = ISSUE_PRIORITY,
    config: str | None = CONFIG,
    meta: list[str] | None = META_OPTION,
    from_json: str | None = FROM_JSON,
    as_json: bool = JSON_OPTION,
) -> None:
    """Replace a customer's live entitlement with a new one, at once: the old one ends where
    the new one starts. Takes the options of create."""
    name_cli_options(ctx, {} if from_json is not None else ENTITLEMENT_OPTIONS)
    book = entitlement_book(ctx, write=True)
    if feature is None and from_json is None:
        feature = book.get_entitlement(entitlement, customer=customer).feature_key
    body = _entitlement_body(
        kind=kind,
        feature=feature,
        interval=interval,
        anchor=anchor,
        soft_limit=soft_limit,
        preserve_overage=preserve_overage,
        measure_from=measure_from,
        issue=issue,
        issue_priority=issue_priority,
        config=config,
        meta=meta,
        from_json=from_json,
    )
    created = book.override_entitlement(customer, entitlement, body)
    if not as_json:
        typer.echo(
            f"entitlement of {created.customer_key!r} to {created.feature_key!r}: overridden",
            err=True,
        )
    print_entitlement(created, as_json=as_json)


# -- reads ---------------------------------------------------------------------------------------


@app.command("list")
def list_(
    ctx: typer.Context,
    customer: str | None = typer.Argument(
        None, metavar="[CUSTOMER]", help="Only this customer's (key or id)."
    ),
    feature: str | None = typer.Option(
        None, "--feature", metavar="KEY", help="Only entitlements to this feature (key or id)."
    ),
    include_deleted: bool = typer.Option(
        False, "--include-deleted", help="Also show deleted (and overridden) entitlements."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """List entitlements, oldest first."""
    book = entitlement_book(ctx)
    entitlements = book.list_entitlements(
        customer=customer, feature=feature, include_deleted=include_deleted
    )
    resets = {e.id: book.resets_of(e.id) for e in entitlements if e.kind.value == "metered"}
    print_entitlements(entitlements, resets, as_json=as_json)


@app.command("show")
def show(
    ctx: typer.Context,
    customer: str = typer.Argument(..., metavar="CUSTOMER", help="The customer's key or id."),
    entitlement: str = typer.Argument(
        ..., metavar="FEATURE_OR_ID", help="The entitlement: its feature's key, or its id."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show one entitlement of a customer."""
    name_cli_options(ctx, {"entitlement": "FEATURE_OR_ID"})
    book = entitlement_book(ctx)
    found = book.get_entitlement(entitlement, customer=customer)
    print_entitlement(found, book.resets_of(found.id), as_json=as_json)


@app.command("value")
def value(
    ctx: typer.Context,
    customer: str = typer.Argument(..., metavar="CUSTOMER", help="The customer's key or id."),
    entitlement: str = typer.Argument(
        ..., metavar="FEATURE_OR_ID", help="The entitlement: its feature's key, or its id."
    ),
    at: str | None = typer.Option(
        None, "--at", metavar="RFC3339", help="The value at this time (default: now)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """A customer's access and balance of one feature: OpenMeter's entitlement value."""
    name_cli_options(ctx, {"entitlement": "FEATURE_OR_ID", "at": "--at"})
    moment = _at(at, "--at")
    values = entitlement_values(ctx, entitlement_book(ctx))
    result = values.value(customer, entitlement, at=moment)
    print_value(f"{entitlement} of {customer}", result, as_json=as_json)


@app.command("access")
def access(
    ctx: typer.Context,
    customer: str = typer.Argument(..., metavar="CUSTOMER", help="The customer's key or id."),
    at: str | None = typer.Option(
        None, "--at", metavar="RFC3339", help="The access at this time (default: now)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Every feature a customer is entitled to, with its value: OpenMeter's customer access."""
    moment = _at(at, "--at")
    values = entitlement_values(ctx, entitlement_book(ctx))
    print_access(customer, values.access(customer, at=moment), as_json=as_json)


@app.command("history")
def history(
    ctx: typer.Context,
    customer: str = typer.Argument(..., metavar="CUSTOMER", help="The customer's key or id."),
    entitlement: str = typer.Argument(
        ..., metavar="FEATURE_OR_ID", help="The entitlement: its feature's key, or its id."
    ),
    start: str = typer.Option(..., "--from", metavar="RFC3339", help="Start, inclusive."),
    end: str = typer.Option(..., "--to", metavar="RFC3339", help="End, exclusive."),
    window: str = typer.Option(
        "DAY", "--window", metavar="HOUR|DAY|MONTH", help="Window size of the usage table."
    ),
    tz: str = typer.Option(
        "UTC", "--tz", metavar="ZONE", help="Time zone the windows start in (Europe/Berlin)."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Usage and balance per window, and the burn-down of grants between the events that
    change them: OpenMeter's entitlement history."""
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    name_cli_options(
        ctx,
        {"entitlement": "FEATURE_OR_ID", "from": "--from", "to": "--to", "windowSize": "--window"},
    )
    since, until = parse_time(start, "--from"), parse_time(end, "--to")
    if since >= until:
        raise typer.BadParameter(
            f"{since.isoformat()} is not before --to {until.isoformat()}", param_hint="--from"
        )
    size = WINDOWS.get(window.upper())
    if size is None:
        raise typer.BadParameter(
            f"{window!r} is not one of {', '.join(WINDOWS)}", param_hint="--window"
        )
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise typer.BadParameter(
            f"{tz!r} is not a time zone (such as UTC, Europe/Berlin)", param_hint="--tz"
        ) from None
    values = entitlement_values(ctx, entitlement_book(ctx))
    result = values.history(customer, entitlement, start=since, end=until, window=size, tz=tz)
    print_history(f"{entitlement} of {customer}", result, as_json=as_json)


# -- grants --------------------------------------------------------------------------------------


def _expiration(value: str) -> dict[str, Any]:
    unit, sep, count = value.partition(":")
    units = ("HOUR", "DAY", "WEEK", "MONTH", "YEAR")
    if not sep or unit.upper() not in units or not count.strip().isdigit():
        raise typer.BadParameter(
            f"{value!r} is not UNIT:COUNT, UNIT one of {', '.join(units)} (such as DAY:30)",
            param_hint="--expires",
        )
    return {"duration": unit.upper(), "count": int(count)}


@app.command("grant")
def grant(
    ctx: typer.Context,
    customer: str = typer.Argument(..., metavar="CUSTOMER", help="The customer's key or id."),
    entitlement: str = typer.Argument(
        ..., metavar="FEATURE_OR_ID", help="The metered entitlement: its feature's key, or its id."
    ),
    amount: str = typer.Option(..., "--amount", help="How much of the feature it grants."),
    effective_at: str = typer.Option(
        ..., "--effective-at", metavar="RFC3339", help="When it starts (ceiled to the minute)."
    ),
    priority: int | None = typer.Option(
        None, "--priority", metavar="N", help="1 burns first (1–255; default 1)."
    ),
    expires: str | None = typer.Option(
        None, "--expires", metavar="UNIT:COUNT", help="Expires after, such as DAY:30 or MONTH:1."
    ),
    min_rollover: str | None = typer.Option(
        None,
        "--min-rollover",
        metavar="AMOUNT",
        help="At a reset, the balance is raised to at least this (default 0).",
    ),
    max_rollover: str | None = typer.Option(
        None,
        "--max-rollover",
        metavar="AMOUNT",
        help="At a reset, at most this much of the balance carries over (default: the amount).",
    ),
    recurrence: str | None = typer.Option(
        None,
        "--recurrence",
        metavar="INTERVAL",
        help="Restore it every DAY, WEEK, MONTH, YEAR or ISO-8601 duration, from --effective-at.",
    ),
    meta: list[str] | None = META_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Grant an amount of a metered feature to a customer's entitlement."""
    name_cli_options(ctx, GRANT_OPTIONS)
    body: dict[str, Any] = {
        "amount": amount,
        "effectiveAt": _moment(effective_at, "--effective-at"),
    }
    if priority is not None:
        body["priority"] = priority
    if expires is not None:
        body["expiration"] = _expiration(expires)
    if min_rollover is not None:
        body["minRolloverAmount"] = min_rollover
    if max_rollover is not None:
        body["maxRolloverAmount"] = max_rollover
    if recurrence is not None:
        body["recurrence"] = {"interval": recurrence}
    metadata = parse_meta(meta)
    if metadata:
        body["metadata"] = metadata
    created = entitlement_book(ctx, write=True).create_grant(customer, entitlement, body)
    if not as_json:
        typer.echo(f"grant {created.id}: created", err=True)
    print_grant(created, as_json=as_json)


@app.command("grants")
def grants(
    ctx: typer.Context,
    customer: str = typer.Argument(..., metavar="CUSTOMER", help="The customer's key or id."),
    entitlement: str | None = typer.Argument(
        None, metavar="[FEATURE_OR_ID]", help="Only this entitlement's: feature key or id."
    ),
    include_voided: bool = typer.Option(False, "--include-voided", help="Also show voided grants."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List a customer's grants, oldest first."""
    name_cli_options(ctx, {"entitlement": "FEATURE_OR_ID"})
    found = entitlement_book(ctx).list_grants(
        customer=customer, entitlement=entitlement, include_deleted=include_voided
    )
    print_grants(found, as_json=as_json)


@app.command("void")
def void(
    ctx: typer.Context,
    grant_id: str = typer.Argument(..., metavar="GRANT_ID"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Void a grant from now on: its amount is no longer available; values at earlier times
    still count it."""
    voided = entitlement_book(ctx, write=True).void_grant(grant_id)
    if as_json:
        print_grant(voided, as_json=True)
    else:
        at = voided.voided_at.isoformat(timespec="seconds") if voided.voided_at else ""
        typer.echo(f"grant {voided.id}: voided at {at}")


# -- resets and deletes --------------------------------------------------------------------------


@app.command("reset")
def reset(
    ctx: typer.Context,
    customer: str = typer.Argument(..., metavar="CUSTOMER", help="The customer's key or id."),
    entitlement: str = typer.Argument(
        ..., metavar="FEATURE_OR_ID", help="The metered entitlement: its feature's key, or its id."
    ),
    at: str | None = typer.Option(
        None,
        "--at",
        metavar="RFC3339",
        help="When: a whole minute, not in the future (default: now).",
    ),
    retain_anchor: bool = typer.Option(
        False,
        "--retain-anchor",
        help="Keep the usage period's anchor (default: periods start again at the reset).",
    ),
    preserve_overage: bool | None = typer.Option(
        None,
        "--preserve-overage/--forgive-overage",
        help="Deduct the overage from the new balance, or forgive it "
        "(default: the entitlement's setting).",
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """Reset a metered entitlement's usage: a new period starts, grants roll over."""
    name_cli_options(ctx, RESET_OPTIONS)
    body: dict[str, Any] = {"retainAnchor": retain_anchor}
    if at is not None:
        body["effectiveAt"] = _moment(at, "--at")
    if preserve_overage is not None:
        body["preserveOverage"] = preserve_overage
    book = entitlement_book(ctx, write=True)
    done = book.record_reset(customer, entitlement, body)  # drops the cached balances too
    if as_json:
        from metersync.entitlements import reset_json

        print_exact_json(reset_json(done))
    else:
        typer.echo(
            f"entitlement {done.entitlement_id}: reset at {done.at.isoformat(timespec='seconds')}"
        )


@app.command("delete")
def delete(
    ctx: typer.Context,
    entitlement_id: str = typer.Argument(..., metavar="ENTITLEMENT_ID"),
    as_json: bool = JSON_OPTION,
) -> None:
    """Delete an entitlement: access ends now; its grants and history stay readable."""
    from metersync.errors import NotFound

    name_cli_options(ctx, {"entitlement": "ENTITLEMENT_ID"})
    book = entitlement_book(ctx, write=True)
    # Deleted already: refused, so that a second delete does not move the end of its access.
    if book.get_entitlement(entitlement_id).deleted_at is not None:
        raise NotFound(f"entitlement {entitlement_id!r} is deleted already")
    book.delete_entitlement(entitlement_id)
    if as_json:
        deleted = book.get_entitlement(entitlement_id)
        print_entitlement(deleted, book.resets_of(deleted.id), as_json=True)
    else:
        typer.echo(f"entitlement {entitlement_id}: deleted")
