"""What the entitlement doors accept, in OpenMeter's JSON shapes (camelCase on the wire,
snake_case in Python), validated: features, entitlement create inputs (metered, boolean,
static), grants and resets. Every problem in a request is reported at once, each naming its
field (`catalog.schemas.parse`). Amounts become Decimal from the number's shortest text, so
a grant of 0.1 is 0.1, not the float nearest to it.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BeforeValidator, Field, model_validator
from pydantic_core import PydanticCustomError

from metersync.catalog.schemas import Metadata, Name, OpenMeterRecord, parse
from metersync.entitlements._model import EXPIRATION_UNITS
from metersync.entitlements._periods import Interval
from metersync.errors import FieldProblem, InvalidInput

KEY_PATTERN = r"^[a-z0-9]+(?:_[a-z0-9]+)*$"
ULID_PATTERN = r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$"
# Twelve digits after the point: a balance is figured in Decimal, and an amount with more
# precision than a double carries is a typo or an attack on the arithmetic.
_MAX_AMOUNT = Decimal("1e15")
# An interval must fit after this time: a year does (to 9999-12-31), a longer one does not.
_LONGEST_FROM = datetime(9998, 12, 31, 23, 59, tzinfo=UTC)


def _problem(message: str) -> PydanticCustomError:
    return PydanticCustomError("metersync", message)


def _decimal(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise _problem("must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise _problem("must be a finite number")
    try:
        number = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except ArithmeticError:
        raise _problem(f"{value!r} is not a number") from None
    if not number.is_finite():
        raise _problem("must be a finite number")
    if number < 0:
        raise _problem(f"must not be negative, got {value}")
    if number > _MAX_AMOUNT:
        raise _problem(f"must be at most {_MAX_AMOUNT:f}, got {value}")
    return number.normalize() if number == number.to_integral() else number


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise _problem("must be an RFC 3339 date-time with a time zone (Z or +hh:mm)")
    return value


def _interval(value: Any) -> str:
    if not isinstance(value, str):
        raise _problem("must be DAY, WEEK, MONTH, YEAR or an ISO-8601 duration")
    try:
        interval = Interval.parse(value)
        # Periods are figured for times into 9998: a longer interval was stored, and then
        # every read of it overflowed the calendar (P99999Y was a 500).
        _LONGEST_FROM + interval.times(1)
    except InvalidInput as exc:  # keep Interval.parse's words, under this field's name
        raise _problem(str(exc).removeprefix("interval: ")) from None
    except (OverflowError, ValueError):  # isodate's C ints: P9888534.5Y28578982290755W too
        shown = repr(value) if len(value) <= 40 else repr(value[:40]) + "…"
        raise _problem(f"{shown} is longer than a year (YEAR, P1Y at most)") from None
    return value


Amount = Annotated[Decimal, BeforeValidator(_decimal)]
Moment = Annotated[datetime, AfterValidator(_aware)]
Priority = Annotated[int, Field(ge=1, le=255, strict=True)]
FeatureKey = Annotated[str, Field(min_length=1, max_length=64, pattern=KEY_PATTERN)]
UlidText = Annotated[str, Field(pattern=ULID_PATTERN)]


class UsagePeriodInput(OpenMeterRecord):
    interval: Annotated[str, BeforeValidator(_interval)]
    anchor: Moment | None = None


class ExpirationInput(OpenMeterRecord):
    duration: Literal["HOUR", "DAY", "WEEK", "MONTH", "YEAR"]
    count: Annotated[int, Field(ge=1, le=1000, strict=True)]


class FilterString(OpenMeterRecord):
    """OpenMeter's advanced group-by filter; only equality is counted here."""

    eq: str | None = Field(default=None, alias="$eq")
    in_: list[str] | None = Field(default=None, alias="$in")

    @model_validator(mode="after")
    def _one_value(self) -> FilterString:
        if self.eq is None and (self.in_ is None or len(self.in_) != 1):
            raise _problem("only {$eq: value} (or $in with one value) is supported")
        return self

    @property
    def value(self) -> str:
        if self.eq is not None:
            return self.eq
        assert self.in_ is not None
        return self.in_[0]


class FeatureCreate(OpenMeterRecord):
    key: FeatureKey
    name: Name
    metadata: Metadata = Field(default_factory=dict)
    meter_slug: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    meter_group_by_filters: dict[str, str] | None = None
    advanced_meter_group_by_filters: dict[str, FilterString] | None = None

    @property
    def group_filters(self) -> dict[str, str]:
        filters = dict(self.meter_group_by_filters or {})
        for name, condition in (self.advanced_meter_group_by_filters or {}).items():
            filters[name] = condition.value
        return filters

    @model_validator(mode="after")
    def _filters_need_a_meter(self) -> FeatureCreate:
        if self.group_filters and self.meter_slug is None:
            raise _problem("meterGroupByFilters need a meterSlug")
        return self


class GrantCreate(OpenMeterRecord):
    amount: Amount
    effective_at: Moment
    priority: Priority = 1
    min_rollover_amount: Amount = Decimal(0)
    max_rollover_amount: Amount | None = None
    expiration: ExpirationInput | None = None
    recurrence: UsagePeriodInput | None = None
    metadata: Metadata = Field(default_factory=dict)
    annotations: dict[str, Any] | None = None  # accepted and not kept (OpenMeter's own)

    @model_validator(mode="after")
    def _rollover_bounds(self) -> GrantCreate:
        top = self.max_rollover_amount
        if top is not None and self.min_rollover_amount > top:
            raise _problem(
                f"minRolloverAmount {self.min_rollover_amount} is above maxRolloverAmount {top}"
            )
        return self

    @model_validator(mode="after")
    def _expiry_fits(self) -> GrantCreate:
        # effectiveAt is ceiled to its minute and the expiration added to it: near the year
        # 9999 that overflowed the calendar (a 500).
        expiration = self.expiration
        try:
            end = self.effective_at + timedelta(minutes=1)
            if expiration is not None:
                end += EXPIRATION_UNITS[expiration.duration](expiration.count)
        except (OverflowError, ValueError):
            after = "" if expiration is None else f" and {expiration.count} {expiration.duration}"
            raise _problem(
                f"effectiveAt {self.effective_at.isoformat()}{after} ends after the year 9999"
            ) from None
        return self


class IssueInput(OpenMeterRecord):
    amount: Amount
    priority: Priority = 1


MeasureFrom = Literal["CURRENT_PERIOD_START", "NOW"] | Moment


class _EntitlementCreate(OpenMeterRecord):
    feature_key: FeatureKey | None = None
    feature_id: UlidText | None = None
    metadata: Metadata = Field(default_factory=dict)

    @model_validator(mode="after")
    def _names_a_feature(self) -> _EntitlementCreate:
        if self.feature_key is None and self.feature_id is None:
            raise _problem("featureKey or featureId is required")
        return self


class MeteredCreate(_EntitlementCreate):
    type: Literal["metered"]
    usage_period: UsagePeriodInput
    is_soft_limit: bool = False
    measure_usage_from: MeasureFrom | None = None
    preserve_overage_at_reset: bool = False
    issue_after_reset: Amount | None = None  # deprecated in OpenMeter: `issue`
    issue_after_reset_priority: Priority | None = None
    issue: IssueInput | None = None
    grants: list[GrantCreate] = Field(default_factory=list)

    @property
    def issue_terms(self) -> IssueInput | None:
        if self.issue is not None:
            return self.issue
        if self.issue_after_reset is not None:
            return IssueInput(
                amount=self.issue_after_reset, priority=self.issue_after_reset_priority or 1
            )
        return None


class BooleanCreate(_EntitlementCreate):
    type: Literal["boolean"]
    usage_period: UsagePeriodInput | None = None


def _json_text(value: Any) -> str:
    if not isinstance(value, str):
        raise _problem("must be a string holding JSON")
    try:
        json.loads(value)
    except ValueError as exc:
        raise _problem(f"is not JSON: {exc}") from None
    return value


class StaticCreate(_EntitlementCreate):
    type: Literal["static"]
    config: Annotated[str, BeforeValidator(_json_text)]
    usage_period: UsagePeriodInput | None = None


EntitlementCreate = MeteredCreate | BooleanCreate | StaticCreate
_KINDS: dict[str, type[MeteredCreate] | type[BooleanCreate] | type[StaticCreate]] = {
    "metered": MeteredCreate,
    "boolean": BooleanCreate,
    "static": StaticCreate,
}


class ResetInput(OpenMeterRecord):
    effective_at: Moment | None = None
    retain_anchor: bool = False
    preserve_overage: bool | None = None


def entitlement_input(data: Any) -> EntitlementCreate:
    """An entitlement create input of the kind its `type` names."""
    if not isinstance(data, dict):
        raise InvalidInput([FieldProblem("body", "must be an entitlement object")])
    kind = data.get("type")
    model = _KINDS.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise InvalidInput([FieldProblem("type", "must be metered, boolean or static")])
    return parse(model, data)


__all__ = [
    "EXPIRATION_UNITS",
    "BooleanCreate",
    "EntitlementCreate",
    "ExpirationInput",
    "FeatureCreate",
    "GrantCreate",
    "IssueInput",
    "MeteredCreate",
    "ResetInput",
    "StaticCreate",
    "UsagePeriodInput",
    "entitlement_input",
]
