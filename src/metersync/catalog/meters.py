"""Meter definitions, in OpenMeter's meter shape plus a `stripe` section, and the value paths
they read from each event's `data`.

```toml
[[meters]]
slug = "tokens"
event_type = "prompt"
aggregation = "SUM"            # SUM COUNT UNIQUE_COUNT MAX LATEST AVG MIN
value_property = "$.tokens"    # JSONPath into data; not for COUNT
group_by = { model = "$.model" }
[meters.stripe]
event_name = "tokens"          # the Stripe billing meter's event_name
formula = "sum"                # optional: sum for SUM, COUNT, UNIQUE_COUNT; last for MAX, LATEST
scale = 1                      # values are multiplied by this and must then be whole numbers
```

Why these formulas: metersync pushes deltas of aggregates, not raw events. A Stripe `count`
meter would count pushes, so COUNT goes to a `sum` meter as counted deltas. MAX and LATEST are
period-to-date values, which only a `last` meter keeps. AVG and MIN have no Stripe formula that
deltas could feed: a meter with those and a `stripe` section is a configuration error.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from jsonpath_ng.exceptions import JSONPathError
from jsonpath_ng.jsonpath import Child, Fields, Index, Root
from jsonpath_ng.parser import parse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SLUG = re.compile(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$")
SLUG_MAX = 64
STRIPE_EVENT_NAME_MAX = 100


class Aggregation(StrEnum):
    SUM = "SUM"
    COUNT = "COUNT"
    UNIQUE_COUNT = "UNIQUE_COUNT"
    MAX = "MAX"
    LATEST = "LATEST"
    AVG = "AVG"
    MIN = "MIN"

    @property
    def numeric(self) -> bool:
        """Reads a number from value_property (UNIQUE_COUNT reads any value, COUNT none)."""
        return self not in (Aggregation.COUNT, Aggregation.UNIQUE_COUNT)


# The Stripe formula each aggregation's pushes need (see the module docstring).
STRIPE_FORMULA = {
    Aggregation.SUM: "sum",
    Aggregation.COUNT: "sum",
    Aggregation.UNIQUE_COUNT: "sum",
    Aggregation.MAX: "last",
    Aggregation.LATEST: "last",
}


class ValuePath:
    """A JSONPath into an event's `data`, parsed once by jsonpath-ng. A plain chain of fields
    and indexes (`$.a.b`, `$.items[0]`, `$['a.b']`) is walked directly, because ingest reads
    it for every event; anything else goes through jsonpath-ng and must match one value."""

    def __init__(self, text: str) -> None:
        try:
            self.expression = parse(text)
        except JSONPathError as exc:
            raise ValueError(f"{text!r} is not a JSONPath expression: {exc}") from None
        self.text = text
        self.steps = _steps(self.expression)

    def find(self, data: Any) -> tuple[bool, Any]:
        """(found, value)."""
        if self.steps is not None:
            value = data
            for step in self.steps:
                if isinstance(step, str):
                    if not isinstance(value, dict) or step not in value:
                        return False, None
                    value = value[step]
                else:
                    if not isinstance(value, list) or not -len(value) <= step < len(value):
                        return False, None
                    value = value[step]
            return True, value
        matches = self.expression.find(data)
        if len(matches) != 1:
            return False, None
        return True, matches[0].value

    def __repr__(self) -> str:
        return f"ValuePath({self.text!r})"


def _steps(expression: Any) -> tuple[str | int, ...] | None:
    if isinstance(expression, Root):
        return ()
    if isinstance(expression, Child):
        left = _steps(expression.left)
        right = _steps(expression.right)
        return None if left is None or right is None else left + right
    if isinstance(expression, Fields) and len(expression.fields) == 1:
        name = expression.fields[0]
        return None if name == "*" else (name,)
    if isinstance(expression, Index) and len(getattr(expression, "indices", [0])) == 1:
        index = getattr(expression, "index", None)
        if index is None:
            index = expression.indices[0]
        return (int(index),)
    return None


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StripeMeterSettings(_Model):
    event_name: str = Field(min_length=1, max_length=STRIPE_EVENT_NAME_MAX)
    formula: str | None = None
    scale: float = Field(default=1.0, gt=0)
    display_name: str | None = Field(default=None, max_length=250)


class MeterSettings(_Model):
    slug: str = Field(max_length=SLUG_MAX)
    event_type: str = Field(min_length=1, max_length=256)
    aggregation: Aggregation
    value_property: str | None = None
    group_by: dict[str, str] = Field(default_factory=dict)
    description: str | None = None
    stripe: StripeMeterSettings | None = None

    @field_validator("slug")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError(
                f"{value!r} is not a slug: lowercase letters and digits, separated by _ or -"
            )
        return value

    @field_validator("aggregation", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("value_property")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None:
            ValuePath(value)
        return value

    @field_validator("group_by")
    @classmethod
    def _group_paths(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            try:
                ValuePath(path)
            except ValueError as exc:
                raise ValueError(f"group_by.{name}: {exc}") from None
        return value

    @model_validator(mode="after")
    def _consistent(self) -> MeterSettings:
        if self.aggregation is Aggregation.COUNT:
            if self.value_property is not None:
                raise ValueError("value_property: a COUNT meter counts events and reads no value")
        elif self.value_property is None:
            raise ValueError(f"value_property: required for a {self.aggregation} meter")
        if self.stripe is not None:
            wanted = STRIPE_FORMULA.get(self.aggregation)
            if wanted is None:
                raise ValueError(
                    f"stripe: {self.aggregation} meters cannot be billed on a Stripe meter "
                    "(Stripe's formulas are sum, count and last, and none of them can take "
                    f"{self.aggregation} updates); remove the stripe section or change the "
                    "aggregation"
                )
            if self.stripe.formula is not None and self.stripe.formula != wanted:
                raise ValueError(
                    f"stripe.formula: {self.aggregation} meters need a {wanted!r} Stripe meter "
                    f"(metersync pushes {'deltas' if wanted == 'sum' else 'period-to-date values'}"
                    f"), not {self.stripe.formula!r}"
                )
        return self

    @property
    def stripe_formula(self) -> str | None:
        return STRIPE_FORMULA.get(self.aggregation) if self.stripe is not None else None


@dataclass(frozen=True)
class Meter:
    """A meter ready for ingest: its settings and its compiled paths."""

    settings: MeterSettings
    value: ValuePath | None
    groups: Mapping[str, ValuePath]

    @classmethod
    def of(cls, settings: MeterSettings) -> Meter:
        return cls(
            settings,
            ValuePath(settings.value_property) if settings.value_property else None,
            {name: ValuePath(path) for name, path in settings.group_by.items()},
        )

    @property
    def slug(self) -> str:
        return self.settings.slug

    @property
    def aggregation(self) -> Aggregation:
        return self.settings.aggregation


def check_unique(meters: list[MeterSettings]) -> None:
    """Slugs and Stripe event names are unique across meters."""
    seen: dict[str, int] = {}
    names: dict[str, int] = {}
    for index, meter in enumerate(meters):
        if meter.slug in seen:
            raise ValueError(
                f"meters[{index}].slug: {meter.slug!r} is also meters[{seen[meter.slug]}]"
            )
        seen[meter.slug] = index
        if meter.stripe is not None:
            name = meter.stripe.event_name
            if name in names:
                raise ValueError(
                    f"meters[{index}].stripe.event_name: {name!r} is also meters[{names[name]}]'s"
                )
            names[name] = index
