"""Meter values: what each meter whose event type matches reads from an event's data."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from metersync.catalog.meters import Aggregation, Meter, ValuePath
from metersync.usage.ingest._reasons import Rejected, encodable, kind_of, show
from metersync.usage.ingest._rows import json_text
from metersync.usage.reports import STRIPE_VALUE_LIMIT

# A number in a string, as OpenMeter accepts for numeric meters: decimal, optional exponent.
# Not float() alone, which also takes "inf", "nan", "1_000" and surrounding white space.
_DECIMAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)

# Marker for "no value there", where None is a value.
_MISSING: Any = object()


def _finder(path: ValuePath) -> Callable[[Any], Any]:
    """The value at `path` in data, or _MISSING: ValuePath.find, with a shortcut for the usual
    one-field path ("$.tokens"), which every event of the meter goes through."""
    steps = path.steps
    if steps is not None and len(steps) == 1 and isinstance(steps[0], str):
        name = steps[0]

        def one_field(data: Any) -> Any:
            if type(data) is dict:
                return data.get(name, _MISSING)
            return _any_path(path, data)

        return one_field
    return lambda data: _any_path(path, data)


def _any_path(path: ValuePath, data: Any) -> Any:
    found, value = path.find(data)
    return value if found else _MISSING


class MeterRule:
    """How one meter reads an event: COUNT counts it (value 1); SUM, MAX, LATEST, AVG and MIN
    need a finite number (or a string holding one) at value_property, not negative if the meter
    is billed on Stripe; UNIQUE_COUNT needs a single value there, kept as text. group_by paths
    that find nothing group as null."""

    def __init__(self, meter: Meter) -> None:
        self.slug = meter.slug
        self.unique = meter.aggregation is Aggregation.UNIQUE_COUNT
        self.path_text = meter.value.text if meter.value is not None else ""
        self.find = _finder(meter.value) if meter.value is not None else None
        self.groups = tuple((name, _finder(path)) for name, path in meter.groups.items())
        # Stripe meter events take whole non-negative numbers; a negative value could never be
        # reported, so it is refused at the door rather than stuck in the ledger.
        self.non_negative = meter.settings.stripe is not None
        # Billed values must stay exact integers after scaling: doubles hold whole numbers
        # exactly up to 2**53, and the ledger sums them in 64-bit columns.
        self.limit = (
            STRIPE_VALUE_LIMIT / meter.settings.stripe.scale if meter.settings.stripe else None
        )

    def measure(self, data: Any) -> tuple[float | None, str | None, str | None]:
        """(value, value_text, groups as JSON text)."""
        groups = self._groups(data) if self.groups else None
        if self.find is None:  # COUNT: value_property is refused for it
            return 1.0, None, groups
        value = self.find(data)
        if value is _MISSING:
            no_data = " (the event has no data)" if data is None else ""
            raise self._problem(f"is missing{no_data}")
        if self.unique:
            return None, self._unique_value(value), groups
        return self._number(value), None, groups

    def _number(self, value: Any) -> float:
        if not _is_number(value):
            raise self._problem(f"is {show(value)}, not a number")
        try:
            number = float(value)
        except OverflowError:  # an integer beyond a double's range
            raise self._problem(f"is {show(value)}, too large a number") from None
        if not math.isfinite(number):
            raise self._problem(f"is {show(value)}, not a finite number")
        if number < 0 and self.non_negative:
            raise self._problem(
                f"is {show(value)}, a negative number: this meter is billed on a Stripe meter, "
                "and Stripe meter events take only whole non-negative numbers"
            )
        if self.limit is not None and number > self.limit:
            raise self._problem(
                f"is {show(value)}, too large to bill exactly (at most {self.limit:.6g} for "
                "this meter's scale)"
            )
        return number

    def _unique_value(self, value: Any) -> str:
        if isinstance(value, str):
            if "\x00" in value or not (value.isascii() or encodable(value)):
                raise self._problem("is text that cannot be stored (a NUL or a lone surrogate)")
            return value
        if value is None:
            raise self._problem("is null, not a value to count")
        if isinstance(value, (list, tuple, Mapping)):
            raise self._problem(f"is {kind_of(value)}, not a single value to count")
        if isinstance(value, float) and not math.isfinite(value):
            raise self._problem(f"is {show(value)}, not a finite number")
        text = json_text(value, f"meter {self.slug}: {self.path_text}")
        assert text is not None
        return text

    def _groups(self, data: Any) -> str | None:
        groups = {}
        for name, find in self.groups:
            value = find(data)
            groups[name] = None if value is _MISSING else value
        return json_text(groups, f"meter {self.slug}: group_by")

    def _problem(self, problem: str) -> Rejected:
        return Rejected(f"meter {self.slug}: {self.path_text} {problem}")


def _is_number(value: Any) -> bool:
    """A JSON number (not a boolean), or a string holding a decimal number."""
    kind = type(value)
    if kind is float or kind is int:  # the common case first: exact types, no isinstance walk
        return True
    if kind is str:
        return _DECIMAL.fullmatch(value) is not None
    # int and float subclasses (from ingest_events), but bool, which JSON keeps apart.
    return isinstance(value, (int, float)) and not isinstance(value, bool)
