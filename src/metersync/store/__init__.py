"""The database: SQLModel tables, the engine and sessions, Alembic migrations."""

from metersync.states import LedgerState, LinkKind, LinkState
from metersync.store.engine import Store
from metersync.store.models import (
    AttributionRow,
    CatalogSequenceRow,
    CustomerRow,
    EntitlementResetRow,
    EntitlementRow,
    EventRow,
    FeatureRow,
    GrantRow,
    LeaseRow,
    LedgerRow,
    LinkRow,
    SubjectRow,
    SyncStateRow,
    UpstreamCustomerRow,
    UpstreamUsageRow,
    UsageRow,
    WebhookEventRow,
)

__all__ = [
    "AttributionRow",
    "CatalogSequenceRow",
    "CustomerRow",
    "EntitlementResetRow",
    "EntitlementRow",
    "EventRow",
    "FeatureRow",
    "GrantRow",
    "LeaseRow",
    "LedgerRow",
    "LedgerState",
    "LinkKind",
    "LinkRow",
    "LinkState",
    "Store",
    "SubjectRow",
    "SyncStateRow",
    "UpstreamCustomerRow",
    "UpstreamUsageRow",
    "UsageRow",
    "WebhookEventRow",
]
