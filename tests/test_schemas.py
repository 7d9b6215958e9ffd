"""Input validation (pure, no database): every problem names its field."""

from __future__ import annotations

from typing import Any

import pytest

from metersync.catalog import CustomerCreate, SubjectUpsert, parse
from metersync.catalog.schemas import parse_key
from metersync.errors import InvalidInput


def problems(model: Any, data: dict[str, Any]) -> list[str]:
    with pytest.raises(InvalidInput) as info:
        parse(model, data)
    return [str(p) for p in info.value.problems]


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"key": "\ud800"}, "key: is not valid Unicode text"),
        ({"key": "b", "displayName": "\udcff"}, "displayName: is not valid Unicode text"),
        ({"key": "b", "metadata": {"x": "\ud800"}}, "metadata: value of 'x' is not valid Unicode"),
        ({"key": "a\u200bb"}, "key: must not contain invisible format characters (found U+200B)"),
        ({"key": "a\x00"}, "key: must not contain control characters (found U+0000)"),
        (
            {"key": "b", "metadata": {"k\x00": "v"}},
            "metadata: key 'k\\x00' must not contain control",
        ),
        (
            {"key": "b", "metadata": {"k": "a\x00b"}},
            "metadata: value of 'k' must not contain control",
        ),
        (
            {"key": "b", "metadata": {"k": 1}},
            "metadata: value of 'k' must be a string, got a number",
        ),
        (
            {"key": "b", "metadata": {"k": "v" * 4097}},
            "metadata: value of 'k' must be at most 4096",
        ),
        (
            {"key": "b", "metadata": {f"k{i}": "v" for i in range(257)}},
            "metadata: must have at most 256",
        ),
        ({"key": "b", "metadata": ["a"]}, "metadata: must be an object of string keys"),
        ({"key": 5}, "key: must be a string"),
        ({"key": "b", "1": 2}, "1: is not a known field"),
        ({}, "key: is required"),
    ],
)
def test_subject_problems(data: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(SubjectUpsert, data)), problems(
        SubjectUpsert, data
    )


def test_multi_line_text_is_allowed_where_it_makes_sense() -> None:
    customer = parse(CustomerCreate, {"key": "c", "name": "C", "description": "one\ntwo\tthree"})
    assert customer.description == "one\ntwo\tthree"
    subject = parse(SubjectUpsert, {"key": "s", "metadata": {"note": "line 1\r\nline 2"}})
    assert subject.metadata == {"note": "line 1\r\nline 2"}
    assert problems(CustomerCreate, {"key": "c", "name": "two\nlines"}) == [
        "name: must not contain control characters (found U+000A)"
    ]


def test_customer_problems_are_all_reported_at_once() -> None:
    found = problems(
        CustomerCreate,
        {
            "key": "k" * 300,
            "name": "",
            "primaryEmail": "nope",
            "currency": "XYZ",
            "billingAddress": {"country": "ZZ", "city": 3},
            "usageAttribution": {"subjectKeys": ["ok", ""]},
        },
    )
    assert found == [
        "key: must be at most 256 characters, got 300",
        "name: must not be empty",
        "primaryEmail: 'nope' is not a valid email address: An email address must have an @-sign.",
        "currency: 'XYZ' is not an ISO 4217 currency code (such as USD, EUR)",
        "billingAddress.country: 'ZZ' is not an ISO 3166-1 alpha-2 country code (such as US, DE)",
        "billingAddress.city: must be a string",
        "usageAttribution.subjectKeys[1]: must not be empty",
    ]


def test_normalisation() -> None:
    customer = parse(
        CustomerCreate,
        {
            "key": "c",
            "name": "C",
            "primaryEmail": "Billing@ACME.test",
            "currency": "usd",
            "billingAddress": {"country": "de", "city": ""},
            "usageAttribution": {"subjectKeys": ["a", "b", "a"]},
        },
    )
    assert customer.primary_email == "Billing@acme.test"
    assert customer.currency == "USD"
    assert customer.billing_address is not None
    assert customer.billing_address.country == "DE" and customer.billing_address.city is None
    assert customer.subject_keys == ["a", "b"]


def test_read_only_fields_of_an_openmeter_export_are_ignored() -> None:
    subject = parse(
        SubjectUpsert,
        {
            "key": "s",
            "id": "01G65Z755AFWAKHE12NY0CQ9FH",
            "createdAt": "2024-01-01T01:01:01.001Z",
            "stripeCustomerId": "cus_x",
            "currentPeriodStart": "2023-01-01T00:00:00Z",
        },
    )
    assert subject.key == "s"
    assert problems(SubjectUpsert, {"key": "s", "deletedAt": "2024-01-01T00:00:00Z"}) == [
        "deletedAt is set: deleted subjects are not imported"
    ]


def test_parse_key_names_the_field() -> None:
    assert parse_key("acme") == "acme"
    with pytest.raises(InvalidInput, match=r"^key: must be at most 256 characters, got 257$"):
        parse_key("k" * 257)
