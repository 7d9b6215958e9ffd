"""Option parsing and input reading shared by the commands."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import typer
import typer.core

from metersync.errors import InvalidInput


class PlainHelpGroup(typer.core.TyperGroup):
    """A group whose help lists each command with the first sentence of its docstring, whole.

    Plain help, not rich: typer's rich help imports rich's markdown, pretty-printing and
    traceback modules, which cost --help half of its start-up; cron and scripts pay it on every
    call. Click's plain list would cut each summary to one 80-column line ("match the..."); the
    sentence is kept and wrapped instead."""

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = [
            (name, command.get_short_help_str(limit=SUMMARY_MAX))
            for name in self.list_commands(ctx)
            if (command := self.get_command(ctx, name)) is not None and not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


# Long enough for any first sentence; a docstring's summary is its first sentence.
SUMMARY_MAX = 400


def command_group(help: str) -> typer.Typer:
    """A group of commands (`metersync customers ...`), with plain help (PlainHelpGroup)."""
    return typer.Typer(help=help, cls=PlainHelpGroup, no_args_is_help=True, rich_markup_mode=None)


def parse_meta(values: list[str] | None, *, option: str = "--meta") -> dict[str, str] | None:
    """`--meta k=v` pairs into a dict; None when the option was not given at all."""
    if not values:
        return None
    out: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} is not of the form key=value", param_hint=option)
        if key in out:
            raise typer.BadParameter(f"key {key!r} is given twice", param_hint=option)
        out[key] = value
    return out


JSON_OPTION = typer.Option(False, "--json", help="Print OpenMeter-shaped JSON instead of a table.")
INCLUDE_DELETED_OPTION = typer.Option(
    False, "--include-deleted", help="Also show tombstones (deleted, not yet purged)."
)
META_OPTION = typer.Option(
    None,
    "--meta",
    metavar="KEY=VALUE",
    help="Metadata entry; repeat for more. Replaces all metadata.",
)


def read_input(file: str) -> bytes:
    """The bytes of FILE, or of standard input for "-" (errors as `open_input`)."""
    with open_input(file) as stream:
        return stream.read()


@contextmanager
def open_input(file: str) -> Iterator[BinaryIO]:
    """FILE opened for reading in binary, or standard input for "-"; a missing or unreadable
    file is a one-line error naming it."""
    if file == "-":
        yield sys.stdin.buffer
        return
    try:
        stream = Path(file).open("rb")  # noqa: SIM115 (closed below, after the caller is done)
    except FileNotFoundError:
        raise InvalidInput([], record=f"FILE: {file!r} does not exist") from None
    except IsADirectoryError:
        raise InvalidInput([], record=f"FILE: {file!r} is a directory") from None
    except OSError as exc:
        raise InvalidInput([], record=f"FILE: {file!r} cannot be read: {exc.strerror}") from None
    with stream:
        yield stream


def input_name(file: str) -> str:
    return "standard input" if file == "-" else repr(file)
