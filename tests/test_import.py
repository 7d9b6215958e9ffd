"""`metersync import` semantics through the Python API, on both databases."""

from __future__ import annotations

import json

import pytest

from metersync.catalog import Catalog, Outcome, import_records, read_records
from metersync.catalog.importer import RecordKind
from metersync.errors import InvalidInput

# The request body of `POST /api/v1/customers` from the Konnect customers page (seed 001),
# with its placeholders filled in.
SEED_CUSTOMER_BODY = {
    "name": "ACME Inc.",
    "description": "",
    "metadata": {"externalId": "019142cc-a016-796a-8113-1a942fecd26d"},
    "key": "",
    "usageAttribution": {"subjectKeys": ["acme-subject"]},
    "primaryEmail": "",
    "currency": "USD",
    "billingAddress": {
        "country": "US",
        "postalCode": "",
        "state": "",
        "city": "",
        "line1": "",
        "line2": "",
        "phoneNumber": "",
    },
}

NDJSON = "\n".join(
    [
        json.dumps(
            {"key": "acme", "name": "ACME", "usageAttribution": {"subjectKeys": ["d1", "d2"]}}
        ),
        '{"key": "broken", "name": ',
        json.dumps({"key": "d1", "displayName": "Department 1"}),
        "",
        json.dumps({"key": "bad", "name": "Bad", "primaryEmail": "not-an-email"}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"key": "x" * 300}),
        json.dumps({"key": "lonely", "displayName": "Lonely device"}),
        json.dumps({"key": "typo", "nmae": "Typo"}),
    ]
)


def test_ndjson_rejects_bad_lines_one_by_one_and_keeps_the_rest(catalog: Catalog) -> None:
    report = import_records(catalog, read_records(NDJSON))
    assert [str(r) for r in report.rejected] == [
        "line 2: record: not valid JSON at column 27: Expecting value",
        "line 5: customer 'bad': primaryEmail: 'not-an-email' is not a valid email address: "
        "An email address must have an @-sign.",
        "line 6: record: must be a JSON object (a subject or a customer)",
        "line 7: subject '" + "x" * 60 + "': key: must be at most 256 characters, got 300",
        "line 9: subject 'typo': nmae: is not a known field",
    ]
    assert report.count(RecordKind.CUSTOMER, Outcome.CREATED) == 1
    assert report.count(RecordKind.SUBJECT, Outcome.UPDATED) == 1  # d1, created by acme
    assert report.count(RecordKind.SUBJECT, Outcome.CREATED) == 1  # lonely
    assert catalog.get_customer("acme").subject_keys == ("d1", "d2")
    assert catalog.get_subject("d1").display_name == "Department 1"
    assert catalog.get_customer("lonely").auto_created


def test_reimport_changes_nothing(catalog: Catalog) -> None:
    import_records(catalog, read_records(NDJSON))
    mark = catalog.changes_since(0).high_water
    again = import_records(catalog, read_records(NDJSON))
    assert {outcome for (_, outcome) in again.outcomes} == {Outcome.UNCHANGED}
    assert len(again.rejected) == 5
    changes = catalog.changes_since(mark)
    assert (changes.subjects, changes.customers) == ([], [])


def test_seed_customer_request_body(catalog: Catalog) -> None:
    report = import_records(catalog, read_records(json.dumps(SEED_CUSTOMER_BODY)))
    assert report.rejected == []
    customer = catalog.get_customer("acme-subject")
    assert customer.name == "ACME Inc."
    assert customer.subject_keys == ("acme-subject",)
    assert customer.metadata == {"externalId": "019142cc-a016-796a-8113-1a942fecd26d"}
    assert customer.billing_address.country == "US"
    assert customer.billing_address.city is None and customer.primary_email is None
    # The body exactly as printed in the seed has an empty name, which OpenMeter refuses too.
    unfilled = dict(
        SEED_CUSTOMER_BODY, name="", usageAttribution={"subjectKeys": ["$YOUR-SUBJECT"]}
    )
    rejected = import_records(catalog, read_records(json.dumps(unfilled))).rejected
    assert [r.reason for r in rejected] == ["name: must not be empty"]


def test_sdk_subjects_upsert_shape_and_openmeter_exports(catalog: Catalog) -> None:
    # openmeter.subjects.upsert([{key, displayName, metadata}]) from the OpenMeter subjects page
    body = [{"key": "customer-1", "displayName": "ACME", "metadata": {}}]
    assert import_records(catalog, read_records(json.dumps(body))).rejected == []
    exported = [c.to_openmeter() for c in catalog.list_customers()] + [
        s.to_openmeter() for s in catalog.list_subjects()
    ]
    # An export (with id, createdAt, …) imports again without change.
    report = import_records(catalog, read_records(json.dumps(exported)))
    assert report.rejected == []
    assert {outcome for (_, outcome) in report.outcomes} == {Outcome.UNCHANGED}


def test_customers_are_imported_before_subjects(catalog: Catalog) -> None:
    sectioned = {
        "subjects": [{"key": "d1", "displayName": "Dept 1"}],
        "customers": [{"key": "acme", "name": "ACME", "usageAttribution": {"subjectKeys": ["d1"]}}],
    }
    as_array = sectioned["subjects"] + sectioned["customers"]
    for text in (json.dumps(sectioned), json.dumps(as_array)):
        report = import_records(catalog, read_records(text))
        assert report.rejected == []
        # No placeholder customer "d1" ever existed, not even as a tombstone.
        assert [c.key for c in catalog.list_customers(include_deleted=True)] == ["acme"]
        assert catalog.get_subject("d1").display_name == "Dept 1"


def test_conflicts_are_reported_per_record(catalog: Catalog) -> None:
    records = [
        {"key": "acme", "name": "ACME", "usageAttribution": {"subjectKeys": ["d1"]}},
        {"key": "globex", "name": "Globex", "usageAttribution": {"subjectKeys": ["d1"]}},
    ]
    report = import_records(catalog, read_records(json.dumps(records)))
    assert [r.where for r in report.rejected] == ["record 2"]
    assert "already belongs to customer 'acme'" in report.rejected[0].reason


@pytest.mark.parametrize(
    ("text", "message"),
    [("", "no records"), ("   \n", "no records"), ('[{"key": "a"},', "not valid JSON at line 1")],
)
def test_unusable_files(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        read_records(text)


def test_same_key_customer_and_subject_import_is_idempotent(catalog: Catalog) -> None:
    # The file says customer x has no subjects, and subject x exists: the auto-customer rule
    # must not attach x to x, or the next import would detach it again.
    text = json.dumps(
        [
            {"key": "x", "name": "X Corp", "usageAttribution": {"subjectKeys": []}},
            {"key": "x", "displayName": "X device"},
        ]
    )
    import_records(catalog, read_records(text))
    assert catalog.get_customer("x").subject_keys == ()
    assert catalog.get_subject("x").customer_key is None
    again = import_records(catalog, read_records(text))
    assert {outcome for (_, outcome) in again.outcomes} == {Outcome.UNCHANGED}


def test_a_broken_pretty_printed_document_is_rejected_whole(catalog: Catalog) -> None:
    text = json.dumps(
        {"customers": [{"key": "y", "name": "Y"}], "subjects": [{"key": "s"}]}, indent=2
    ).replace("]\n}", "],\n}")
    with pytest.raises(InvalidInput, match="not valid JSON at line"):
        read_records(text)
    ndjson_with_bad_first_line = '{"key": "a", \n{"key": "b"}\n'
    assert [r.unreadable is None for r in read_records(ndjson_with_bad_first_line)] == [False, True]


def test_deep_nesting_and_byte_order_marks() -> None:
    with pytest.raises(InvalidInput, match="nested too deeply"):
        read_records("[" * 100_000 + "]" * 100_000)
    lines = read_records('{"key": "a"}\n' + "[" * 100_000 + "]" * 100_000 + "\n")
    assert lines[1].unreadable == "JSON nested too deeply to read"
    assert read_records('\ufeff[{"key": "a"}]')[0].data == {"key": "a"}
