"""Client-side pacing: every vendor client waits here before a call, so a run keeps to the
vendor's published (or assumed) limits instead of learning them from 429 answers.

The counting is pyrate-limiter's (a sliding log per bucket, several rates per bucket): an
`InMemoryBucket` for limits that only matter within a process (a second, a minute), a
`SQLiteBucket` behind a file lock for limits that span runs and processes (an hour, a day, or any
limit several processes must share). What this module adds is the policy around the library:

- one `Pace` per vendor, credential and rate set in a process (`shared_pace`), so the threads of a
  run and parallel runs in one process share it; the credential is kept only as a hash;
- short windows (`wait=True`) sleep until there is room; long ones (`wait=False`: an hour, a day)
  raise BudgetExhausted saying when room comes back, because sleeping for hours helps nobody;
- a `margin` counts each window a little longer: the vendor stamps a call when it arrives, a
  little after we stamp it, so a call sent right as an old one leaves our window still fits theirs;
- `hold=True` keeps a slot from the moment a request leaves until one window after its answer
  (Axle, Cyberimpact's POSTs): the vendor counts a request on arrival, which lies between the
  two, so measuring from the answer can never put more requests into one of the vendor's windows,
  whatever the network's delays. No library models requests in flight, so that count is kept
  here; the answered stamps live in a pyrate bucket like every other window;
- the waits reach the caller's CallCounter (`throttled_waits`, `throttled_seconds`) and, past a
  second, the run's log.

pyrate-limiter's own `Limiter` is not used: it sleeps with `time.sleep` on its own clock, and the
clients need an injectable clock and sleep (tests) and the long-window refusal above. The buckets
are driven directly (`put` decides and records, `waiting` says how long).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
import time
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from pyrate_limiter import InMemoryBucket, Rate, RateItem, SQLiteBucket

from resources.base import VendorError
from resources.target import RateBudget

# A child of the HTTP layer's logger, which dagster.yaml hands to Dagster (managed_python_loggers):
# a long wait lands in the run's log beside the retries.
log = logging.getLogger("resources.http.pacing")

DATA_DIR_ENV = "MEMBERFLOW_DATA_DIR"  # the landing data dir (memberflow.landing.data_dir)
# The vendor stamps a call when it arrives, a little after we stamp it: count each window this
# much longer, so a call sent right as an old one leaves our window still finds room at theirs.
DEFAULT_MARGIN_SECONDS = 0.25
# A second-long window stamped at send time: a smaller margin than DEFAULT (which would cost a
# fifth of the rate) covers the usual spread between our send and the vendor's arrival stamp.
PER_SECOND_MARGIN_SECONDS = 0.05
LOG_WAIT_SECONDS = 1.0  # a wait longer than this is worth a line in the run's log
_TABLE = "calls"


@dataclass(frozen=True)
class Window:
    """At most `limit` calls in any `seconds`; `wait` says whether to sleep for room or refuse."""

    name: str  # "second", "minute", "hour", "day"
    limit: int
    seconds: float
    wait: bool = True


PACING_ENV = "MEMBERFLOW_PACING"


def requests_per_second_pace(
    vendor: str,
    credential: str,
    requests_per_second: float | None,
    *,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Pace | None:
    """The shared in-process pace of a `requests_per_second` setting; 0 or None: no pacing.

    `MEMBERFLOW_PACING=off` turns these per-second paces off for every client of the process
    (tests and benchmarks against a sandbox without limits, or whose 429s are the point); the
    long windows (a day's quota) are kept either way.
    """
    if not requests_per_second or os.environ.get(PACING_ENV, "").lower() == "off":
        return None
    return shared_pace(
        vendor,
        credential,
        per_second(requests_per_second),
        across_processes=False,
        margin=PER_SECOND_MARGIN_SECONDS,
        clock=clock,
        sleep=sleep,
    )


def per_second(requests_per_second: float) -> tuple[Window, ...]:
    """The window of a `requests_per_second` setting: 10 -> 10 a second, 0.5 -> 1 per 2 s."""
    if requests_per_second <= 0:
        raise ValueError("requests_per_second must be > 0 (0 or null turns pacing off)")
    if requests_per_second >= 1:
        whole = math.floor(requests_per_second)
        return (Window("second", whole, whole / requests_per_second, wait=True),)
    return (Window("second", 1, 1.0 / requests_per_second, wait=True),)


def binding_windows(windows: Sequence[Window]) -> tuple[Window, ...]:
    """`windows` by length, without those another one already implies (they can never bind:
    20 a second under 5000 a day, 400 a minute under 5 a second). pyrate-limiter wants a rate
    list with strictly increasing limits and falling density; a set that still is not is refused
    when the pace is made, naming the windows."""
    ordered = sorted(windows, key=lambda w: w.seconds)
    kept = [
        w
        for w in ordered
        if not any(
            (v.seconds > w.seconds and v.limit <= w.limit)
            or (v.seconds < w.seconds and v.limit * math.ceil(w.seconds / v.seconds) <= w.limit)
            for v in ordered
        )
    ]
    for shorter, longer in zip(kept, kept[1:], strict=False):
        if longer.limit / longer.seconds > shorter.limit / shorter.seconds:
            raise ValueError(
                f"{longer.limit}/{longer.name} allows more calls a second than "
                f"{shorter.limit}/{shorter.name}: not a rate set a sliding log can keep"
            )
    return tuple(kept)


class WaitCounter(Protocol):
    """What the pace reports its waits to (resources.base.CallCounter)."""

    def add_wait(self, seconds: float) -> None: ...


class BudgetExhausted(VendorError):
    """A capped window (an hour, a day) has no calls left; nothing was sent."""

    def __init__(self, vendor: str, window: Window, frees_at: datetime) -> None:
        self.window = window
        self.frees_at = frees_at
        message = (
            f"the {window.limit} calls per {window.name} of this credential are spent (counted "
            f"by memberflow across runs); the next call is allowed at "
            f"{frees_at:%Y-%m-%d %H:%M:%S} UTC"
        )
        super().__init__(vendor, 429, message)

    def summary(self) -> str:
        return f"{self.vendor}: call budget exhausted: {self.message}"


def default_budget_dir() -> Path:
    """`<data dir>/rate_budget`; the data dir rule is the landing module's, restated here."""
    return Path(os.environ.get(DATA_DIR_ENV, "data")).resolve() / "rate_budget"


def credential_key(vendor: str, credential: str) -> str:
    """A stable file-name-safe key for a credential that reveals nothing of it."""
    return f"{vendor}-" + hashlib.sha256(f"{vendor}\0{credential}".encode()).hexdigest()[:32]


class Pace:
    """The calls of one credential, checked against `windows` before each call.

    `path` set: the stamps live in that SQLite file and every process using it shares them (wall
    clock); else in memory for this process (monotonic clock). Thread-safe.
    """

    def __init__(
        self,
        vendor: str,
        windows: Sequence[Window],
        *,
        path: Path | None = None,
        hold: bool = False,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        margin: float = DEFAULT_MARGIN_SECONDS,
    ) -> None:
        if not windows or any(w.limit < 1 or w.seconds <= 0 for w in windows):
            raise ValueError("a pace needs at least one window, each with limit >= 1, seconds > 0")
        if hold and (len(windows) != 1 or path is not None):
            raise ValueError("a held pace has one window and lives in memory")
        self.vendor = vendor
        self.windows = binding_windows(windows)
        self.path = path
        self.hold = hold
        self._clock = clock or (time.time if path is not None else time.monotonic)
        self._sleep = sleep
        self._margin = margin
        self._by_interval = {self._interval_ms(w): w for w in self.windows}
        rates = [Rate(w.limit, self._interval_ms(w)) for w in self.windows]
        self._bucket: InMemoryBucket | SQLiteBucket
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._bucket = SQLiteBucket.init_from_file(
                rates, table=_TABLE, db_path=str(path), use_file_lock=True
            )
        else:
            self._bucket = InMemoryBucket(rates)
        self._lock = threading.Lock()
        self._in_flight = 0
        self._admitted_at = 0  # ms: the latest time a held slot was given

    # --- waiting -------------------------------------------------------------------------------

    def acquire(self, counter: WaitCounter | None = None) -> float:
        """Block until every short window has room, then count one call; raise BudgetExhausted
        when a long one has none (nothing counted). Returns the seconds waited."""
        waited = 0.0
        at_least = 0  # after a wait, the time it waited for (ms), as pyrate's Limiter does
        while True:
            with self._lock:
                now = max(self._now_ms(), at_least)
                wait = self._try_hold(now) if self.hold else self._try_put(now)
            if wait is None:
                break
            self._sleep(wait)
            waited += wait
            at_least = now + math.ceil(wait * 1000)
        if waited > 0:
            if counter is not None:
                counter.add_wait(waited)
            if waited >= LOG_WAIT_SECONDS:
                log.info(
                    "%s: waited %.1f s for room under the client-side limit (%s)",
                    self.vendor,
                    waited,
                    self.describe(),
                )
        return waited

    def release(self) -> None:
        """The call's answer (or failure) came back; a held slot frees one window from now."""
        if not self.hold:
            return
        with self._lock:
            self._in_flight -= 1
            # Always room: acquire let this call through only with in-flight + answered < limit.
            # Rounded up, so a whole window is waited from the answer, never a fraction less;
            # never before the latest admission (a sleep that did not move this clock).
            stamp = max(math.ceil(self._clock() * 1000), self._admitted_at)
            self._bucket.put(RateItem("call", stamp))

    @contextmanager
    def slot(self, counter: WaitCounter | None = None) -> Any:
        """`with pace.slot(calls): send()`: acquire before, release after (held or not)."""
        self.acquire(counter)
        try:
            yield
        finally:
            self.release()

    # --- reading -------------------------------------------------------------------------------

    def used(self, window: Window) -> int:
        """Calls counted in the last `window.seconds` by anyone using this pace."""
        since = self._now_ms() - int(window.seconds * 1000)
        with self._lock:
            if isinstance(self._bucket, SQLiteBucket):
                with self._bucket.lock:
                    (count,) = self._bucket.conn.execute(
                        f"SELECT count(*) FROM '{_TABLE}' WHERE item_timestamp > ?", (since,)
                    ).fetchone()
                return int(count)
            items = self._bucket.items
            return len(items) - bisect_right(items, since, key=lambda i: i.timestamp)

    def budget(self) -> RateBudget:
        """What is left in the longest window (the day): for `memberflow check` and run reports."""
        longest = self.windows[-1]
        return RateBudget(window=longest.name, limit=longest.limit, used=self.used(longest))

    def describe(self) -> str:
        """`5/second, 150/minute`: for log lines."""
        return ", ".join(f"{w.limit}/{w.name}" for w in self.windows)

    def close(self) -> None:
        if isinstance(self._bucket, SQLiteBucket):
            self._bucket.close()

    # --- internals -----------------------------------------------------------------------------

    def _interval_ms(self, window: Window) -> int:
        return int(round((window.seconds + self._margin) * 1000))

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    def _try_put(self, now: int) -> float | None:
        """None when the call was counted, else seconds to wait before trying again."""
        self._bucket.leak(now)  # stamps older than the longest window go (other processes' too)
        item = RateItem("call", now)
        if self._bucket.put(item):
            return None
        failing = self._bucket.failing_rate
        assert failing is not None
        window = self._by_interval[failing.interval]
        wait_ms = self._bucket.waiting(item)
        if wait_ms < 0:  # the call can never fit (cannot happen with weight 1)
            raise ValueError(f"{self.vendor}: a call does not fit {self.describe()}")
        if not window.wait:
            frees_at = datetime.fromtimestamp((now + wait_ms) / 1000, UTC)
            raise BudgetExhausted(self.vendor, window, frees_at)
        return max(wait_ms, 1) / 1000

    def _try_hold(self, now: int) -> float | None:
        """Held slots: in flight plus answered within the window stay under the limit."""
        assert isinstance(self._bucket, InMemoryBucket)
        window = self.windows[0]
        interval = self._interval_ms(window)
        self._bucket.leak(now)
        items = self._bucket.items
        # like pyrate's sliding log, a stamp exactly one window old still counts
        start = bisect_left(items, now - interval, key=lambda i: i.timestamp)
        answered = len(items) - start
        if self._in_flight + answered < window.limit:
            self._in_flight += 1
            self._admitted_at = max(self._admitted_at, now)
            return None
        if answered == 0:  # every slot is in flight: look again shortly
            return 0.01
        # the oldest answers that keep the window full must leave it
        blocking = items[start + self._in_flight + answered - window.limit].timestamp
        return (blocking + interval - now + 1) / 1000


_SHARED: dict[tuple[Any, ...], Pace] = {}
_SHARED_LOCK = threading.Lock()


def shared_pace(
    vendor: str,
    credential: str,
    windows: Sequence[Window],
    *,
    across_processes: bool | None = None,
    hold: bool = False,
    directory: Path | None = None,
    margin: float = DEFAULT_MARGIN_SECONDS,
    clock: Callable[[], float] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> Pace:
    """The one pace of this credential and rate set in this process (per clock and sleep, so a
    test's fake clock gets its own).

    `across_processes` (default: when a window is an hour or longer, or refuses instead of
    waiting) keeps the stamps in `<data dir>/rate_budget/<hash>.sqlite` so every run and process
    of the credential counts together. The credential itself is never kept, only its hash.
    """
    if not credential:
        raise ValueError("a pace needs the credential it limits")
    windows = binding_windows(windows)
    shared = across_processes
    if shared is None:
        shared = any(w.seconds >= 3600 or not w.wait for w in windows)
    key_name = credential_key(vendor, credential)
    path = (directory or default_budget_dir()) / f"{key_name}.sqlite" if shared else None
    key = (key_name, windows, hold, path, margin, clock, sleep)
    with _SHARED_LOCK:
        pace = _SHARED.get(key)
        if pace is None:
            pace = Pace(
                vendor, windows, path=path, hold=hold, margin=margin, clock=clock, sleep=sleep
            )
            _SHARED[key] = pace
        return pace
