"""Admin's `Filter=` expressions and its server-local datetimes, in one place.

Admin filters are written like a small SQL `where` (`IsActive eq true and CustomerId in (1,2)`);
text and datetimes are single-quoted, datetimes as `YYYY-MM-DD HH:MM:SS` in the server's own
local time with no offset. The client builds every filter through these helpers, so quoting and
time zones are decided once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
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


def changes_window(start: str, end: str) -> str:
    """AD-A6: the change-log rows of CHANGE_TABLES with start <= DateAction < end (server-local
    text)."""
    tables = ",".join(text(t) for t in CHANGE_TABLES)
    return f"TableName in ({tables}) and DateAction ge {text(start)} and DateAction lt {text(end)}"


def local_text(moment: datetime, zone: ZoneInfo) -> str:
    """An aware (or naive UTC) moment as the server's local `YYYY-MM-DD HH:MM:SS`."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(zone).strftime(LOCAL_FORMAT)


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


def halves(start: str, end: str, zone: ZoneInfo) -> tuple[tuple[str, str], tuple[str, str]] | None:
    """[start, end) cut in two at the whole second nearest its middle; None for a window of one
    second or less (it cannot be cut)."""
    first, last = parse_local(start, zone), parse_local(end, zone)
    seconds = int((last - first).total_seconds())
    if seconds <= 1:
        return None
    middle = local_text(first + timedelta(seconds=seconds // 2), zone)
    return (start, middle), (middle, end)


def chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """`items` in consecutive slices of at most `size`."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
