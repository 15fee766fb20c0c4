"""Calls spent per vendor account and calendar month, kept across runs (AF8).

Some vendors cap API calls per month and stop answering once the cap is reached, for every
integration of the account until the month turns. So every call a client sends (retries too: the
vendor counts them) is added here, by endpoint, in one SQLite file per account, named by a hash
of the account rather than the account itself. A run reports what it spent from its own
CallCounter; this ledger is the month's total across runs and processes, which the deliver asset
shows in the UI, `memberflow check` prints, and a client compares with the configured monthly
budget before it sends (`spent_out`). Months are calendar months in UTC.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

from resources.base import VendorError
from resources.rate_budget import default_budget_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS calls (
    month TEXT NOT NULL, endpoint TEXT NOT NULL, n INTEGER NOT NULL,
    PRIMARY KEY (month, endpoint));
"""


class MonthlyBudgetSpent(VendorError):
    """The configured monthly budget of calls is spent: nothing is sent until the month turns
    (or the budget is raised)."""

    def __init__(self, vendor: str, budget: int, used: int, month: str) -> None:
        self.budget = budget
        self.used = used
        super().__init__(
            vendor,
            429,
            f"the monthly budget of {budget} API calls is spent ({used} counted in {month} by "
            "memberflow across runs); nothing more is sent before the month turns — raise "
            "monthly_call_budget in the integration file if the account's cap allows more",
        )

    def summary(self) -> str:
        return f"{self.vendor}: monthly call budget spent: {self.message}"


def month_of(moment: datetime | None = None) -> str:
    """`YYYY-MM` of `moment` (now) in UTC."""
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m")


class MonthlyCallLedger:
    """The calls of one vendor account, per calendar month and endpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as conn:
            conn.executescript(_SCHEMA)

    @classmethod
    def for_account(cls, vendor: str, account: str, root: Path | None = None) -> MonthlyCallLedger:
        digest = hashlib.sha256(f"{vendor}:{account}".encode()).hexdigest()[:16]
        return cls((root or default_budget_dir()) / f"{vendor}-month-{digest}.sqlite")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        conn.execute("PRAGMA busy_timeout=60000")
        return conn

    def add(self, endpoint: str, n: int = 1, at: datetime | None = None) -> None:
        """Count `n` calls to `endpoint` in the month of `at` (now)."""
        with self._lock, closing(self._connect()) as conn:
            conn.execute(
                "INSERT INTO calls VALUES (?, ?, ?) ON CONFLICT (month, endpoint)"
                " DO UPDATE SET n = n + excluded.n",
                (month_of(at), endpoint, n),
            )

    def used(self, month: str | None = None) -> int:
        """Calls counted in `month` (this one)."""
        with closing(self._connect()) as conn:
            (n,) = conn.execute(
                "SELECT COALESCE(SUM(n), 0) FROM calls WHERE month = ?", (month or month_of(),)
            ).fetchone()
        return int(n)

    def by_endpoint(self, month: str | None = None) -> dict[str, int]:
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT endpoint, n FROM calls WHERE month = ? ORDER BY endpoint",
                (month or month_of(),),
            ).fetchall()
        return {endpoint: int(n) for endpoint, n in rows}

    def check(self, vendor: str, budget: int | None, needed: int = 1) -> None:
        """Raise MonthlyBudgetSpent when `needed` more calls would pass `budget` this month."""
        if budget is None:
            return
        used = self.used()
        if used + needed > budget:
            raise MonthlyBudgetSpent(vendor, budget, used, month_of())
