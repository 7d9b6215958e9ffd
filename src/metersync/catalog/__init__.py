"""The catalog: subjects, customers and usage attribution, as a Python API.

    from metersync.catalog import Catalog
    from metersync.store import Store

    catalog = Catalog(Store.open("sqlite:///./metersync.db"))
    catalog.create_customer({"key": "acme", "name": "ACME Inc",
                             "usageAttribution": {"subjectKeys": ["department1"]}})
    catalog.upsert_subject({"key": "department1", "displayName": "Dept 1"})

Inputs are OpenMeter-shaped mappings (camelCase or snake_case) or the schema models; outputs
are immutable records with `to_openmeter()`. Errors are `metersync.errors` exceptions.
"""

from metersync.catalog.importer import ImportReport, import_records, read_records
from metersync.catalog.schemas import (
    Address,
    CustomerCreate,
    CustomerUpdate,
    SubjectUpsert,
    UsageAttribution,
    parse,
)
from metersync.catalog.service import Catalog
from metersync.catalog.views import (
    BillingAddress,
    ChangeSet,
    Customer,
    Outcome,
    Subject,
    WriteResult,
)

__all__ = [
    "Address",
    "BillingAddress",
    "Catalog",
    "ChangeSet",
    "Customer",
    "CustomerCreate",
    "CustomerUpdate",
    "ImportReport",
    "Outcome",
    "Subject",
    "SubjectUpsert",
    "UsageAttribution",
    "WriteResult",
    "import_records",
    "parse",
    "read_records",
]
