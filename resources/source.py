"""The source role: a vendor API that hands out raw records, described by what it can do.

A source reads its entities from an *opaque cursor*: a string only the client understands (a
modified-since time, a scan's start time, a vendor's change token). The pipeline stores the
string after the pages it covers are on disk and hands it back on the next run and sensor tick;
it never parses it. Sources whose vendor filters on a modification time implement the datetime
primitives `iter_modified` / `has_modified` and inherit the cursor methods, which read the cursor
as an ISO 8601 datetime.

Everything else is optional with a safe default: re-reading records by id (for webhook hints),
warnings for the run's log, the rate budget left, and registering webhooks.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import pyarrow as pa

from resources.base import CallCounter
from resources.record_fields import record_id

if TYPE_CHECKING:
    from resources.target import RateBudget

DELETED_FLAG = "_memberflow_deleted"  # a raw record carrying this key as true is a tombstone
# The vendors' modified-since filters are inclusive and count whole seconds (FP-A3, TM-A2): what
# happened in the cursor's own second is already landed, so a probe asks from the next second.
PROBE_STEP = timedelta(seconds=1)


@dataclass(frozen=True)
class EntitySpec:
    """One kind of record a source hands out.

    role "members" records become members (customers); role "events" records become tracking
    events and are landed in daily partitions by their business date. `id_field` names the
    record's id key (kept in tombstones). `full_scan` marks an entity that can only be read
    whole (no modified filter): after a complete scan, ids landed before and missing from the
    scan are landed as tombstones, so deletions are seen without webhooks. An event entity may
    be read whole too (e.g. the memberships active now); its tombstones land on the day they
    are seen, and staging drops the record wherever it was.
    """

    name: str
    role: Literal["members", "events"]
    description: str = ""
    id_field: str | None = None
    full_scan: bool = False


@dataclass(frozen=True)
class RecordMeta:
    """What the pipeline must know of a raw record without parsing its business fields."""

    record_id: str
    modified: datetime  # timezone-aware UTC
    business_date: date | None  # the day partition of an event record; None for members


@dataclass(frozen=True)
class PageMeta:
    """The metadata of a whole page at once, as Arrow columns: entry i is what `record_meta`
    gives for the page's record i (`SourceClient.page_meta`)."""

    record_id: pa.Array  # string
    modified: pa.Array  # timestamp("us", tz="UTC")
    business_date: pa.Array | None  # date32; None for a members entity (no business date)


class RawPage(Sequence[dict[str, Any]]):
    """A page of records as the source sent them (issue 10): each record's JSON text exactly as
    it came (`payloads`, an Arrow string array) and the page's metadata (`meta`, entry i that of
    record i), read from the body without a Python object per record. Landing writes the two
    directly; anything else reads the page as its list of records, parsed on first use.

    A client hands one out only for a page with nothing unusual on it (compact JSON, no
    tombstone flag, metadata `page_meta` would answer for): any other page is a plain list of
    records, landed as before (`page_meta`, or `record_meta` record by record)."""

    __slots__ = ("_parse", "_records", "meta", "payloads")

    def __init__(
        self, payloads: pa.Array, meta: PageMeta, parse: Callable[[], list[dict[str, Any]]]
    ) -> None:
        self.payloads = payloads
        self.meta = meta
        self._parse = parse
        self._records: list[dict[str, Any]] | None = None

    def records(self) -> list[dict[str, Any]]:
        if self._records is None:
            self._records = self._parse()
        return self._records

    def __len__(self) -> int:
        return len(self.payloads)

    def __getitem__(self, index):  # type: ignore[no-untyped-def]  # int or slice, as a list
        return self.records()[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.records())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, RawPage):
            other = other.records()
        return self.records() == other

    __hash__ = None  # type: ignore[assignment]  # as a list's

    def __repr__(self) -> str:
        return f"RawPage({len(self)} records)"


def is_tombstone(record: dict[str, Any]) -> bool:
    """Does this raw record say its source record was deleted?"""
    return record.get(DELETED_FLAG) is True


def cursor_datetime(cursor: str | datetime | None) -> datetime | None:
    """The datetime a modified-since cursor stands for (a datetime is taken as it is)."""
    if cursor is None or isinstance(cursor, datetime):
        return cursor
    return datetime.fromisoformat(cursor)


WriteBackAction = Literal["unsubscribe", "record_click", "create"]
WriteBackStatus = Literal["done", "already", "refused", "skipped"]


@dataclass(frozen=True)
class WriteBack:
    """One change carried back into a two-way source, decided by the core from the target's
    feedback (memberflow/write_back.py).

    - unsubscribe: the member left the list; the source stops marking record `record_id` for
      the list (e.g. clears its newsletter flag), so it is not sent again.
    - record_click: the member clicked a mailing; the source keeps a record of it on
      `record_id`. `detail`: occurred_at (ISO UTC), campaign_id, campaign_name, link_url.
    - create: a member that exists only on the list; `record_id` is None and `values` holds its
      fields by the *source's* field names (the core inverted the mappings), e.g. Name, Email.

    `key` is the write-back's identity (the same feedback always gives the same key). `resumed`
    is True when an earlier attempt of this very write-back may have reached the source but was
    not recorded (a crash between the call and the bookkeeping): the client must look before it
    writes (a record of this click already there? a record with this email already there?) so
    nothing is done twice.
    """

    action: WriteBackAction
    key: str
    record_id: str | None
    values: Mapping[str, Any] = field(default_factory=dict)
    detail: Mapping[str, Any] = field(default_factory=dict)
    resumed: bool = False


@dataclass(frozen=True)
class WriteBackResult:
    """The source's answer to one WriteBack.

    done: written now. already: the source was already so (flag already cleared, the click
    already recorded, a record with this email exists; `record_id` names it). refused: the
    source said no (`reason`: its own words; not tried again). skipped: not written, not a
    refusal (e.g. the source cannot write this field: `reason` says why, for the report).
    A transient failure is not a result: the client raises VendorError and the write-back stays
    pending for the next run.
    """

    status: WriteBackStatus
    record_id: str | None = None
    reason: str | None = None


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
    def record_meta(self, entity: str, record: dict[str, Any]) -> RecordMeta:
        """Id, modified time (as aware UTC) and business date of one raw record."""

    def page_meta(self, entity: str, page: list[dict[str, Any]]) -> PageMeta | None:
        """Optional, for speed: the metadata of every record of a page, read column by column
        rather than record by record. None (the default, and the answer for any page with
        anything unusual on it: a missing id, a date in another format, a tombstone) means
        "ask `record_meta` for each record", whose errors then quarantine just the records they
        name. When it answers, it must be exactly what `record_meta` gives for each record."""
        return None

    # --- reading by cursor (override these, or the datetime primitives below) -----------------

    def iter_changed(
        self, entity: str, cursor: str | datetime | None
    ) -> Iterator[list[dict[str, Any]]]:
        """Pages of records changed since `cursor`; everything when None.

        The default reads the cursor as a datetime and calls `iter_modified` (inclusive: the
        cursor's own second is read again, so nothing changed in it is missed). Vendor rules
        live in the client: customer filters (FP2), consent filtering (TM2), catching consent
        withdrawals on incremental reads (TM-A3). A full-scan entity ignores the cursor.
        """
        return self.iter_modified(entity, cursor_datetime(cursor))

    def has_changes(self, entity: str, cursor: str | datetime | None) -> bool:
        """A one-call probe for the sensor: anything new after the committed `cursor`?

        The default asks `has_modified` from the second after the cursor's datetime: what is
        at the cursor is already landed, and a change in that same second is picked up by the
        next run, whose read overlaps it. A full-scan entity has no cheap probe: it answers
        True, so it is scanned at every interval (override when the vendor offers a probe)."""
        if self._full_scan(entity):
            return True
        since = cursor_datetime(cursor)
        return self.has_modified(entity, None if since is None else since + PROBE_STEP)

    def cursor_after(
        self,
        entity: str,
        previous: str | None,
        high_water: datetime | None,
        started_at: datetime,
    ) -> str | None:
        """The cursor to store once a read's pages are on disk; None or `previous`: keep it.

        The default is the newest modified time landed (`high_water`); for a full-scan entity,
        the scan's start (`started_at`), which says when it was last read whole."""
        if self._full_scan(entity):
            return started_at.isoformat()
        return high_water.isoformat() if high_water is not None else previous

    def scan_complete(self, entity: str) -> bool:
        """Did the last `iter_changed` of a full-scan entity read the whole entity?

        A client that stops a scan early (a spent budget) answers False, so no record it did
        not reach is taken for deleted."""
        return True

    def iter_modified(self, entity: str, since: datetime | None) -> Iterator[list[dict[str, Any]]]:
        """Pages of records modified at or after `since` (aware UTC); everything when None."""
        raise NotImplementedError(f"{self.vendor} reads {entity} by its own cursor")

    def has_modified(self, entity: str, since: datetime | None) -> bool:
        """One call: was any record modified at or after `since`?"""
        raise NotImplementedError(f"{self.vendor} probes {entity} by its own cursor")

    def iter_range(self, entity: str, start: date, end: date) -> Iterator[list[dict[str, Any]]]:
        """Pages of event records whose business date lies in [start, end], both inclusive.

        The client splits the range into the windows its vendor accepts (one year, TM4/FP-A3).
        """
        raise ValueError(f"{self.vendor} {entity} cannot be read by business date")

    # --- optional capabilities ------------------------------------------------------------------

    def fetch_records(self, entity: str, ids: Sequence[str]) -> Iterator[list[dict[str, Any]]]:
        """Pages of the records with these ids, read again from the source (webhook hints).

        A record gone at the source comes back as `self.tombstone(entity, id)`."""
        raise NotImplementedError(f"{self.vendor} cannot re-read {entity} records by id")

    def run_warnings(self) -> list[str]:
        """Warnings the extract logs and puts in its metadata (e.g. a daily budget too small)."""
        return []

    def rate_budget(self) -> RateBudget | None:
        """The calls left in the source's tightest capped window, when it has one."""
        return None

    def ensure_webhooks(self, url: str) -> list[str]:
        """Register the source's webhooks to `url`; returns the hook kinds newly registered."""
        raise NotImplementedError(f"{self.vendor} has no webhooks memberflow can register")

    def webhook_problems(self) -> list[str]:
        """What is wrong with the source's webhook subscriptions, one line each (a subscription
        the vendor disabled after failed deliveries); empty when all is well or unknowable.
        The webhook sensor raises these as an alert."""
        return []

    # --- write-back (two-way integrations) -----------------------------------------------------

    # The WriteBack actions this source can apply (memberflow/write_back.py); empty: read-only.
    write_back_actions: ClassVar[frozenset[str]] = frozenset()

    def write_back(
        self, changes: Sequence[WriteBack]
    ) -> Iterator[tuple[WriteBack, WriteBackResult]]:
        """Apply changes carried back from the target, one result per change as it is known.

        Raises VendorError for a transient failure (host down after retries): the changes not
        yet answered stay pending and are handed over again (with `resumed` where a call may have
        gone out)."""
        raise NotImplementedError(f"{self.vendor} takes no write-back")

    # --- entities a run reads only when asked --------------------------------------------------

    def optional_entities(self) -> frozenset[str]:
        """Entities this configuration leaves out of automatic runs because they are costly
        (e.g. one call per member); a run includes them when its extract config says
        `include_optional: true` (a manual run from the launchpad or `memberflow sync`)."""
        return frozenset()

    # --- helpers --------------------------------------------------------------------------------

    def entity_spec(self, entity: str) -> EntitySpec:
        """The EntitySpec named `entity`; ValueError naming the known ones otherwise."""
        specs = {spec.name: spec for spec in self.entities()}
        if entity not in specs:
            raise ValueError(f"{self.vendor} has no entity {entity!r}; known: {sorted(specs)}")
        return specs[entity]

    def _full_scan(self, entity: str) -> bool:
        """Is `entity` read whole? False for an unknown one: the vendor's method says why."""
        return any(spec.name == entity and spec.full_scan for spec in self.entities())

    def tombstone(self, entity: str, record_id_: str) -> dict[str, Any]:
        """The raw record that says `record_id_` was deleted at the source."""
        id_field = self.entity_spec(entity).id_field
        if id_field is None:
            raise ValueError(f"{self.vendor} {entity} declares no id field for tombstones")
        return {id_field: record_id_, DELETED_FLAG: True}

    def tombstone_meta(
        self, entity: str, record: dict[str, Any], deleted_at: datetime
    ) -> RecordMeta:
        """Metadata of a tombstone: its id, and `deleted_at` as its modified time (the source
        gives none), so it is the newest version of the record."""
        id_field = self.entity_spec(entity).id_field
        if id_field is not None:
            return RecordMeta(record_id(record, id_field), deleted_at, None)
        return RecordMeta(self.record_meta(entity, record).record_id, deleted_at, None)

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the HTTP connection pool."""
