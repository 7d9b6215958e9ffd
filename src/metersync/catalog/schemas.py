"""What the catalog accepts: subjects and customers in OpenMeter's JSON shape, validated.

Field names are OpenMeter's camelCase on the wire (`displayName`, `primaryEmail`,
`usageAttribution.subjectKeys`, `billingAddress.postalCode`) and snake_case in Python; both are
accepted. Every problem in a record is reported at once, each naming its field.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

import pycountry
from email_validator import EmailNotValidError, validate_email
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticCustomError

from metersync.errors import FieldProblem, InvalidInput
from metersync.store.models import DESCRIPTION_MAX, KEY_MAX, NAME_MAX

ADDRESS_FIELD_MAX = 256
PHONE_MAX = 64
# Local bounds that protect the store; each target applies its own, stricter limits when
# planning (Stripe: 50 keys, 40-character keys, 500-character values).
METADATA_MAX_ENTRIES = 256
METADATA_KEY_MAX = 256
METADATA_VALUE_MAX = 4096

# Fields OpenMeter returns or has deprecated: accepted so that an export of an OpenMeter
# instance imports as it is, and ignored. Any other unknown field is an error (a typo).
_IGNORED_FIELDS = frozenset(
    {
        "id",
        "createdAt",
        "updatedAt",
        "annotations",
        "currentSubscriptionId",
        "subscriptions",
        "currentPeriodStart",
        "currentPeriodEnd",
        "stripeCustomerId",
    }
)


def _problem(message: str) -> PydanticCustomError:
    return PydanticCustomError("metersync", message)


# Characters refused, by Unicode category. Cs (lone surrogates, which arrive from invalid UTF-8)
# cannot even be encoded for the database; Cc are control characters; Cf are invisible format
# characters (zero-width space, …) that would let two different keys look the same.
# Multi-line text (descriptions, metadata values) may hold tabs and line breaks, nothing else.
_MULTI_LINE = frozenset({"Cs"})
_SINGLE_LINE = frozenset({"Cs", "Cc"})
_IDENTIFIER = frozenset({"Cs", "Cc", "Cf"})
_LINE_CONTROLS = frozenset("\t\n\r")


def _check_text(value: str, *, max_len: int, refused: frozenset[str] = _SINGLE_LINE) -> str:
    if len(value) > max_len:
        raise _problem(f"must be at most {max_len} characters, got {len(value)}")
    for ch in value:
        category = unicodedata.category(ch)
        if category in refused or (category == "Cc" and ch not in _LINE_CONTROLS):
            raise _problem(_refusal(category, ch))
    return value


def _refusal(category: str, ch: str) -> str:
    if category == "Cs":
        return "is not valid Unicode text (a lone surrogate, often from bytes that are not UTF-8)"
    if category == "Cf":
        return f"must not contain invisible format characters (found U+{ord(ch):04X})"
    return f"must not contain control characters (found U+{ord(ch):04X})"


def check_key(value: str) -> str:
    """A subject or customer key: the rules every door (API, CLI, import) applies."""
    if value == "":
        raise _problem("must not be empty")
    _check_text(value, max_len=KEY_MAX, refused=_IDENTIFIER)
    if value != value.strip():
        raise _problem(f"{value!r} must not start or end with white space")
    return value


def parse_key(value: str) -> str:
    """check_key for a key given on its own (get, delete, update): InvalidInput naming `key`."""
    try:
        return check_key(value)
    except PydanticCustomError as exc:
        raise InvalidInput([FieldProblem("key", exc.message())]) from None


def _blank_to_none(value: Any) -> Any:
    # OpenMeter's own request examples send "" for fields that are not set.
    return None if isinstance(value, str) and value.strip() == "" else value


def _name(value: str) -> str:
    if value.strip() == "":
        raise _problem("must not be empty")
    return _check_text(value, max_len=NAME_MAX)


def _limited(max_len: int, *, multi_line: bool = False) -> AfterValidator:
    refused = _MULTI_LINE if multi_line else _SINGLE_LINE
    return AfterValidator(
        lambda v: None if v is None else _check_text(v, max_len=max_len, refused=refused)
    )


def _email(value: str) -> str:
    _check_text(value, max_len=512, refused=_IDENTIFIER)
    try:
        # test_environment: allow the reserved .test domain used by sandboxes and examples;
        # deliverability (DNS) is never checked, the catalog must work offline.
        return validate_email(value, check_deliverability=False, test_environment=True).normalized
    except EmailNotValidError as exc:
        raise _problem(f"{value!r} is not a valid email address: {exc}") from None


def _currency(value: str) -> str:
    _check_text(value, max_len=8, refused=_IDENTIFIER)
    code = value.strip().upper()
    if len(code) != 3 or pycountry.currencies.get(alpha_3=code) is None:
        raise _problem(f"{value!r} is not an ISO 4217 currency code (such as USD, EUR)")
    return code


def _country(value: str) -> str:
    _check_text(value, max_len=8, refused=_IDENTIFIER)
    code = value.strip().upper()
    if len(code) != 2 or pycountry.countries.get(alpha_2=code) is None:
        raise _problem(f"{value!r} is not an ISO 3166-1 alpha-2 country code (such as US, DE)")
    return code


def _metadata(value: Any) -> Any:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise _problem(f"must be an object of string keys and string values, got {_kind(value)}")
    if len(value) > METADATA_MAX_ENTRIES:
        raise _problem(f"must have at most {METADATA_MAX_ENTRIES} entries, got {len(value)}")
    for key, item in value.items():
        if not isinstance(key, str) or key == "":
            raise _problem("keys must be non-empty strings")
        try:
            _check_text(key, max_len=METADATA_KEY_MAX, refused=_IDENTIFIER)
        except PydanticCustomError as exc:
            raise _problem(f"key {key!r} {exc.message()}") from None
        if not isinstance(item, str):
            raise _problem(f"value of {key!r} must be a string, got {_kind(item)}")
        try:
            _check_text(item, max_len=METADATA_VALUE_MAX, refused=_MULTI_LINE)
        except PydanticCustomError as exc:
            raise _problem(f"value of {key!r} {exc.message()}") from None
    return dict(value)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        list: "an array",
        dict: "an object",
        str: "a string",
    }.get(type(value), type(value).__name__)


Key = Annotated[str, AfterValidator(check_key)]
Name = Annotated[str, AfterValidator(_name)]
Email = Annotated[
    str | None,
    BeforeValidator(_blank_to_none),
    AfterValidator(lambda v: None if v is None else _email(v)),
]
Currency = Annotated[
    str | None,
    BeforeValidator(_blank_to_none),
    AfterValidator(lambda v: None if v is None else _currency(v)),
]
Country = Annotated[
    str | None,
    BeforeValidator(_blank_to_none),
    AfterValidator(lambda v: None if v is None else _country(v)),
]
Metadata = Annotated[dict[str, str], BeforeValidator(_metadata)]
OptionalText = Annotated[str | None, BeforeValidator(_blank_to_none)]


class OpenMeterRecord(BaseModel):
    """A record in OpenMeter's JSON shape: camelCase on the wire, snake_case in Python, unknown
    fields refused, OpenMeter's read-only fields ignored. The entitlement inputs build on it."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
    )

    @model_validator(mode="before")
    @classmethod
    def _drop_read_only(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if k not in _IGNORED_FIELDS}
        return data

    def given(self) -> frozenset[str]:
        """The fields the caller set (partial upserts and updates change only these)."""
        return frozenset(self.model_fields_set)


class SubjectUpsert(OpenMeterRecord):
    """A subject upsert: only the fields given change (OpenMeter's `subjects.upsert`)."""

    key: Key
    display_name: Annotated[
        OptionalText, AfterValidator(lambda v: None if v is None else _name(v))
    ] = None
    metadata: Metadata | None = None
    deleted_at: Any = None

    @model_validator(mode="after")
    def _not_deleted(self) -> SubjectUpsert:
        if self.deleted_at is not None:
            raise _problem("deletedAt is set: deleted subjects are not imported")
        return self


class Address(OpenMeterRecord):
    country: Country = None
    postal_code: Annotated[OptionalText, _limited(ADDRESS_FIELD_MAX)] = None
    state: Annotated[OptionalText, _limited(ADDRESS_FIELD_MAX)] = None
    city: Annotated[OptionalText, _limited(ADDRESS_FIELD_MAX)] = None
    line1: Annotated[OptionalText, _limited(ADDRESS_FIELD_MAX)] = None
    line2: Annotated[OptionalText, _limited(ADDRESS_FIELD_MAX)] = None
    phone_number: Annotated[OptionalText, _limited(PHONE_MAX)] = None


class UsageAttribution(OpenMeterRecord):
    subject_keys: list[Key] = []

    @model_validator(mode="after")
    def _unique(self) -> UsageAttribution:
        # Repeating a subject is harmless; keep the first mention's order.
        deduped = list(dict.fromkeys(self.subject_keys))
        if deduped != self.subject_keys:
            self.subject_keys = deduped
        return self


class CustomerFields(OpenMeterRecord):
    """The fields a customer carries, all optional: the shape of a partial update."""

    key: Annotated[OptionalText, AfterValidator(lambda v: None if v is None else check_key(v))] = (
        None
    )
    name: Name | None = None
    description: Annotated[OptionalText, _limited(DESCRIPTION_MAX, multi_line=True)] = None
    primary_email: Email = None
    currency: Currency = None
    billing_address: Address | None = None
    metadata: Metadata | None = None
    usage_attribution: UsageAttribution | None = None

    @property
    def subject_keys(self) -> list[str]:
        return list(self.usage_attribution.subject_keys) if self.usage_attribution else []


class CustomerUpdate(CustomerFields):
    """A partial update: the given fields are replaced, the others kept.

    Giving `usageAttribution` replaces the customer's whole set of subjects; giving one
    `billingAddress` field replaces that field only; `""` or null clears an optional field.
    """

    @model_validator(mode="after")
    def _name_not_cleared(self) -> CustomerUpdate:
        if "name" in self.model_fields_set and self.name is None:
            raise _problem("name cannot be cleared: a customer always has a name")
        return self


class CustomerCreate(CustomerFields):
    """A whole customer (OpenMeter's `POST /api/v1/customers` body)."""

    name: Name
    deleted_at: Any = None

    @model_validator(mode="after")
    def _key_or_single_subject(self) -> CustomerCreate:
        if self.deleted_at is not None:
            raise _problem("deletedAt is set: deleted customers are not imported")
        if self.key is None:
            # OpenMeter: "Either key or usageAttribution.subjectKeys must be provided."
            # We need a key for the mapping, so only a single subject can stand in for one.
            if len(self.subject_keys) != 1:
                raise PydanticCustomError(
                    "metersync_key",
                    "key is required unless usageAttribution.subjectKeys names exactly one "
                    "subject (whose key then becomes the customer's key)",
                )
            self.key = self.subject_keys[0]
        return self

    @property
    def customer_key(self) -> str:
        assert self.key is not None  # set by the validator above
        return self.key


ModelT = TypeVar("ModelT", bound=BaseModel)

_FRIENDLY = {
    "missing": "is required",
    "extra_forbidden": "is not a known field",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be an array",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "dict_type": "must be an object",
}


def parse(model: type[ModelT], data: Any, *, record: str | None = None) -> ModelT:
    """Validate `data` as `model`, or raise InvalidInput listing every field at fault."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(problems_of(exc), record=record) from None


def problems_of(exc: ValidationError) -> list[FieldProblem]:
    problems = []
    for error in exc.errors():
        loc = list(error["loc"])
        if error["type"] == "metersync_key":
            loc = ["key"]
        message = _FRIENDLY.get(error["type"], error["msg"])
        problems.append(FieldProblem(_dotted(loc), message))
    return problems


def _dotted(loc: list[int | str]) -> str:
    # List positions arrive as ints, field and metadata names as strings (even "1").
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out
