"""A client-side call budget shared by every run and process that uses one API credential.

Some vendors cap calls per credential in several sliding windows at once (e.g. 5 a second, 150 a
minute, 1000 an hour, 5000 a day) and answer 429 past them. Waiting for the 429 wastes calls that
count against the day, and two runs of one integration (a sensor-triggered run beside a
scheduled one) would each believe they have the whole budget. So the calls are stamped in one
SQLite file per credential (named by a hash of it), and each call is checked against every window
*before* it is sent: short windows sleep, long ones raise BudgetExhausted (resources/pacing.py,
on pyrate-limiter's SQLite bucket behind a file lock, so concurrent processes never overshoot).

`SharedRateLimiter` is one client's view of that shared budget: it counts what *this* client let
through (`spent`), which a run reports beside the budget left.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from resources.pacing import (
    DATA_DIR_ENV,
    DEFAULT_MARGIN_SECONDS,
    BudgetExhausted,
    WaitCounter,
    Window,
    credential_key,
    default_budget_dir,
    shared_pace,
)
from resources.target import RateBudget

__all__ = [
    "DATA_DIR_ENV",
    "BudgetExhausted",
    "SharedRateLimiter",
    "Window",
    "credential_key",
    "default_budget_dir",
]


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
        counter: WaitCounter | None = None,
    ) -> None:
        if not credential:
            raise ValueError("a shared rate limiter needs the credential it limits")
        self.vendor = vendor
        self.path = (
            directory or default_budget_dir()
        ) / f"{credential_key(vendor, credential)}.sqlite"
        # one pace (one SQLite connection) per file in a process, however many clients come and
        # go (a sensor tick makes one each time)
        self._pace = shared_pace(
            vendor,
            credential,
            windows,
            across_processes=True,
            directory=self.path.parent,
            margin=margin,
            clock=clock,
            sleep=sleep,
        )
        self.windows = self._pace.windows
        self._counter = counter
        self._spent = 0
        self._spent_lock = threading.Lock()

    @property
    def spent(self) -> int:
        with self._spent_lock:
            return self._spent

    def acquire(self) -> None:
        """Block until every short window has room, then log one call; raise when a long one
        has none (BudgetExhausted, nothing logged)."""
        self._pace.acquire(self._counter)
        with self._spent_lock:
            self._spent += 1

    def used(self, window: Window) -> int:
        """Calls logged in the last `window.seconds` by anyone using this credential."""
        return self._pace.used(window)

    def budget(self) -> RateBudget:
        """What is left in the longest window (the day): for `memberflow check` and run reports."""
        return self._pace.budget()
