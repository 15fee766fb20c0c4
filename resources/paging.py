"""Reusable paging styles for vendor clients (as in dlt's rest_api paginators): each one walks a
vendor's pages through a `fetch` callable the client supplies, so the client keeps its own
requests, auth and error handling and states only which paging style its API uses.

- `page_numbers`: page=1,2,... until an empty page, a short page, or the total is covered;
  optionally reading one page ahead in a background thread.
- `offsets`: offset=0,limit,... until an empty page or the total (read by a callable, e.g. from
  a `meta.size`-style envelope) is reached.
- `next_links`: follow the next-page link each answer carries until there is none.

Every style stops on an empty page, whatever a total says: a vendor whose count is off never
makes a client loop forever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

Body = TypeVar("Body")
Page = list[dict[str, Any]]


def page_numbers(
    fetch: Callable[[int], Body],
    items: Callable[[Body], Page],
    *,
    page_size: int,
    first: int = 1,
    total: Callable[[Body], int | None] | None = None,
    covered: Callable[[Body, int], int] | None = None,
    read_ahead: bool = False,
) -> Iterator[Page]:
    """Pages of `fetch(page)`, page numbers counting up from `first`.

    Stops after an empty page; with `total`, once the records covered so far reach it
    (`covered(body, page)`, default: the records yielded so far); without, after a page shorter
    than `page_size`.

    With `read_ahead`, the next page is fetched in a background thread while the caller works
    on the current one: the same requests in the same order, never more than one in flight
    (so within any per-client rate or concurrency limit the fetch itself honours), the network
    and the server's time overlapping the caller's. An error fetching a page is raised where
    that page would have been fetched.
    """
    with _Ahead(read_ahead) as ahead:
        page, seen = first, 0
        body = fetch(page)
        while True:
            rows = items(body)
            if not rows:
                return
            seen += len(rows)
            if total is None:
                more = len(rows) >= page_size
            else:
                reached = covered(body, page) if covered is not None else seen
                more = reached < (total(body) or 0)
            following = ahead.fetch(fetch, page + 1) if more else None
            yield rows
            if following is None:
                return
            body = following()
            page += 1


class _Ahead:
    """Runs a fetch now in one background thread (`read_ahead`), or later in the caller's."""

    def __init__(self, enabled: bool) -> None:
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="read-ahead") if enabled else None

    def fetch(self, fetch: Callable[[int], Body], page: int) -> Callable[[], Body]:
        if self._pool is None:
            return lambda: fetch(page)
        return self._pool.submit(fetch, page).result

    def __enter__(self) -> _Ahead:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:  # a caller that stops early waits for the page in flight
            self._pool.shutdown(wait=True, cancel_futures=True)


def offsets(
    fetch: Callable[[int, int], Body],
    items: Callable[[Body], Page],
    *,
    limit: int,
    total: Callable[[Body], int | None] | None = None,
) -> Iterator[Page]:
    """Pages of `fetch(offset, limit)`, the offset moving by the records each page held.

    Stops after an empty page; once the offset reaches `total(body)` when that gives a number;
    otherwise after a page shorter than `limit`.
    """
    offset = 0
    while True:
        body = fetch(offset, limit)
        rows = items(body)
        if not rows:
            return
        yield rows
        offset += len(rows)
        known = total(body) if total is not None else None
        if known is not None:
            if offset >= known:
                return
        elif len(rows) < limit:
            return


def next_links(
    fetch: Callable[[str | None], Body],
    items: Callable[[Body], Page],
    next_link: Callable[[Body], str | None],
) -> Iterator[Page]:
    """Pages of `fetch(None)` (the first page), then `fetch(link)` for each next link.

    Stops when an answer has no next link or no records.
    """
    link: str | None = None
    while True:
        body = fetch(link)
        rows = items(body)
        if rows:
            yield rows
        link = next_link(body)
        if not link or not rows:
            return
