"""The emulated portal's data: property definitions, records, unique indexes, associations.

Every unique property has a dict index (value → id of the live record holding it), so an upsert
finds its record in O(1) and two live records can never share a value. Handlers run on the
event loop without awaiting, so a batch is applied atomically with respect to other requests:
concurrent upserts of one key serialize, and the first creates while the rest update.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from metersync.testing._hubspot_errors import RecordError, property_value_error, validation_problem
from metersync.testing._hubspot_properties import (
    OBJECT_TYPES,
    ValueProblem,
    built_in_properties,
    coerce,
    default_groups,
    now_iso,
)

FIRST_ID = 1_000_001
SINGULAR = {"companies": "company", "contacts": "contact"}
# The property each object type stamps on every change (contacts use the older name).
MODIFIED_PROPERTY = {"companies": "hs_lastmodifieddate", "contacts": "lastmodifieddate"}
# Properties returned when a read names none (HubSpot's documented defaults).
DEFAULT_PROPERTIES = {
    "companies": ("name", "domain", "createdate", "hs_lastmodifieddate", "hs_object_id"),
    "contacts": (
        "email",
        "firstname",
        "lastname",
        "createdate",
        "lastmodifieddate",
        "hs_object_id",
    ),
}
# Email identifies a contact (upsert by email works) though its definition does not say
# hasUniqueValue: HubSpot treats it as an identifier of its own, and stores it lower-cased.
IDENTIFIERS = {"companies": frozenset[str](), "contacts": frozenset({"email"})}


@dataclass(frozen=True)
class SearchView:
    """A record as the search index saw it after one write; `properties` None once archived."""

    written_at: float  # the loop's monotonic clock
    properties: dict[str, str] | None
    updated_at: str


@dataclass
class CrmRecord:
    id: str
    properties: dict[str, str]
    created_at: str
    updated_at: str
    archived: bool = False
    archived_at: str | None = None
    history: list[SearchView] = field(default_factory=list)  # oldest first

    def as_json(self, properties: dict[str, str | None]) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "properties": properties,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "archived": self.archived,
        }
        if self.archived_at is not None:
            data["archivedAt"] = self.archived_at
        return data


class ObjectStore:
    """The records and properties of one object type."""

    def __init__(self, object_type: str, new_id: Callable[[], str], clock: Callable[[], float]):
        created = now_iso()
        self.object_type = object_type
        self.singular = SINGULAR[object_type]
        self.modified_property = MODIFIED_PROPERTY[object_type]
        self.properties = {p["name"]: p for p in built_in_properties(object_type, created)}
        self.groups = {g["name"]: g for g in default_groups(object_type)}
        self.records: dict[str, CrmRecord] = {}
        self._ids: list[int] = []  # ascending, for paging
        self.unique: dict[str, dict[str, str]] = {name: {} for name in IDENTIFIERS[object_type]}
        self._new_id = new_id
        self._clock = clock
        self.search_lag_s = 0.0

    # -- schema ----------------------------------------------------------------------------------

    def add_property(self, definition: dict[str, Any]) -> None:
        self.properties[definition["name"]] = definition
        if definition["hasUniqueValue"]:
            # A new property holds no values yet, so its index starts empty.
            self.unique.setdefault(definition["name"], {})

    def is_unique(self, name: str) -> bool:
        return name in self.unique

    # -- reads -----------------------------------------------------------------------------------

    def get(self, record_id: str, *, archived: bool = False) -> CrmRecord | None:
        record = self.records.get(record_id)
        if record is None or record.archived != archived:
            return None
        return record

    def find(self, id_property: str, value: str) -> CrmRecord | None:
        """The live record holding `value` in a unique property."""
        record_id = self.unique[id_property].get(self._normalized(id_property, value))
        return None if record_id is None else self.records[record_id]

    def page(self, after: int, *, archived: bool) -> Iterator[CrmRecord]:
        """Records in id order from id `after` on."""
        start = bisect.bisect_left(self._ids, after)
        for record_id in itertools.islice(self._ids, start, None):
            record = self.records[str(record_id)]
            if record.archived == archived:
                yield record

    def visible_to_search(self) -> Iterator[tuple[CrmRecord, SearchView]]:
        """Each record as search sees it: its last write older than the lag, if any."""
        horizon = self._clock() - self.search_lag_s
        for record in self.records.values():
            view = _latest_before(record.history, horizon)
            if view is not None and view.properties is not None:
                yield record, view

    def select(
        self, properties: dict[str, str], wanted: Iterable[str] | None
    ) -> dict[str, str | None]:
        """The properties a read returns: those asked for (null when unset) plus the few HubSpot
        always returns; the documented defaults when none were asked for."""
        names = list(wanted) if wanted else list(DEFAULT_PROPERTIES[self.object_type])
        names += ["hs_object_id", "createdate", self.modified_property]
        return {name: properties.get(name) for name in dict.fromkeys(names)}

    # -- writes ----------------------------------------------------------------------------------

    def validate(
        self,
        changes: dict[str, Any],
        *,
        ids: list[str],
        target: str | None,
        claimed: dict[tuple[str, str], str],
    ) -> dict[str, str]:
        """The stored form of `changes` for record `target` (None: a new one), or a RecordError
        carrying every problem at once, as HubSpot reports them. `claimed` holds unique values
        earlier inputs of the same batch will take: (property, value) → who takes it."""
        values: dict[str, str] = {}
        problems: list[dict[str, Any]] = []
        for name, raw in changes.items():
            try:
                values[name] = self._value(name, raw)
            except ValueProblem as exc:
                problems.append(exc.problem)
        owner = target if target is not None else f"new:{ids[0]}"
        for name, value in values.items():
            if name in self.unique and value:
                holder = self.unique[name].get(value) or claimed.get((name, value))
                if holder is not None and holder != owner:
                    problems.append(self._taken(name, value, holder))
        if problems:
            raise property_value_error(ids, problems)
        for name, value in values.items():
            if name in self.unique and value:
                claimed[(name, value)] = owner
        return values

    def _value(self, name: str, raw: Any) -> str:
        definition = self.properties.get(name)
        if definition is None:
            message = f'Property "{name}" does not exist'
            raise ValueProblem(validation_problem(name, "PROPERTY_DOESNT_EXIST", message, None))
        if definition["modificationMetadata"]["readOnlyValue"]:
            message = f'Property "{name}" is read-only; its value cannot be set'
            raise ValueProblem(validation_problem(name, "READ_ONLY_VALUE", message, None))
        return self._normalized(name, coerce(definition, raw))

    def _normalized(self, name: str, value: str) -> str:
        return value.lower() if name in IDENTIFIERS[self.object_type] else value

    def _taken(self, name: str, value: str, holder: str) -> dict[str, Any]:
        # The docs do not show this error; this is the shape of HubSpot's other validation
        # results, with a message that names the record holding the value.
        who = f"{self.singular} {holder}" if not holder.startswith("new:") else "another input"
        return validation_problem(
            name,
            "INVALID_UNIQUE_VALUE",
            f'{value} is already the value of "{name}" on {who}.',
            value,
        )

    def create(self, values: dict[str, str]) -> CrmRecord:
        stamp = now_iso()
        record_id = self._new_id()
        properties = {name: value for name, value in values.items() if value}
        properties.setdefault("createdate", stamp)
        properties.update({"hs_object_id": record_id, self.modified_property: stamp})
        record = CrmRecord(record_id, properties, stamp, stamp)
        self.records[record_id] = record
        self._ids.append(int(record_id))
        self._index(record_id, properties)
        self._remember(record)
        return record

    def update(self, record: CrmRecord, values: dict[str, str]) -> bool:
        """Apply `values`; False (and no new modification date) when nothing changed."""
        changed = {n: v for n, v in values.items() if record.properties.get(n, "") != v}
        if not changed:
            return False
        for name, value in changed.items():
            self._unindex(name, record.properties.get(name))
            if value:
                record.properties[name] = value
                self._index(record.id, {name: value})
            else:
                record.properties.pop(name, None)
        stamp = now_iso()
        record.properties[self.modified_property] = stamp
        record.updated_at = stamp
        self._remember(record)
        return True

    def archive(self, record: CrmRecord) -> None:
        # Archiving frees the record's unique values: HubSpot lets a new record take them
        # (the archived one could not be restored while they are taken; the emulator has no
        # restore).
        for name, value in record.properties.items():
            self._unindex(name, value)
        record.archived = True
        record.archived_at = now_iso()
        record.updated_at = record.archived_at
        self._remember(record)

    def _index(self, record_id: str, properties: dict[str, str]) -> None:
        for name, value in properties.items():
            if name in self.unique:
                self.unique[name][value] = record_id

    def _unindex(self, name: str, value: str | None) -> None:
        if name in self.unique and value is not None:
            self.unique[name].pop(value, None)

    def _remember(self, record: CrmRecord) -> None:
        """Record what search will show once the lag has passed; forget what it never will."""
        now = self._clock()
        snapshot = None if record.archived else dict(record.properties)
        record.history.append(SearchView(now, snapshot, record.updated_at))
        horizon = now - self.search_lag_s
        while len(record.history) > 1 and record.history[1].written_at <= horizon:
            del record.history[0]


def _latest_before(history: list[SearchView], horizon: float) -> SearchView | None:
    for view in reversed(history):
        if view.written_at <= horizon:
            return view
    return None


class Portal:
    """Everything one HubSpot account holds."""

    def __init__(self, clock: Callable[[], float]) -> None:
        counter = itertools.count(FIRST_ID)
        # One counter for all object types: ids never collide, so a contact id sent as a company
        # id is not found (HubSpot ids are per portal and rarely collide either).
        self.stores = {t: ObjectStore(t, lambda: str(next(counter)), clock) for t in OBJECT_TYPES}
        self.associations: set[tuple[str, str]] = set()  # (company id, contact id)

    def store(self, object_type: str) -> ObjectStore:
        return self.stores[object_type]

    def set_search_lag(self, seconds: float) -> None:
        for store in self.stores.values():
            store.search_lag_s = seconds


def record_error_for_missing(store: ObjectStore, record_id: str) -> RecordError:
    return RecordError(
        f"Could not get some {store.singular.upper()} objects, they may be deleted or not exist. "
        "Check that ids are valid.",
        [record_id],
        category="OBJECT_NOT_FOUND",
    )
