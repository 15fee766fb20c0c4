"""Reusable paging styles for vendor clients (as in dlt's rest_api paginators): each one walks a
vendor's pages through a `fetch` callable the client supplies, so the client keeps its own
requests, auth and error handling and states only which paging style its API uses.

- `page_numbers`: page=1,2,... until an empty page, a short page, or the total is covered.
- `offsets`: offset=0,limit,... until an empty page or the total (read by a callable, e.g. from
  a `meta.size`-style envelope) is reached.
- `next_links`: follow the next-page link each answer carries until there is none.

Every style stops on an empty page, whatever a total says: a vendor whose count is off never
makes a client loop forever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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
) -> Iterator[Page]:
    """Pages of `fetch(page)`, page numbers counting up from `first`.

    Stops after an empty page; with `total`, once the records covered so far reach it
    (`covered(body, page)`, default: the records yielded so far); without, after a page shorter
    than `page_size`.
    """
    page, seen = first, 0
    while True:
        body = fetch(page)
        rows = items(body)
        if not rows:
            return
        yield rows
        seen += len(rows)
        if total is None:
            if len(rows) < page_size:
                return
        else:
            reached = covered(body, page) if covered is not None else seen
            if reached >= (total(body) or 0):
                return
        page += 1


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
