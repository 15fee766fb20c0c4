"""A record collection whose records are made on demand from their index, for sandboxes too big
to hold as Python objects (a million customers is ~20 GB of dicts).

Only what a listing filters on lives in memory, as numpy columns (modified time, business day and
the equality-filter fields, a few bytes a record); a page builds its records from their index
through `make`, in blocks that are cached for the next page. Writes (the tests' and benchmarks'
"changed at the till") go to an overlay of whole records that hides the generated one, so memory
is O(columns + changes). Answers match `sandbox.store.Collection`: records in id order, filtered
by `Modified >= since`, business day within [from, to], and field equality.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

import numpy as np

Record = dict[str, Any]
DAY = 86400
_CACHE_SIZE = 16
BLOCK = 256  # records made together from one seeded random stream (seeding costs ~25 µs)


@dataclass(frozen=True)
class LeanClock:
    """Seconds since `origin` (00:00 local), the sandbox's time axis, both ways."""

    origin: date

    def seconds(self, local: str) -> int:
        """`YYYY-MM-DDTHH:MM:SS` (or a bare date) -> seconds; orders like the string does."""
        days = (date.fromisoformat(local[:10]) - self.origin).days
        clock = local[11:19]
        if not clock:
            return days * DAY
        hours, minutes, secs = (int(part) for part in clock.split(":"))
        return days * DAY + hours * 3600 + minutes * 60 + secs

    def day(self, iso_date: str) -> int:
        return (date.fromisoformat(iso_date[:10]) - self.origin).days


class LeanCollection:
    """Records `first_id + n` for n < count, made by `make_block(block)` (BLOCK records each)."""

    def __init__(
        self,
        id_key: str,
        modified_key: str,
        date_key: str | None,
        first_id: int,
        modified: np.ndarray,
        make_block: Callable[[int], list[Record]],
        clock: LeanClock,
        days: np.ndarray | None = None,
        columns: Mapping[str, np.ndarray] | None = None,
    ) -> None:
        self.id_key, self.modified_key, self.date_key = id_key, modified_key, date_key
        self.first_id, self.count = first_id, len(modified)
        self.clock = clock
        self.modified, self._days = modified, days
        self._columns = dict(columns or {})
        self._make_block = make_block
        self._blocks: OrderedDict[int, list[Record]] = OrderedDict()
        self._overlay: dict[int, Record] = {}  # written records, by id
        self._hidden = np.zeros(self.count, dtype=bool)  # generated records an overlay replaced
        self._cache: OrderedDict[Hashable, _Rows] = OrderedDict()
        self._lock = threading.RLock()

    def __len__(self) -> int:
        return self.count + sum(1 for i in self._overlay if not self._generated(i))

    def _generated(self, record_id: int) -> bool:
        return 0 <= record_id - self.first_id < self.count

    def get(self, record_id: Any) -> Record | None:
        """The record with this id, or None."""
        with self._lock:
            if record_id in self._overlay:
                return self._overlay[record_id]
            if not isinstance(record_id, int) or not self._generated(record_id):
                return None
            return self._made(record_id - self.first_id)

    def _made(self, index: int) -> Record:
        block, offset = divmod(index, BLOCK)
        records = self._blocks.get(block)
        if records is None:
            records = self._make_block(block)
            self._blocks[block] = records
            if len(self._blocks) > 64:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(block)
        return records[offset]

    def max_id(self) -> Any:
        """The highest id, or None when empty (used to assign new ids)."""
        with self._lock:
            top = self.first_id + self.count - 1 if self.count else None
            return max([i for i in (top, *self._overlay) if i is not None], default=None)

    def put(self, record: Record) -> Record:
        """Insert or replace a whole record; the stored dict is never mutated afterwards."""
        record_id = record[self.id_key]
        with self._lock:
            self._overlay[record_id] = record
            if isinstance(record_id, int) and self._generated(record_id):
                self._hidden[record_id - self.first_id] = True
            self._cache.clear()
        return record

    def select(
        self,
        cache_key: Hashable,
        modified_since: str | None = None,
        from_date: str | None = None,
        to_date: str | None = None,
        predicate: Callable[[Record], bool] | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> Sequence[Record]:
        """Records matching the filters, in id order; cached per `cache_key` until a write."""
        if predicate is not None:
            raise ValueError("a lean collection filters by `where` (field equality) only")
        with self._lock:
            hit = self._cache.get(cache_key)
            if hit is not None:
                self._cache.move_to_end(cache_key)
                return hit
            rows = self._compute(modified_since, from_date, to_date, dict(where or {}))
            self._cache[cache_key] = rows
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
            return rows

    def _compute(
        self, since: str | None, from_date: str | None, to_date: str | None, where: dict[str, Any]
    ) -> _Rows:
        keep = ~self._hidden
        if since is not None:
            keep &= self.modified >= self.clock.seconds(since)
        if self._days is not None and from_date:
            keep &= self._days >= self.clock.day(from_date)
        if self._days is not None and to_date:
            keep &= self._days <= self.clock.day(to_date)
        for name, value in where.items():
            keep &= self._columns[name] == _column_value(value)
        generated = np.flatnonzero(keep) + self.first_id
        written = sorted(
            record_id
            for record_id, record in self._overlay.items()
            if self._matches(record, since, from_date, to_date, where)
        )
        ids = np.union1d(generated, np.asarray(written, dtype=np.int64)) if written else generated
        return _Rows(self, ids)

    def _matches(
        self,
        record: Record,
        since: str | None,
        from_date: str | None,
        to_date: str | None,
        where: dict[str, Any],
    ) -> bool:
        if since is not None and record[self.modified_key] < since:
            return False
        if self.date_key and (from_date or to_date):
            day = str(record[self.date_key] or "")[:10]
            if (from_date and day < from_date) or (to_date and day > to_date):
                return False
        return all(record.get(name) == value for name, value in where.items())


def _column_value(value: Any) -> Any:
    """Filter values as the columns hold them (None as -1, booleans as 0/1)."""
    if value is None:
        return -1
    return int(value)


class _Rows(Sequence[Record]):
    """A selection's ids; slicing makes the records (what a page needs, O(page))."""

    def __init__(self, collection: LeanCollection, ids: np.ndarray) -> None:
        self.collection, self.ids = collection, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, slice):
            return [self._record(int(i)) for i in self.ids[item]]
        return self._record(int(self.ids[item]))

    def _record(self, record_id: int) -> Record:
        found = self.collection.get(record_id)
        assert found is not None, record_id
        return found
