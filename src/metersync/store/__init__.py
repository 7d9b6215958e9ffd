"""The database: SQLModel tables, the engine and sessions, Alembic migrations."""

from metersync.store.engine import Store
from metersync.store.models import (
    AttributionRow,
    CatalogSequenceRow,
    CustomerRow,
    LinkKind,
    LinkRow,
    LinkState,
    SubjectRow,
    SyncStateRow,
)

__all__ = [
    "AttributionRow",
    "CatalogSequenceRow",
    "CustomerRow",
    "LinkKind",
    "LinkRow",
    "LinkState",
    "Store",
    "SubjectRow",
    "SyncStateRow",
]
