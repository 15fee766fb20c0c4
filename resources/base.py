"""Shared vendor-client types: errors, call counting and the shared value types of both roles.

The source role lives in resources/source.py (re-exported here for older imports); the target
role's batch seam lives in resources/target.py.

Assets depend on these roles only, never on a vendor class, so a new vendor is a new client plus
an emulator, a mapping and an integration file, and no edit to the pipeline.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from memberflow import progress


class VendorError(RuntimeError):
    """A refusal from a vendor API, kept whole so the user sees the vendor's own reason (C8).

    `status` is the HTTP status, or 0 when no usable answer came back after all retries (the host
    could not be reached, or every answer was unreadable): a transient failure, never a refusal.
    `message` is the vendor's error text (or what went wrong) with any secret removed; `body` is
    the parsed error body when it was JSON.
    """

    def __init__(self, vendor: str, status: int, message: str, body: Any = None) -> None:
        self.vendor = vendor
        self.status = status
        self.message = message
        self.body = body
        super().__init__(self.summary())

    def summary(self) -> str:
        if self.status == 0:  # "heyloyalty: could not reach api.heyloyalty.com: ..."
            return f"{self.vendor}: {self.message}"
        return f"{self.vendor} answered {self.status}: {self.message}"


class UncertainOutcome(VendorError):
    """A request that is not idempotent was sent, and its answer was lost or unreadable.

    The vendor may or may not have acted on it, so it is never retried blindly: the caller must
    record the outcome as unknown and resolve it (see memberflow/event_delivery.py). `status` is
    the HTTP status seen (e.g. 500, 502, 504, or 200 with a cut-off body), or 0 for none.

    Idempotent requests (GET, PUT, DELETE, and upserts such as Heyloyalty's, HL-A6) never raise
    this: they are retried, and end as a plain VendorError with status 0 once the tries are spent.
    """

    def summary(self) -> str:
        seen = f"answered {self.status}" if self.status else "no answer"
        return f"{self.vendor}: outcome unknown ({seen}): {self.message}"


class CallCounter:
    """Counts the HTTP calls a client spends, by endpoint label, how many of them were retries
    and throttled (429) answers, and the client-side pacing waits, so every run can report them
    (AF8, C8).

    Thread-safe because target clients send in parallel.

    Calls are also counted by purpose (`by_purpose`): where one endpoint serves several ends (a
    member listing is a pull, a guard read or a read-back), the code that knows names it with
    `purpose(...)`; a call sent outside any such block counts under its endpoint.
    """

    def __init__(self, ledger: Any = None) -> None:
        """`ledger`: optional, something with `add(endpoint)` that keeps the calls beyond the
        run (resources/call_ledger.MonthlyCallLedger, for a vendor with a monthly cap)."""
        self._lock = threading.Lock()
        self._ledger = ledger
        self._by_endpoint: Counter[str] = Counter()
        self._by_purpose: Counter[str] = Counter()
        self._purpose = threading.local()  # per thread: the upsert pools send in parallel
        self._retries = 0
        self._throttled = 0
        self._waits = 0  # client-side pacing (resources/pacing.py): waits before a call
        self._waited = 0.0
        progress.watch_calls(self)  # made while a step works: the step's live figures count it

    def add(self, endpoint: str) -> None:
        purpose = getattr(self._purpose, "name", None) or endpoint
        with self._lock:
            self._by_endpoint[endpoint] += 1
            self._by_purpose[purpose] += 1
        if self._ledger is not None:
            self._ledger.add(endpoint)

    def add_retry(self, *, throttled: bool) -> None:
        """One more try after a failed one; `throttled` when the failure was a 429."""
        with self._lock:
            self._retries += 1
            self._throttled += int(throttled)

    def add_wait(self, seconds: float) -> None:
        """The client waited `seconds` for room under its vendor's limit before a call."""
        with self._lock:
            self._waits += 1
            self._waited += seconds

    @property
    def throttled_waits(self) -> int:
        """How many calls waited for the client-side limit (not the vendor's 429s: `throttled`)."""
        with self._lock:
            return self._waits

    @property
    def throttled_seconds(self) -> float:
        with self._lock:
            return round(self._waited, 3)

    def pacing(self) -> dict[str, int | float]:
        """`throttled_waits`, `throttled_seconds`: for a step's metadata."""
        with self._lock:
            return {"throttled_waits": self._waits, "throttled_seconds": round(self._waited, 3)}

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._by_endpoint.values())

    @property
    def retries(self) -> int:
        with self._lock:
            return self._retries

    @property
    def throttled(self) -> int:
        with self._lock:
            return self._throttled

    def by_endpoint(self) -> dict[str, int]:
        with self._lock:
            return dict(self._by_endpoint)

    def by_purpose(self) -> dict[str, int]:
        """The same calls by what they were for (see the class docstring)."""
        with self._lock:
            return dict(self._by_purpose)

    @contextmanager
    def purpose(self, name: str) -> Iterator[None]:
        """The calls this thread sends inside the block count under `name`; an enclosing
        block's name wins (the caller knows more of why than the method it calls)."""
        outer = getattr(self._purpose, "name", None)
        if outer is None:
            self._purpose.name = name
        try:
            yield
        finally:
            if outer is None:
                self._purpose.name = None


@dataclass(frozen=True)
class ListField:
    """One field of a target list: its name, format and, for choice fields, options id -> label."""

    name: str
    format: str  # text | number | date | boolean | choice | multi
    options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RemoteMember:
    """A member as the target list reports it, for the pull-back of unsubscribes and bounces."""

    member_id: str
    email: str | None
    mobile: str | None
    status: str  # active | unsubscribed
    email_status: str | None  # active | hard_bounce | complaint | None
    unsubscribed_at: datetime | None
    updated_at: datetime | None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class UpsertFlags:
    """Per-send switches of C5/C6: opt-in mail first, automations (welcome mails), webhooks."""

    send_optin: bool = False
    send_automations: bool = False
    send_webhooks: bool = False


@dataclass(frozen=True)
class EventImportResult:
    """The target's answer to one batch of tracking events: rows imported, rows refused."""

    imported: int
    failed: list[tuple[int, str]]  # (0-based row index in the batch, the target's reason)


_MOVED_TO_SOURCE = frozenset({"EntitySpec", "RecordMeta", "SourceClient"})


def __getattr__(name: str) -> Any:
    """Older imports of the source role from here keep working (lazily: source imports base)."""
    if name in _MOVED_TO_SOURCE:
        from resources import source

        return getattr(source, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
