"""Keep Axle calls under its 5 requests per second per key (AX-A4) *before* sending them.

A slot is held from the moment a request leaves until one window after its answer arrived: Axle
counts a request when it receives it, which lies between the two, so measuring from the answer
can never put six requests into one of Axle's windows, whatever the network's delays. The pacer
is shared by every client of one key in this process (threads, parallel runs); a 429 that still
comes (another process on the same key) is waited out by VendorHttp with Axle's Retry-After.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Callable

import httpx


class Pacer:
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
        self.limit, self.window = limit, window
        self._clock, self._sleep = clock, sleep
        self._answered: deque[float] = deque()
        self._in_flight = 0
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Block until a request may leave, then count it as in flight."""
        while True:
            with self._lock:
                now = self._clock()
                while self._answered and self._answered[0] <= now - self.window:
                    self._answered.popleft()
                if self._in_flight + len(self._answered) < self.limit:
                    self._in_flight += 1
                    return
                wait = self._answered[0] + self.window - now if self._answered else 0.01
            self._sleep(max(wait, 0.001))

    def release(self) -> None:
        """The request's answer (or failure) came back: its slot frees one window from now."""
        with self._lock:
            self._in_flight -= 1
            self._answered.append(self._clock())


class PacedTransport(httpx.BaseTransport):
    """An httpx transport that takes a pacer slot around every request, retries included."""

    def __init__(self, pacer: Pacer, inner: httpx.BaseTransport | None = None) -> None:
        self._pacer = pacer
        self._inner = inner or httpx.HTTPTransport()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._pacer.acquire()
        try:
            return self._inner.handle_request(request)
        finally:
            self._pacer.release()

    def close(self) -> None:
        self._inner.close()


_SHARED: dict[tuple[str, str, int], Pacer] = {}
_SHARED_LOCK = threading.Lock()


def shared_pacer(base_url: str, api_key: str, limit: int) -> Pacer:
    """The one pacer of this key on this host in this process (the key itself is not kept)."""
    key_hash = hashlib.sha256(api_key.encode()).hexdigest()
    with _SHARED_LOCK:
        return _SHARED.setdefault((base_url, key_hash, limit), Pacer(limit))
