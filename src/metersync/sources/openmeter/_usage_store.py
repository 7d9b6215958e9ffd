"""The usage pull's rows in the store: which subjects and customers to query, and the figures
OpenMeter answered, written into `upstream_usage` (one row per meter, subject and window, or
per customer and month for a period meter)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from metersync.clock import utcnow
from metersync.sources.openmeter._state import SOURCE
from metersync.store import (
    Store,
    SubjectRow,
    UpstreamCustomerRow,
    UpstreamUsageRow,
)
from metersync.store.engine import USAGE_SEQUENCE
from metersync.store.links import LinkTable
from metersync.times import epoch_seconds

PER_CUSTOMER = ""  # the subject of a period meter's figure, which is per customer
_U = UpstreamUsageRow.__table__.c  # type: ignore[attr-defined]


def _customer_ids(store: Store) -> dict[str, str]:
    with store.read_session() as session:
        rows = session.execute(
            select(UpstreamCustomerRow.local_key, UpstreamCustomerRow.upstream_id).where(  # type: ignore[call-overload]
                UpstreamCustomerRow.source == SOURCE,
                UpstreamCustomerRow.deleted.is_(False),  # type: ignore[attr-defined]
            )
        )
        return {str(k): str(v) for k, v in rows}


def _former_subjects(store: Store, customer_key: str, target: str) -> list[str]:
    """Subjects whose usage `target` routes to the customer's record (their subject links),
    and subjects with figures bound to the customer."""
    keys = LinkTable(store, target).subjects_routed_to(customer_key)
    with store.read_session() as session:
        keys.update(
            session.execute(
                select(_U.subject)
                .where(
                    _U.source == SOURCE,
                    _U.customer_key == customer_key,
                    _U.subject != PER_CUSTOMER,
                )
                .distinct()
            ).scalars()
        )
    return sorted(keys)


def _bind_to(store: Store, subjects: Sequence[str], customer_key: str) -> None:
    with store.session() as session:
        seq = store.next_change_seq(session, USAGE_SEQUENCE)
        session.execute(
            update(UpstreamUsageRow)
            .where(
                _U.source == SOURCE,
                _U.customer_key.is_(None),
                _U.subject.in_(list(subjects)),
            )
            .values(customer_key=customer_key, changed_at=utcnow(), seq=seq)
            .execution_options(synchronize_session=False)
        )


def _subject_count(store: Store) -> int:
    """How many subjects the catalog knows: how many rows a window's per-subject answer may
    hold, before the first answer tells."""
    with store.read_session() as session:
        return int(session.execute(select(func.count()).select_from(SubjectRow)).scalar_one())


def _subjects_with_figures(store: Store, meter: str, per: int, start: int, end: int) -> set[str]:
    """Subjects with a figure of `meter` in the windows of size `per` in [start, end)."""
    with store.read_session() as session:
        return set(
            session.execute(
                select(_U.subject)
                .where(
                    _U.source == SOURCE,
                    _U.meter == meter,
                    _U.window_s == per,
                    _U.window_start >= start,
                    _U.window_start < end,
                )
                .distinct()
            ).scalars()
        )


def _store_figures(
    store: Store,
    meter: str,
    per: int,
    start: int,
    end: int,
    rows: list[dict[str, Any]],
    by_id: Mapping[str, str],
    now: int,
    queried: Sequence[str],
) -> int:
    """Replace the stored figures of [start, end) of the `queried` subjects (per customer for
    period meters: their keys) with OpenMeter's answer; returns how many changed. A figure
    that changes keeps its binding (usage stays with the customer it went to); a window of a
    queried subject OpenMeter no longer reports becomes 0, so the push sees the fall. Rows of
    what was not queried (a deleted customer's month) are left as they are."""
    figures: dict[tuple[str, int], tuple[float, str | None]] = {}
    for row in rows:
        if per:
            subject = str(row.get("subject") or "")
            if not subject:
                continue
            figures[(subject, epoch_seconds(row["windowStart"]))] = (
                float(row.get("value") or 0),
                None,
            )
        else:
            key = by_id.get(str(row.get("customerId") or ""))
            if key is not None:
                figures[(key, start)] = (float(row.get("value") or 0), key)
    stamp = utcnow()
    changed = 0
    with store.session() as session:
        # The usage counter first (store.usage_cells): the push collects changed figures by it.
        seq = store.next_change_seq(session, USAGE_SEQUENCE)
        existing = {
            (str(subject), int(window)): float(value)
            for subject, window, value in session.execute(
                select(_U.subject, _U.window_start, _U.value).where(
                    _U.source == SOURCE,
                    _U.meter == meter,
                    _U.window_s == per,
                    _U.window_start >= start,
                    _U.window_start < end,
                    _U.subject.in_(list(queried)),
                )
            )
        }
        for (subject, window), (value, customer) in figures.items():
            before = existing.pop((subject, window), None)
            if before == value:
                continue
            latest = min(now, window + per - 1) if per else now
            _write_figure(session, meter, per, subject, window, value, latest, customer, stamp, seq)
            changed += 1
        for (subject, window), value in existing.items():
            if value != 0:
                latest = min(now, window + per - 1) if per else now
                _write_figure(session, meter, per, subject, window, 0.0, latest, None, stamp, seq)
                changed += 1
    return changed


def _write_figure(
    session: Session,
    meter: str,
    per: int,
    subject: str,
    window: int,
    value: float,
    latest_s: int,
    customer: str | None,
    stamp: datetime,
    seq: int,
) -> None:
    """Insert or update one figure. An update keeps the row's customer: a subject's figure is
    bound once; a period meter's row is the customer's own."""
    key = (
        _U.source == SOURCE,
        _U.meter == meter,
        _U.subject == (customer if per == 0 and customer else subject),
        _U.window_s == per,
        _U.window_start == window,
    )
    found = session.execute(
        update(UpstreamUsageRow)
        .where(*key)
        .values(value=value, latest_us=latest_s * 1_000_000, changed_at=stamp, seq=seq)
    )
    if int(found.rowcount or 0):  # type: ignore[attr-defined]
        return
    session.add(
        UpstreamUsageRow(
            source=SOURCE,
            meter=meter,
            subject=customer if per == 0 and customer else subject,
            window_s=per,
            window_start=window,
            value=value,
            latest_us=latest_s * 1_000_000,
            customer_key=customer,
            changed_at=stamp,
            seq=seq,
        )
    )
