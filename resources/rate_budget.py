"""A client-side call budget shared by every run and process that uses one API credential.

Some vendors cap calls per credential in several sliding windows at once (e.g. 5 a second, 150 a
minute, 1000 an hour, 5000 a day) and answer 429 past them. Waiting for the 429 wastes calls that
count against the day, and two runs of one integration (a sensor-triggered run beside a
scheduled one) would each believe they have the whole budget. So the calls are logged in one
SQLite file per credential, and each call is checked against every window *before* it is sent:

- short windows (`wait=True`: a second, a minute) make the caller sleep until there is room;
- long windows (an hour, a day) raise BudgetExhausted, saying when room comes back, because
  sleeping for hours inside a run helps nobody.

The check and the insert are one write transaction (BEGIN IMMEDIATE), so concurrent processes
never overshoot. The file is named by a hash of the credential, never the credential itself.
A 429 the vendor still sends is handled by the HTTP layer's Retry-After rule as before.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from resources.base import VendorError
from resources.target import RateBudget

DATA_DIR_ENV = "MEMBERFLOW_DATA_DIR"  # the landing data dir (memberflow.landing.data_dir)
# The vendor stamps a call when it arrives, a little after we stamp it: count each window this
# much longer, so a call sent right as an old one leaves our window still finds room at theirs.
DEFAULT_MARGIN_SECONDS = 0.25
BUSY_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Window:
    """At most `limit` calls in any `seconds`; `wait` says whether to sleep for room or refuse."""

    name: str  # "second", "minute", "hour", "day"
    limit: int
    seconds: float
    wait: bool


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


class SharedRateLimiter:
    """The calls of one credential across processes, checked against `windows` before each call.

    `acquire()` before every try of a request (retries count too: the vendor counts them).
    `spent` is how many calls this instance (one run's client) let through.
    """

    def __init__(
        self,
        vendor: str,
        credential: str,
        windows: Sequence[Window],
        *,
        directory: Path | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], None] = time.sleep,
        margin: float = DEFAULT_MARGIN_SECONDS,
    ) -> None:
        if not credential:
            raise ValueError("a shared rate limiter needs the credential it limits")
        self.vendor = vendor
        self.windows = tuple(sorted(windows, key=lambda w: w.seconds))
        self.path = (
            directory or default_budget_dir()
        ) / f"{credential_key(vendor, credential)}.sqlite"
        self._clock = clock
        self._sleep = sleep
        self._margin = margin
        self._lock = threading.Lock()
        self._spent = 0
        self._ready = False

    @property
    def spent(self) -> int:
        with self._lock:
            return self._spent

    def acquire(self) -> None:
        """Block until every short window has room, then log one call; raise when a long one
        has none (BudgetExhausted, nothing logged)."""
        while True:
            wait = self._try_acquire()
            if wait is None:
                with self._lock:
                    self._spent += 1
                return
            self._sleep(wait)

    def used(self, window: Window) -> int:
        """Calls logged in the last `window.seconds` by anyone using this credential."""
        now = self._clock()
        with closing(self._connect()) as conn:
            (count,) = conn.execute(
                "SELECT count(*) FROM calls WHERE at > ?", (now - window.seconds,)
            ).fetchone()
        return int(count)

    def budget(self) -> RateBudget:
        """What is left in the longest window (the day): for `memberflow check` and run reports."""
        longest = self.windows[-1]
        return RateBudget(window=longest.name, limit=longest.limit, used=self.used(longest))

    # --- internals -----------------------------------------------------------------------------

    def _try_acquire(self) -> float | None:
        """One transaction: None when the call was logged, else seconds to wait before retrying."""
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")  # one writer at a time: no two callers see one gap
            try:
                now = self._clock()
                horizon = now - self.windows[-1].seconds - self._margin
                conn.execute("DELETE FROM calls WHERE at <= ?", (horizon,))
                wait = self._room(conn, now)
                if wait is None:
                    conn.execute("INSERT INTO calls (at) VALUES (?)", (now,))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return wait

    def _room(self, conn: sqlite3.Connection, now: float) -> float | None:
        """None when every window has room now; the longest wait among the short ones otherwise."""
        longest_wait: float | None = None
        for window in self.windows:
            span = window.seconds + self._margin
            rows = conn.execute(
                "SELECT at FROM calls WHERE at > ? ORDER BY at", (now - span,)
            ).fetchall()
            if len(rows) < window.limit:
                continue
            # room comes back when the oldest call that keeps the window full leaves it
            frees_at = rows[len(rows) - window.limit][0] + span
            if not window.wait:
                raise BudgetExhausted(self.vendor, window, datetime.fromtimestamp(frees_at, UTC))
            wait = max(frees_at - now, 0.001)
            longest_wait = wait if longest_wait is None else max(longest_wait, wait)
        return longest_wait

    def _connect(self) -> sqlite3.Connection:
        if not self._ready:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        if not self._ready:
            conn.execute("CREATE TABLE IF NOT EXISTS calls (at REAL NOT NULL)")
            conn.execute("CREATE INDEX IF NOT EXISTS calls_at ON calls (at)")
            self._ready = True
        return conn


def credential_key(vendor: str, credential: str) -> str:
    """A stable file-name-safe key for a credential that reveals nothing of it."""
    return f"{vendor}-" + hashlib.sha256(f"{vendor}\0{credential}".encode()).hexdigest()[:32]
