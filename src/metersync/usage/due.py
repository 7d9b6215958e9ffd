"""What a push plans, a chunk at a time: the cells that may owe a report, with their windows,
their ledger bases and their customers' links. Database reads only, run in a worker thread.

Two walks:
- **changed cells** (`DueCells`): the usual tick. The cells collected from rows changed since
  the meter's cursor, plus cells still due from before (store.usage_cells). Each chunk reads
  the aggregates and the ledger of its own cells only (one query per distinct window, by
  customer list on the indexes), so a tick costs what changed.
- **every customer** (`EveryCustomer`): a meter's first push to a target (no cursor yet), or
  the flush of given customers before a delete: the windows of a chunk of customers at a time.

Either way nothing holds more than one chunk: memory stays flat however large the catalog.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from metersync.catalog.meters import Aggregation, Meter
from metersync.store import Store
from metersync.store.ledger import LedgerTable
from metersync.store.links import LinkTable
from metersync.store.usage_cells import Cell, UsageCellTable
from metersync.times import month_end
from metersync.usage.ports import UsageAggregates
from metersync.usage.reports import Base
from metersync.usage.windows import WindowValue

CHUNK_CELLS = 20_000  # cells per chunk: one plan, one ledger write, one send (~15 MB)
FIRST_CHUNK_CUSTOMERS = 50  # customers in a first push's first chunk; then sized by CHUNK_CELLS
MAX_CHUNK_CUSTOMERS = 2_000  # an IN list per query far below any bound-parameter limit
FEW_WINDOWS = 8  # up to this many windows in a chunk, each is read on its own


@dataclass(frozen=True)
class Chunk:
    windows: list[WindowValue]
    bases: dict[Cell, Base]
    external_ids: dict[str, str]
    cells: list[Cell]  # the due cells this chunk planned: let go once their reports are written


@dataclass(frozen=True)
class Reader:
    """Reads one meter's aggregates, ledger and links for a push to one target."""

    store: Store
    target: str
    meter: Meter
    window_s: int  # the push window: 0 for calendar months
    aggregates: UsageAggregates
    moment: datetime

    @property
    def _last(self) -> bool:
        return self.meter.aggregation in (Aggregation.MAX, Aggregation.LATEST)

    def _bases(
        self, customers: Sequence[str], start: int | None = None, end: int | None = None
    ) -> dict[Cell, Base]:
        """Bases of `customers`: every window, or those in [start, end)."""
        raw = LedgerTable(self.store, self.target).bases(
            self.meter.slug,
            self.moment,
            last=self._last,
            customers=customers,
            windows=None if start is None or end is None else (start, end),
        )
        return {cell: Base(*value) for cell, value in raw.items()}

    def _links(self, customers: Sequence[str]) -> dict[str, str]:
        return LinkTable(self.store, self.target).routable_external_ids(customers)

    def cells(self, cells: Sequence[Cell]) -> Chunk:
        """The windows and bases of exactly these cells: one read per window when the chunk
        holds few windows (a tick: the current hour, a late one or two), else one read over
        the chunk's customers and span of windows (a chunk spread over history, as after an
        outage), filtered to the cells."""
        by_window: dict[int, list[str]] = defaultdict(list)
        for customer_key, window in cells:
            by_window[window].append(customer_key)
        wanted = set(cells)
        customers = sorted({customer for customer, _ in cells})
        if len(by_window) <= FEW_WINDOWS:
            spans = [
                (window, keys, self._end(window)) for window, keys in sorted(by_window.items())
            ]
        else:
            spans = [(min(by_window), customers, self._end(max(by_window)))]
        windows: list[WindowValue] = []
        bases: dict[Cell, Base] = {}
        for start, keys, end in spans:
            windows += [
                w
                for w in self.aggregates.windows(
                    self.store, self.meter, self.window_s, customers=keys, start=start, end=end
                )
                if (w.customer_key, w.window_start) in wanted
            ]
            found = self._bases(keys, start, end)
            bases.update({cell: base for cell, base in found.items() if cell in wanted})
        return Chunk(windows, bases, self._links(customers), list(cells))

    def _end(self, window: int) -> int:
        return month_end(window) if self.window_s == 0 else window + self.window_s

    def customers(self, customers: Sequence[str]) -> Chunk:
        """Every window of these customers."""
        windows = self.aggregates.windows(
            self.store, self.meter, self.window_s, customers=customers
        )
        return Chunk(windows, self._bases(customers), self._links(customers), [])


class DueCells:
    """The changed-cells walk: a keyset over the target's due cells of one meter."""

    def __init__(self, reader: Reader, *, extra: Sequence[Cell] = ()) -> None:
        self.reader = reader
        self.table = UsageCellTable(reader.store, reader.target)
        # A dry run plans the cells it would collect without writing them: kept here.
        self.extra = sorted(set(extra))
        self.after: Cell | None = None

    def next(self) -> Chunk | None:
        stored = self.table.due(
            self.reader.meter.slug,
            now=int(self.reader.moment.timestamp()),
            after=self.after,
            limit=CHUNK_CELLS,
        )
        cells = stored
        if self.extra:
            # Merge the in-memory cells in order, up to the last stored cell of this page (or
            # all of them when the table has no more).
            bound = stored[-1] if len(stored) == CHUNK_CELLS else None
            take = [
                c
                for c in self.extra
                if (self.after is None or c > self.after) and (bound is None or c <= bound)
            ]
            cells = sorted(set(stored) | set(take))
        if not cells:
            return None
        self.after = cells[-1]
        return self.reader.cells(cells)


class EveryCustomer:
    """The every-customer walk: all customers with usage of the meter, or the given ones."""

    def __init__(self, reader: Reader, *, customers: Sequence[str] | None = None) -> None:
        self.reader = reader
        self.given = sorted(set(customers)) if customers is not None else None
        self.after: str | None = None
        # Customers per chunk, sized from the last chunk so that one holds about CHUNK_CELLS
        # windows: few queries when customers have few windows (daily windows), bounded memory
        # when they have many (hourly windows over a month).
        self.size = FIRST_CHUNK_CUSTOMERS

    def next(self) -> Chunk | None:
        if self.given is not None:
            chunk = [k for k in self.given if self.after is None or k > self.after]
            chunk = chunk[: self.size]
        else:
            chunk = self.reader.aggregates.customers(
                self.reader.store, self.reader.meter, after=self.after, limit=self.size
            )
        if not chunk:
            return None
        self.after = chunk[-1]
        read = self.reader.customers(chunk)
        per_customer = max(1.0, len(read.windows) / len(chunk))
        self.size = max(1, min(MAX_CHUNK_CUSTOMERS, int(CHUNK_CELLS / per_customer)))
        return read
