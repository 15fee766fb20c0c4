"""Role interfaces and shared types: a source hands out raw records (SourceClient here); a target
takes members and tracking events (TargetClient in resources/target.py, on the types below).

Assets depend on these roles only, never on a vendor class, so a new vendor is a new client here
plus an emulator, a mapping and an integration file, and no edit to the pipeline.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, ClassVar, Literal


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
    """Counts the HTTP calls a client spends, by endpoint label, and how many of them were retries
    and throttled (429) answers, so every run can report them (AF8, C8).

    Thread-safe because target clients send in parallel.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_endpoint: Counter[str] = Counter()
        self._retries = 0
        self._throttled = 0

    def add(self, endpoint: str) -> None:
        with self._lock:
            self._by_endpoint[endpoint] += 1

    def add_retry(self, *, throttled: bool) -> None:
        """One more try after a failed one; `throttled` when the failure was a 429."""
        with self._lock:
            self._retries += 1
            self._throttled += int(throttled)

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


@dataclass(frozen=True)
class EntitySpec:
    """One kind of record a source hands out.

    role "members" records become list members (customers); role "events" records become tracking
    events and are landed in daily partitions by their business date.
    """

    name: str
    role: Literal["members", "events"]
    description: str = ""


@dataclass(frozen=True)
class RecordMeta:
    """What the pipeline must know of a raw record without parsing its business fields."""

    record_id: str
    modified: datetime  # timezone-aware UTC
    business_date: date | None  # the day partition of an event record; None for members


class SourceClient(ABC):
    """A vendor API that records are read from."""

    vendor: ClassVar[str]
    default_date_format: ClassVar[str]  # strptime format of dates the source sends (C6 default)

    calls: CallCounter

    @abstractmethod
    def entities(self) -> Sequence[EntitySpec]:
        """The entities this configured source can deliver (e.g. tickets only with Attractions)."""

    @abstractmethod
    def check_connection(self) -> None:
        """One cheap authenticated call; raises VendorError when credentials or host are wrong."""

    @abstractmethod
    def iter_changed(self, entity: str, since: datetime | None) -> Iterator[list[dict[str, Any]]]:
        """Pages of records changed at or after `since` (aware UTC); everything when None.

        Vendor rules live here: customer filters (FP2), consent filtering (TM2), and catching
        consent withdrawals on incremental reads (TM-A3).
        """

    @abstractmethod
    def iter_range(self, entity: str, start: date, end: date) -> Iterator[list[dict[str, Any]]]:
        """Pages of event records whose business date lies in [start, end], both inclusive.

        The client splits the range into the windows its vendor accepts (one year, TM4/FP-A3).
        """

    @abstractmethod
    def has_changes(self, entity: str, since: datetime | None) -> bool:
        """A one-call probe for the five-minute sensor: is anything new since `since`?"""

    @abstractmethod
    def record_meta(self, entity: str, record: dict[str, Any]) -> RecordMeta:
        """Id, modified time (as aware UTC) and business date of one raw record."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the HTTP connection pool."""


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
