"""A scripted httpx.MockTransport handler for client edge cases (retries, lost answers)."""

from __future__ import annotations

import httpx


def scripted(*responses: httpx.Response | Exception):
    """A handler answering with `responses` in order (the last one repeats; an exception is
    raised as a transport failure); returns it with the list of requests it saw."""
    queue = list(responses)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        item = queue.pop(0) if len(queue) > 1 else queue[0]
        if isinstance(item, Exception):
            raise item
        return item

    return handler, seen
