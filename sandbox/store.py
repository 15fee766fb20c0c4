"""An indexed, thread-safe record collection for the source emulators.

Pages must be cheap at 100,000 customers and 300,000 journals: records are kept sorted by id,
with sorted (modified, id) and (business date, id) indexes for bisecting, and each distinct
filter's id list is cached until the next write, so paging a result costs O(page).
"""

from __future__ import annotations

import bisect
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any

Record = dict[str, Any]
_CACHE_SIZE = 64


class Collection:
    """Records of one entity, in stable id order, with cursor and date-range lookups."""

    def __init__(
        self,
        records: Iterable[Record],
        id_key: str,
        modified_key: str,
        date_key: str | None = None,
    ) -> None:
        self.id_key = id_key
        self.modified_key = modified_key
        self.date_key = date_key
        self._by_id: dict[Any, Record] = {r[id_key]: r for r in records}
        self._ids = sorted(self._by_id)
        self._modified = sorted((r[modified_key], i) for i, r in self._by_id.items())
        self._dates = sorted((self._day(r), i) for i, r in self._by_id.items()) if date_key else []
        self._cache: OrderedDict[Hashable, list[Record]] = OrderedDict()
        self._lock = threading.RLock()

    def _day(self, record: Record) -> str:
        return str(record[self.date_key] or "")[:10]

    def __len__(self) -> int:
        return len(self._ids)

    def get(self, record_id: Any) -> Record | None:
        """The record with this id, or None."""
        return self._by_id.get(record_id)

    def max_id(self) -> Any:
        """The highest id, or None when empty (used to assign new ids)."""
        with self._lock:
            return self._ids[-1] if self._ids else None

    def put(self, record: Record) -> Record:
        """Insert or replace a whole record; the stored dict is never mutated afterwards."""
        record_id = record[self.id_key]
        with self._lock:
            old = self._by_id.get(record_id)
            if old is None:
                bisect.insort(self._ids, record_id)
            else:
                _remove(self._modified, (old[self.modified_key], record_id))
                if self.date_key:
                    _remove(self._dates, (self._day(old), record_id))
            self._by_id[record_id] = record
            bisect.insort(self._modified, (record[self.modified_key], record_id))
            if self.date_key:
                bisect.insort(self._dates, (self._day(record), record_id))
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
    ) -> list[Record]:
        """Records matching the filters, sorted by id; cached per `cache_key` until a write.

        `modified_since` and the dates are strings in the collection's own sortable format;
        `where` keeps records whose fields equal the given values (as a `predicate` would).
        """
        if where:
            wanted = dict(where)
            predicate = lambda r: all(r.get(k) == v for k, v in wanted.items())  # noqa: E731
        with self._lock:
            hit = self._cache.get(cache_key)
            if hit is not None:
                self._cache.move_to_end(cache_key)
                return hit
            result = self._compute(modified_since, from_date, to_date, predicate)
            self._cache[cache_key] = result
            if len(self._cache) > _CACHE_SIZE:
                self._cache.popitem(last=False)
            return result

    def _compute(
        self,
        modified_since: str | None,
        from_date: str | None,
        to_date: str | None,
        predicate: Callable[[Record], bool] | None,
    ) -> list[Record]:
        candidates: set[Any] | None = None
        if modified_since is not None:
            start = bisect.bisect_left(self._modified, (modified_since,))
            candidates = {i for _, i in self._modified[start:]}
        if self.date_key and (from_date or to_date):
            lo = bisect.bisect_left(self._dates, (from_date,)) if from_date else 0
            hi = bisect.bisect_left(self._dates, (to_date + "\uffff",)) if to_date else None
            in_range = {i for _, i in self._dates[lo:hi]}
            candidates = in_range if candidates is None else candidates & in_range
        ids = self._ids if candidates is None else sorted(candidates)
        records = (self._by_id[i] for i in ids)
        if predicate is None:
            return list(records)
        return [r for r in records if predicate(r)]


def _remove(index: list[tuple[Any, Any]], item: tuple[Any, Any]) -> None:
    pos = bisect.bisect_left(index, item)
    if pos < len(index) and index[pos] == item:
        del index[pos]
