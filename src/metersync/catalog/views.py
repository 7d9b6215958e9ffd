"""What the catalog hands out: plain, immutable records, and their OpenMeter JSON shape."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, Generic, TypeVar

from metersync.store.models import CustomerRow, SubjectRow
from metersync.times import rfc3339


def _compact(data: dict[str, Any]) -> dict[str, Any]:
    # OpenMeter omits optional fields that are not set, rather than sending null.
    return {k: v for k, v in data.items() if v is not None}


@dataclass(frozen=True)
class Subject:
    id: str
    key: str
    display_name: str | None
    metadata: dict[str, str]
    customer_key: str | None
    change_seq: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    @classmethod
    def from_row(cls, row: SubjectRow, customer_key: str | None) -> Subject:
        return cls(
            id=row.id,
            key=row.key,
            display_name=row.display_name,
            metadata=dict(row.meta),
            customer_key=customer_key,
            change_seq=row.change_seq,
            created_at=row.created_at,
            updated_at=row.updated_at,
            deleted_at=row.deleted_at,
        )

    def to_openmeter(self) -> dict[str, Any]:
        """OpenMeter's `Subject` (v1 API)."""
        return _compact(
            {
                "id": self.id,
                "key": self.key,
                "displayName": self.display_name,
                "metadata": self.metadata,
                "createdAt": rfc3339(self.created_at),
                "updatedAt": rfc3339(self.updated_at),
                "deletedAt": rfc3339(self.deleted_at) if self.deleted_at else None,
            }
        )


@dataclass(frozen=True)
class BillingAddress:
    country: str | None = None
    postal_code: str | None = None
    state: str | None = None
    city: str | None = None
    line1: str | None = None
    line2: str | None = None
    phone_number: str | None = None

    def is_empty(self) -> bool:
        return all(v is None for v in self.__dict__.values())

    def to_openmeter(self) -> dict[str, Any]:
        return _compact(
            {
                "country": self.country,
                "postalCode": self.postal_code,
                "state": self.state,
                "city": self.city,
                "line1": self.line1,
                "line2": self.line2,
                "phoneNumber": self.phone_number,
            }
        )


@dataclass(frozen=True)
class Customer:
    id: str
    key: str
    name: str
    description: str | None
    primary_email: str | None
    currency: str | None
    billing_address: BillingAddress
    metadata: dict[str, str]
    subject_keys: tuple[str, ...]
    auto_created: bool
    change_seq: int
    created_at: datetime
    updated_at: datetime
    deleted_at: datetime | None

    @property
    def is_deleted(self) -> bool:
        return self.deleted_at is not None

    @classmethod
    def from_row(cls, row: CustomerRow | Any, subject_keys: list[str]) -> Customer:
        """From an ORM row or a plain row whose columns are labelled like its attributes."""
        return cls(
            id=row.id,
            key=row.key,
            name=row.name,
            description=row.description,
            primary_email=row.primary_email,
            currency=row.currency,
            billing_address=BillingAddress(
                country=row.address_country,
                postal_code=row.address_postal_code,
                state=row.address_state,
                city=row.address_city,
                line1=row.address_line1,
                line2=row.address_line2,
                phone_number=row.address_phone_number,
            ),
            metadata=dict(row.meta),
            subject_keys=tuple(sorted(subject_keys)),
            auto_created=row.auto_created,
            change_seq=row.change_seq,
            created_at=row.created_at,
            updated_at=row.updated_at,
            deleted_at=row.deleted_at,
        )

    def to_openmeter(self) -> dict[str, Any]:
        """OpenMeter's `Customer` (v1 API)."""
        return _compact(
            {
                "id": self.id,
                "key": self.key,
                "name": self.name,
                "description": self.description,
                "metadata": self.metadata,
                "primaryEmail": self.primary_email,
                "currency": self.currency,
                "billingAddress": None
                if self.billing_address.is_empty()
                else self.billing_address.to_openmeter(),
                "usageAttribution": {"subjectKeys": list(self.subject_keys)},
                "createdAt": rfc3339(self.created_at),
                "updatedAt": rfc3339(self.updated_at),
                "deletedAt": rfc3339(self.deleted_at) if self.deleted_at else None,
            }
        )


class Outcome(StrEnum):
    CREATED = "created"
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    DELETED = "deleted"
    ALREADY_DELETED = "already_deleted"


RecordT = TypeVar("RecordT", Subject, Customer)


@dataclass(frozen=True)
class WriteResult(Generic[RecordT]):
    """What a catalog write did, the record as it now stands, and anything worth telling."""

    outcome: Outcome
    record: RecordT
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChangeSet:
    """Everything changed after a change number, tombstones included, in change order."""

    subjects: list[Subject] = field(default_factory=list)
    customers: list[Customer] = field(default_factory=list)
    high_water: int = 0
