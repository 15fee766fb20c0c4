"""Admin's `Filter=` expressions and its server-local datetimes, in one place.

Admin filters are written like a small SQL `where` (`IsActive eq true and CustomerId in (1,2)`);
text and datetimes are single-quoted, datetimes as `YYYY-MM-DD HH:MM:SS` in the server's own
local time with no offset. The client builds every filter through these helpers, so quoting and
time zones are decided once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from zoneinfo import ZoneInfo

LOCAL_FORMAT = "%Y-%m-%d %H:%M:%S"  # write format of datetimes (SY-sdk entity.py)
# AD-A5: the relations that belong on the list.
SELECTION = "IsActive eq true and Newsletter eq true"
CUSTOMER_TABLE = "CUSTOMER"
# The change log's tables that change what a relation hands out: the relation itself (AD-A6) and
# its custom fields. The second name is an assumption [I]: a server without such rows just
# matches none, and a custom-field edit is otherwise only seen by the next full read.
CHANGE_TABLES = (CUSTOMER_TABLE, "CUSTOMER_EXTRADATA")
# A time-based change read starts this long before its cursor: more than the repeated hour of a
# DST fall-back plus the clock difference the session tolerates (re-reading ids is harmless).
OVERLAP = timedelta(minutes=65)
T = TypeVar("T")


def text(value: str) -> str:
    """A quoted text literal. How Admin escapes a quote inside one is not documented; a doubled
    quote (SQL Anywhere's own rule) is assumed, so `o'brien@x.be` stays one literal [I]."""
    return "'" + value.replace("'", "''") + "'"


def literal(value: object) -> str:
    """A number as it is, anything else quoted (ids read back from JSON may be either)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    shown = str(value).strip()
    return shown if shown.isdigit() else text(shown)


def one_of(field: str, values: Iterable[object]) -> str:
    """`<field> in (1,2,3)` (AD-A6)."""
    return f"{field} in ({','.join(literal(v) for v in values)})"


def changes_filter(since: str | None, after_log: int | None, until: str | None = None) -> str:
    """AD-A6: the change-log rows of CHANGE_TABLES after LogId `after_log` (the API file: a LogId
    range can be used instead of DateAction) and, when `since` is given, with DateAction at or
    after it (server-local text). Without an upper bound: what lands while we read is read now
    or after the highest LogId next time, never lost between two windows."""
    tables = ",".join(text(t) for t in CHANGE_TABLES)
    parts = [f"TableName in ({tables})"]
    if since is not None:
        parts.append(f"DateAction ge {text(since)}")
    if after_log is not None:
        parts.append(f"l.LogId gt {after_log}")
    if until is not None:  # a time window of its own (AD-A6), for a server without LogIds
        parts.append(f"DateAction lt {text(until)}")
    return " and ".join(parts)


def halves(since: str, until: str, zone: ZoneInfo) -> tuple[str, str] | None:
    """AD-A6: the two halves' bounds of a time window that hit the 1000-row cap, as
    (since, middle) and (middle, until); None when the window is one second or less."""
    start, end = parse_local(since, zone), parse_local(until, zone)
    if end - start <= timedelta(seconds=1):
        return None
    middle = local_text(start + (end - start) / 2, zone)
    return (since, middle) if middle != since else None


@dataclass(frozen=True)
class ChangeCursor:
    """Where the next change-log read starts: after LogId `log_id` once one was seen; before
    that (right after a full read, or a cursor of the older text-only format) from the
    server-local moment `at` less OVERLAP. Written `<at>|<log_id>` or just `<at>`, so a stored
    text-only cursor still reads."""

    at: str
    log_id: int | None = None

    def text(self) -> str:
        return self.at if self.log_id is None else f"{self.at}|{self.log_id}"

    @classmethod
    def read(cls, value: str, zone: ZoneInfo) -> ChangeCursor:
        """Raises ValueError when `value` is no cursor."""
        at, _, log = value.partition("|")
        moment = local_text(parse_local(at, zone), zone)
        if not log:
            return cls(moment)
        if not log.strip().isdigit():
            raise ValueError(f"unreadable LogId in cursor {value!r}")
        return cls(moment, int(log))

    def probe_since(self) -> str | None:
        """Where the sensor's probe looks from: the cursor itself, without the read's overlap
        (a change inside the overlap was read already; probing it would start a run on every
        tick for an hour)."""
        return self.at if self.log_id is None else None

    def since(self, zone: ZoneInfo) -> str | None:
        """The DateAction a time-based read starts at: OVERLAP before `at`, which covers a
        clock a little off and the repeated hour of a DST fall-back; None once a LogId leads."""
        if self.log_id is not None:
            return None
        return local_text(parse_local(self.at, zone) - OVERLAP, zone)


def local_text(moment: datetime, zone: ZoneInfo) -> str:
    """An aware (or naive UTC) moment as the server's local `YYYY-MM-DD HH:MM:SS`."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(zone).strftime(LOCAL_FORMAT)


def local_iso(moment: datetime, zone: ZoneInfo) -> str:
    """An aware moment in the server's zone with its offset: unambiguous in a DST fall-back."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(zone).isoformat(timespec="seconds")


def parse_local(value: str, zone: ZoneInfo) -> datetime:
    """Server-local text (`YYYY-MM-DD HH:MM:SS`, or ISO with a `T`, fractions or an offset) as
    aware UTC; a naive one is read in `zone`. Raises ValueError when it is no datetime."""
    moment = datetime.fromisoformat(value.strip())
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=zone)
    return moment.astimezone(UTC)


def same_local(left: object, right: str, zone: ZoneInfo) -> bool:
    """Do two server-local datetimes name the same second (`2026-01-02T10:00:00` written back as
    `2026-01-02 10:00:00` is the same)? Unreadable values compare as text."""
    try:
        return parse_local(str(left), zone).replace(microsecond=0) == parse_local(
            right, zone
        ).replace(microsecond=0)
    except ValueError:
        return str(left).strip() == right.strip()


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of at most `size`."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
