"""The subjects a run's events name: those the catalog does not know are created, once each."""

from __future__ import annotations

from sqlalchemy import select
from sqlmodel import col

from metersync.catalog import Catalog
from metersync.store import SubjectRow
from metersync.usage.ingest._report import IngestReport

# Subject keys per lookup query: well inside SQLite's and PostgreSQL's bound-parameter limits.
_SUBJECT_LOOKUP_CHUNK = 500


class Subjects:
    """Creates the subjects events name that the catalog does not know, once each per run."""

    def __init__(self, catalog: Catalog, report: IngestReport) -> None:
        self.catalog = catalog
        self.report = report
        self.known: set[str] = set()

    def ensure(self, keys: set[str]) -> None:
        unseen = sorted(keys - self.known)
        if not unseen:
            return
        found = self._lookup(unseen)
        missing = [key for key in unseen if key not in found]
        if missing:
            # The catalog's own rules (auto-customer, change numbers), in one transaction; a
            # subject another writer created meanwhile is not created twice.
            self.report.subjects_created += self.catalog.create_subjects(missing)
        for key in unseen:
            if found.get(key):
                self.report.notes.append(
                    f"subject {key!r} is deleted: its events are stored, but bill no one until "
                    "the subject is upserted again"
                )
        self.known.update(unseen)

    def _lookup(self, keys: list[str]) -> dict[str, bool]:
        """Which of `keys` the catalog has: key → whether it is deleted (a tombstone)."""
        # One read per few hundred keys; the catalog has no bulk lookup, and get_subject per
        # key would cost a transaction each.
        found: dict[str, bool] = {}
        with self.catalog.store.read_session() as session:
            for start in range(0, len(keys), _SUBJECT_LOOKUP_CHUNK):
                query = select(col(SubjectRow.key), col(SubjectRow.deleted_at)).where(
                    col(SubjectRow.key).in_(keys[start : start + _SUBJECT_LOOKUP_CHUNK])
                )
                for key, deleted_at in session.execute(query):
                    found[key] = deleted_at is not None
        return found
