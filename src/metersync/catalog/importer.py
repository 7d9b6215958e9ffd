"""`metersync import`: subjects and customers from a file, in OpenMeter's JSON shapes.

Accepted layouts: a JSON array of records; NDJSON (one record per line); a single record (such
as the body of `POST /api/v1/customers`); or an object `{"subjects": [...], "customers": [...]}`.
A record is a customer when it has any customer-only field (`name`, `usageAttribution`,
`primaryEmail`, …) and a subject otherwise.

Each record is written in its own transaction: a bad record is reported (where, which, why) and
the rest still land. Customers are written before subjects, so a subject that a customer in the
same file claims never gets an auto-created customer of its own in between. Customers are
replaced whole (a field left out is cleared) and subjects upserted, so importing the same file
again changes nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from metersync.catalog.schemas import CustomerCreate, SubjectUpsert, parse
from metersync.catalog.service import Catalog
from metersync.catalog.views import Outcome
from metersync.errors import InvalidInput, MetersyncError

_CUSTOMER_ONLY = frozenset(
    {
        "name",
        "description",
        "usageAttribution",
        "usage_attribution",
        "primaryEmail",
        "primary_email",
        "currency",
        "billingAddress",
        "billing_address",
    }
)


class RecordKind(StrEnum):
    SUBJECT = "subject"
    CUSTOMER = "customer"


@dataclass(frozen=True)
class SourceRecord:
    where: str  # "line 4", "record 2", "customers[0]": how a person finds it in the file
    order: int
    data: Any = None
    kind: RecordKind | None = None
    unreadable: str | None = None  # why the text could not be read as JSON


@dataclass(frozen=True)
class Rejection:
    where: str
    what: str  # "customer 'acme'", or "record" when even the key is unknown
    reason: str
    order: int = 0

    def __str__(self) -> str:
        return f"{self.where}: {self.what}: {self.reason}"


@dataclass
class ImportReport:
    outcomes: Counter[tuple[RecordKind, Outcome]] = field(default_factory=Counter)
    rejected: list[Rejection] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def imported(self) -> int:
        return sum(self.outcomes.values())

    def count(self, kind: RecordKind, outcome: Outcome) -> int:
        return self.outcomes[(kind, outcome)]

    def summary(self) -> dict[str, Any]:
        return {
            kind.value + "s": {
                outcome.value: self.count(kind, outcome)
                for outcome in (Outcome.CREATED, Outcome.UPDATED, Outcome.UNCHANGED)
            }
            for kind in RecordKind
        } | {"rejected": len(self.rejected)}


def read_records(text: str) -> list[SourceRecord]:
    """Split a file into records; raises InvalidInput only when the file as a whole is unusable."""
    stripped = text.removeprefix("\ufeff").strip()
    if not stripped:
        raise InvalidInput([], record="the file holds no records")
    try:
        whole = json.loads(stripped)
    except RecursionError:
        raise InvalidInput([], record="JSON nested too deeply to read") from None
    except json.JSONDecodeError as exc:
        if _is_one_document(stripped):
            # A broken pretty-printed document cannot be split into records reliably: reading
            # it line by line would import whichever lines happen to be valid on their own.
            raise InvalidInput(
                [], record=f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
            ) from None
        return _ndjson(stripped)
    if isinstance(whole, list):
        return [SourceRecord(f"record {i}", i, item) for i, item in enumerate(whole, start=1)]
    if isinstance(whole, dict) and _is_sectioned(whole):
        return _sections(whole)
    return [SourceRecord("record 1", 1, whole)]


def _is_one_document(text: str) -> bool:
    """A JSON array, or an object spread over lines (its first line opens a structure)."""
    first_line = text.split("\n", 1)[0].rstrip()
    return text.startswith("[") or first_line.endswith(("{", "["))


def _ndjson(text: str) -> list[SourceRecord]:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(SourceRecord(f"line {number}", number, json.loads(line)))
        except json.JSONDecodeError as exc:
            records.append(
                SourceRecord(
                    f"line {number}",
                    number,
                    unreadable=f"not valid JSON at column {exc.colno}: {exc.msg}",
                )
            )
        except RecursionError:
            records.append(
                SourceRecord(f"line {number}", number, unreadable="JSON nested too deeply to read")
            )
    return records


def _is_sectioned(data: dict[str, Any]) -> bool:
    return (
        bool(data)
        and set(data) <= {"subjects", "customers"}
        and all(isinstance(v, list) for v in data.values())
    )


def _sections(data: dict[str, Any]) -> list[SourceRecord]:
    records = []
    order = 0
    for section, kind in (("customers", RecordKind.CUSTOMER), ("subjects", RecordKind.SUBJECT)):
        for index, item in enumerate(data.get(section, [])):
            order += 1
            records.append(SourceRecord(f"{section}[{index}]", order, item, kind))
    return records


def kind_of(record: SourceRecord) -> RecordKind:
    if record.kind is not None:
        return record.kind
    if isinstance(record.data, dict) and _CUSTOMER_ONLY.intersection(record.data):
        return RecordKind.CUSTOMER
    return RecordKind.SUBJECT


def import_records(catalog: Catalog, records: list[SourceRecord]) -> ImportReport:
    report = ImportReport()
    # Customers first (see the module docstring); rejections are reported in file order.
    ordered = sorted(records, key=lambda r: (kind_of(r) is not RecordKind.CUSTOMER, r.order))
    # Where the file describes a customer, it says which subjects that customer has: a subject
    # of the same key must not join it through the auto-customer rule, or the next import of
    # the same file would take it away again.
    described = {key for r in ordered if (key := _customer_key(r)) is not None}
    for record in ordered:
        _import_one(catalog, record, report, described_customers=described)
    report.rejected.sort(key=lambda r: r.order)
    return report


def _customer_key(record: SourceRecord) -> str | None:
    if kind_of(record) is not RecordKind.CUSTOMER or not isinstance(record.data, dict):
        return None
    key = record.data.get("key")
    if isinstance(key, str) and key.strip():
        return key
    attribution = record.data.get("usageAttribution") or record.data.get("usage_attribution")
    subject_keys = attribution.get("subjectKeys") if isinstance(attribution, dict) else None
    if isinstance(subject_keys, list) and len(subject_keys) == 1:
        only = subject_keys[0]
        return only if isinstance(only, str) else None
    return None


def _import_one(
    catalog: Catalog,
    record: SourceRecord,
    report: ImportReport,
    *,
    described_customers: set[str],
) -> None:
    if record.unreadable is not None:
        report.rejected.append(Rejection(record.where, "record", record.unreadable, record.order))
        return
    if not isinstance(record.data, dict):
        report.rejected.append(
            Rejection(
                record.where,
                "record",
                "must be a JSON object (a subject or a customer)",
                record.order,
            )
        )
        return
    kind = kind_of(record)
    what = _describe(kind, record.data)
    try:
        if kind is RecordKind.CUSTOMER:
            result_c = catalog.put_customer(parse(CustomerCreate, record.data))
            outcome, notes = result_c.outcome, result_c.notes
        else:
            upsert = parse(SubjectUpsert, record.data)
            auto = False if upsert.key in described_customers else None
            result_s = catalog.upsert_subject(upsert, auto_customer=auto)
            outcome, notes = result_s.outcome, result_s.notes
    except InvalidInput as exc:
        reason = "; ".join(map(str, exc.problems)) or exc.message
        report.rejected.append(Rejection(record.where, what, reason, record.order))
        return
    except MetersyncError as exc:
        report.rejected.append(Rejection(record.where, what, exc.message, record.order))
        return
    report.outcomes[(kind, outcome)] += 1
    report.notes.extend(notes)


def _describe(kind: RecordKind, data: dict[str, Any]) -> str:
    key = data.get("key")
    if isinstance(key, str) and key:
        return f"{kind.value} {key[:60]!r}"
    return kind.value
