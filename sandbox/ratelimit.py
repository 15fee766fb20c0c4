"""Per-key sliding-window rate limiting shared by the emulators.

A sliding log (not a fixed bucket) so a client that bursts right at a second boundary is still
refused, which is what makes the client's Retry-After handling observable in tests.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Clock = Callable[[], float]  # epoch seconds; tests inject a fake one


@dataclass(frozen=True)
class Decision:
    """Outcome of one `RateLimiter.hit`: allowed or not, and what to tell the client."""

    allowed: bool
    limit: int | None
    remaining: int | None
    retry_after: float
    reset_at: float  # epoch seconds when the oldest counted request leaves the window
    window: float | None = None  # the window (seconds) that refused, or the one reported

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1, as HTTP's Retry-After wants."""
        return str(max(1, math.ceil(self.retry_after)))


class RateLimiter:
    """Allow at most `limit` requests per `window` seconds per key; `limit=None` disables it."""

    def __init__(self, limit: int | None, window: float = 1.0, clock: Clock = time.time) -> None:
        self.limit = limit
        self.window = window
        self.clock = clock
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> Decision:
        """Count one request for `key` if allowed; refused requests are not counted."""
        now = self.clock()
        if self.limit is None:
            return Decision(True, None, None, 0.0, now)
        with self._lock:
            log = self._hits.setdefault(key, deque())
            while log and log[0] <= now - self.window:
                log.popleft()
            if len(log) >= self.limit:
                reset_at = log[0] + self.window
                return Decision(False, self.limit, 0, reset_at - now, reset_at)
            log.append(now)
            reset_at = log[0] + self.window
            return Decision(True, self.limit, self.limit - len(log), 0.0, reset_at)

    def reset(self) -> None:
        """Forget every counted request (tests use it between scenarios)."""
        with self._lock:
            self._hits.clear()


class MultiWindowLimiter:
    """Several sliding windows at once per key (e.g. 5/s, 150/min, 1000/h, 5000/day): a request is
    allowed only if every window has room, and then counts in all of them.

    A refusal names the window that refused (the one with the longest wait, when several do) and
    the seconds until that window has room; refused requests are not counted. `windows=None`
    disables it. The clock is an attribute so tests can step through days in microseconds.
    """

    def __init__(
        self, windows: Sequence[tuple[int, float]] | None, clock: Clock = time.time
    ) -> None:
        self.windows = sorted(windows, key=lambda w: w[1]) if windows else None
        self.clock = clock
        self._hits: dict[str, list[float]] = {}  # ascending times within the longest window
        self._lock = threading.Lock()

    def hit(self, key: str) -> Decision:
        """Count one request for `key` if every window allows it."""
        now = self.clock()
        if not self.windows:
            return Decision(True, None, None, 0.0, now)
        with self._lock:
            log = self._hits.setdefault(key, [])
            del log[: bisect.bisect_right(log, now - self.windows[-1][1])]
            refusal: Decision | None = None
            for limit, window in self.windows:
                first = bisect.bisect_right(log, now - window)
                if len(log) - first >= limit:
                    # room comes back when the oldest request that is over the limit leaves
                    reset_at = log[len(log) - limit] + window
                    if refusal is None or reset_at - now > refusal.retry_after:
                        refusal = Decision(False, limit, 0, reset_at - now, reset_at, window)
            if refusal is not None:
                return refusal
            bisect.insort(log, now)
            limit, window = self.windows[0]
            remaining = limit - (len(log) - bisect.bisect_right(log, now - window))
            return Decision(True, limit, remaining, 0.0, now + window, window)

    def reset(self) -> None:
        """Forget every counted request."""
        with self._lock:
            self._hits.clear()
