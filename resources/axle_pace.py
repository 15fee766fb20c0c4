"""Keep Axle calls under its 5 requests per second per key (AX-A4) *before* sending them.

A slot is held from the moment a request leaves until one window after its answer arrived: Axle
counts a request when it receives it, which lies between the two, so measuring from the answer
can never put six requests into one of Axle's windows, whatever the network's delays. The pacer
is shared by every client of one key in this process (threads, parallel runs); a 429 that still
comes (another process on the same key) is waited out by VendorHttp with Axle's Retry-After.

The counting is resources/pacing.py's (`Pace(hold=True)`), like every other vendor's.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from resources.pacing import Pace, Window, shared_pace


class Pacer(Pace):
    """At most `limit` requests in flight or answered within the last `window` seconds."""

    def __init__(
        self,
        limit: int,
        window: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if limit < 1 or window <= 0:
            raise ValueError("a pacer needs limit >= 1 and window > 0")
        super().__init__(
            "axle", [Window("second", limit, window)], hold=True, clock=clock, sleep=sleep, margin=0
        )
        self.limit, self.window = limit, window


def shared_pacer(base_url: str, api_key: str, limit: int | float) -> Pace:
    """The one pacer of this key on this host in this process (the key itself is not kept)."""
    windows = (
        [Window("second", int(limit), 1.0)] if limit >= 1 else [Window("second", 1, 1 / limit)]
    )
    return shared_pace(
        "axle", f"{base_url}\0{api_key}", windows, hold=True, margin=0, across_processes=False
    )
