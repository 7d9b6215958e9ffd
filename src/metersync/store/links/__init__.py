"""The link table's one owner: every query and write of link rows is in this package.

A link ties a local customer or subject to its record in one target, and carries the sync
engine's journal for it: the intent written before a call, the outcome after. The engine
(sync.journal) decides what to write; this module decides how, so that the table's shape,
its states and its indexes are known in one place.

Every write is one short transaction (or one shared one inside `group`), so what is written
survives a SIGKILL the instant after.
"""

from metersync.store.links._queries import changed_customers, has_live_link, routable_subjects
from metersync.store.links._routing import route_subjects
from metersync.store.links._rows import ROUTABLE
from metersync.store.links._table import VIEW_COLUMNS, Confirmed, LinkTable, Pushed

__all__ = [
    "ROUTABLE",
    "VIEW_COLUMNS",
    "Confirmed",
    "LinkTable",
    "Pushed",
    "changed_customers",
    "has_live_link",
    "routable_subjects",
    "route_subjects",
]
