"""`metersync features …`: the capabilities entitlements grant, each optionally measured by a
meter."""

from __future__ import annotations

import typer

from metersync.cli.context import name_cli_options
from metersync.cli.entitlement_output import print_feature, print_features
from metersync.cli.entitlements import entitlement_book
from metersync.cli.options import JSON_OPTION, META_OPTION, command_group, parse_meta

app = command_group("Features: what entitlements give access to, optionally measured by a meter.")

# Which option sets which OpenMeter field, so errors can name both.
FIELD_OPTIONS = {
    "key": "--key",
    "name": "--name",
    "meterSlug": "--meter",
    "meterGroupByFilters": "--filter",
    "metadata": "--meta",
}


@app.command("create")
def create(
    ctx: typer.Context,
    key: str = typer.Option(
        ..., "--key", help="The feature key: lowercase letters, digits and single underscores."
    ),
    name: str = typer.Option(..., "--name", help="Display name."),
    meter: str | None = typer.Option(
        None, "--meter", help="The slug of the meter that measures it (for metered entitlements)."
    ),
    filters: list[str] | None = typer.Option(
        None,
        "--filter",
        metavar="DIMENSION=VALUE",
        help="Count only the meter's usage with this group_by value; repeat for more.",
    ),
    meta: list[str] | None = META_OPTION,
    as_json: bool = JSON_OPTION,
) -> None:
    """Create a feature."""
    name_cli_options(ctx, FIELD_OPTIONS)
    group_filters = parse_meta(filters, option="--filter")
    if group_filters and meter is None:
        raise typer.BadParameter("filters a meter's usage: give --meter too", param_hint="--filter")
    data: dict[str, object] = {"key": key, "name": name}
    if meter is not None:
        data["meterSlug"] = meter
    if group_filters:
        data["meterGroupByFilters"] = group_filters
    metadata = parse_meta(meta)
    if metadata:
        data["metadata"] = metadata
    feature = entitlement_book(ctx, write=True).create_feature(data)
    if not as_json:
        typer.echo(f"feature {feature.key!r}: created", err=True)
    print_feature(feature, as_json=as_json)


@app.command("list")
def list_(
    ctx: typer.Context,
    include_archived: bool = typer.Option(
        False, "--include-archived", help="Also show archived features."
    ),
    as_json: bool = JSON_OPTION,
) -> None:
    """List features, oldest first."""
    features = entitlement_book(ctx).list_features(include_archived=include_archived)
    print_features(features, as_json=as_json)


@app.command("show")
def show(
    ctx: typer.Context,
    feature: str = typer.Argument(..., metavar="ID|KEY", help="The feature's id or key."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show one feature (by id, or the live one with a key)."""
    print_feature(entitlement_book(ctx).get_feature(feature), as_json=as_json)


@app.command("archive")
def archive(
    ctx: typer.Context,
    feature: str = typer.Argument(..., metavar="ID|KEY", help="The feature's id or key."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Archive a feature: no new entitlement can use it, and its key is free for a new one;
    existing entitlements keep it."""
    archived = entitlement_book(ctx, write=True).archive_feature(feature)
    if as_json:
        print_feature(archived, as_json=True)
    else:
        typer.echo(f"feature {archived.key!r}: archived")
