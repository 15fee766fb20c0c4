"""Per-key sliding-window rate limiting shared by the emulators.

A sliding log (not a fixed bucket) so a client that bursts right at a second boundary is still
refused, which is what makes the client's Retry-After handling observable in tests.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    """Outcome of one `RateLimiter.hit`: allowed or not, and what to tell the client."""

    allowed: bool
    limit: int | None
    remaining: int | None
    retry_after: float
    reset_at: float  # epoch seconds when the oldest counted request leaves the window

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1, as HTTP's Retry-After wants."""
        return str(max(1, math.ceil(self.retry_after)))


class RateLimiter:
    """Allow at most `limit` requests per `window` seconds per key; `limit=None` disables it."""

    def __init__(self, limit: int | None, window: float = 1.0) -> None:
        self.limit = limit
        self.window = window
        self._hits: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> Decision:
        """Count one request for `key` if allowed; refused requests are not counted."""
        now = time.time()
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
