"""Date-trigger segments (TX5) gated by consent and push permission (TX4), computed as data.

A segment is a named group whose members follow from one rule over a date or datetime column of
`member_profile` (one row per match key, canonical columns) on a given day. The groups are tables
(`segment_groups`, `segment_members`), so delivery treats a member joining or leaving a group like
any other field change and sends only the difference; recomputing them every day (the daily
schedule) is what makes "birthday in the next 7 days" move with the calendar.

Rules and their bounds (`today` is the caller's date, so tests and reruns use a fixed clock):
- `{anniversary_of: F, within: month}`: the month of F is today's month.
- `{anniversary_of: F, within_days: N}`: F's next anniversary on or after today falls on today or
  one of the N-1 days after it (N=7: today through today+6; a birthday on the 10th enters the
  window on the 4th and leaves it on the 11th). The window wraps into the next year (28 Dec + 7
  days reaches 3 Jan). Someone born on 29 February has the anniversary on 28 February in years
  without one.
- `{since: F, within_days: N}`: F falls on today or one of the N-1 days before it; a date after
  today is not "since" anything and stays out.
- `{since: F, older_than_days: N}`: F is N or more days before today ("no visit for 30 days":
  the last visit is at least 30 days old). An empty F (never visited) is in no such segment: a
  member we know nothing about is not a lapsed one.

Datetimes are turned into dates in the integration's timezone first, so a card installed at
00:30 Moscow time on 1 March counts as 1 March even though it is still 28 February in UTC (TY-A7).
Naive datetimes (and datetime texts without an offset) are UTC, which is how staging stores them.
Plain dates (a birthday) are calendar days and are never shifted.

`requires` names boolean columns (consent_mailing for mailing groups, push_allowed for push
groups): a member without every one of them true is in none of that segment (TX4). A withdrawn
member is in no segment at all.
"""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import duckdb
from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

PROFILE = "member_profile"
_IDENT = r"^[a-z][a-z0-9_]{0,62}$"
_OFFSET = r"([+-]\d\d(:?\d\d)?|Z)$"  # a datetime text that carries its own offset


class SegmentError(ValueError):
    """A segment that cannot be computed: names the segment and what is wrong."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AnniversaryRule(_Strict):
    """The yearly return of a date: a birthday this month or in the next N days."""

    anniversary_of: str = Field(pattern=_IDENT)
    within: Literal["month"] | None = None
    within_days: int | None = Field(default=None, ge=1, le=366)

    @model_validator(mode="after")
    def _one_window(self) -> AnniversaryRule:
        if (self.within is None) == (self.within_days is None):
            raise ValueError("set exactly one of within: month or within_days: N")
        return self

    @property
    def field(self) -> str:
        return self.anniversary_of


class SinceRule(_Strict):
    """Days since a date: card installed in the last N days, or no visit for N days."""

    since: str = Field(pattern=_IDENT)
    within_days: int | None = Field(default=None, ge=1, le=3660)
    older_than_days: int | None = Field(default=None, ge=1, le=3660)

    @model_validator(mode="after")
    def _one_window(self) -> SinceRule:
        if (self.within_days is None) == (self.older_than_days is None):
            raise ValueError("set exactly one of within_days: N or older_than_days: N")
        return self

    @property
    def field(self) -> str:
        return self.since


def _rule_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return "anniversary" if isinstance(value, AnniversaryRule) else "since"
    if isinstance(value, dict):
        if "anniversary_of" in value:
            return "anniversary"
        if "since" in value:
            return "since"
    return None


Rule = Annotated[
    Annotated[AnniversaryRule, Tag("anniversary")] | Annotated[SinceRule, Tag("since")],
    Discriminator(
        _rule_kind,
        custom_error_type="segment_rule",
        custom_error_message=(
            "expected {anniversary_of: <field>, within: month | within_days: N} or "
            "{since: <field>, within_days: N | older_than_days: N}"
        ),
    ),
]


class SegmentSettings(_Strict):
    """One segment of an integration file's `segments:` list.

    ```yaml
    segments:
      - name: birthday_next_7_days
        rule: {anniversary_of: birthday, within_days: 7}
        requires: consent_mailing
    ```
    """

    name: str = Field(pattern=_IDENT, description="the group name the target receives")
    rule: Rule
    requires: list[Annotated[str, Field(pattern=_IDENT)]] = Field(
        default_factory=list, description="boolean fields that must all be true (TX4)"
    )

    @field_validator("requires", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    def rule_text(self) -> str:
        """The rule as compact JSON, kept in `segment_groups` so a group says what it means."""
        return json.dumps(self.rule.model_dump(exclude_none=True), sort_keys=True)


def check_timezone(name: str) -> str:
    """An IANA zone name (Europe/Moscow) or a ValueError; usable as a pydantic validator."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown timezone {name!r} (expected an IANA name)") from exc
    return name


def build_segments(
    conn: duckdb.DuckDBPyConnection,
    segments: list[SegmentSettings],
    today: date | str,
    tz: str = "UTC",
) -> dict[str, int]:
    """Replace `segment_groups` and `segment_members` from `member_profile`; counts per group.

    `today` is the caller's day (an ISO text is read as one), never the machine's clock, so a
    test or a rerun of a past day computes that day's groups.
    """
    today = _day(today)
    try:
        check_timezone(tz)
    except ValueError as exc:
        raise SegmentError(str(exc)) from None
    segments = _unique(segments)
    columns = _profile_columns(conn)
    parts = [_members_sql(s, columns, today, tz) for s in segments]
    union = "\nUNION ALL\n".join(parts) if parts else _EMPTY
    conn.execute(
        f"""CREATE OR REPLACE TABLE segment_members AS
            SELECT DISTINCT match_key, group_name FROM ({union}) ORDER BY group_name, match_key"""
    )
    counts = dict(
        conn.execute(
            "SELECT group_name, count(*) FROM segment_members GROUP BY group_name"
        ).fetchall()
    )
    result = {s.name: int(counts.get(s.name, 0)) for s in segments}
    conn.execute(
        """CREATE OR REPLACE TABLE segment_groups (
            group_name VARCHAR PRIMARY KEY, rule VARCHAR, requires VARCHAR[], members BIGINT)"""
    )
    if segments:
        conn.executemany(
            "INSERT INTO segment_groups VALUES (?, ?, ?, ?)",
            [[s.name, s.rule_text(), list(s.requires), result[s.name]] for s in segments],
        )
    return result


_EMPTY = "SELECT NULL::VARCHAR AS match_key, NULL::VARCHAR AS group_name LIMIT 0"


def _day(today: date | str) -> date:
    if isinstance(today, str):
        return date.fromisoformat(today)
    return today.date() if isinstance(today, datetime) else today


def _unique(segments: list[SegmentSettings]) -> list[SegmentSettings]:
    """One definition per name: integrations on one list may repeat a segment, not redefine it."""
    seen: dict[str, SegmentSettings] = {}
    for segment in segments:
        other = seen.setdefault(segment.name, segment)
        if other != segment:
            raise SegmentError(
                f"segment {segment.name!r} is defined twice with different rules "
                f"({other.rule_text()} requires {other.requires} vs "
                f"{segment.rule_text()} requires {segment.requires})"
            )
    return list(seen.values())


def _profile_columns(conn: duckdb.DuckDBPyConnection) -> dict[str, str]:
    try:
        rows = conn.execute(f"DESCRIBE {PROFILE}").fetchall()
    except duckdb.CatalogException:
        raise SegmentError(f"segments need the {PROFILE} table, which does not exist") from None
    return {row[0]: row[1] for row in rows}


def _members_sql(segment: SegmentSettings, columns: dict[str, str], today: date, tz: str) -> str:
    day = _day_sql(segment, segment.rule.field, columns, tz)
    gates = [_true_sql(segment, name, columns) for name in segment.requires]
    if "withdrawn" in columns:
        gates.append("withdrawn IS NOT TRUE")
    where = " AND ".join(["match_key IS NOT NULL", *gates])
    return f"""SELECT match_key, {_sql_text(segment.name)} AS group_name
        FROM (SELECT match_key, {day} AS d FROM {PROFILE} WHERE {where})
        WHERE {_window_sql(segment.rule, today)}"""


def _window_sql(rule: AnniversaryRule | SinceRule, today: date) -> str:
    """The condition on `d` (a DATE); every bound is a literal computed here from `today`."""
    if isinstance(rule, SinceRule):
        if rule.within_days is not None:
            first = today - timedelta(days=rule.within_days - 1)
            return f"d BETWEEN {_date(first)} AND {_date(today)}"
        return f"d <= {_date(today - timedelta(days=rule.older_than_days or 0))}"
    if rule.within == "month":
        return f"month(d) = {today.month}"
    last = today + timedelta(days=(rule.within_days or 1) - 1)
    this_year, next_year = _anniversary_sql(today.year), _anniversary_sql(today.year + 1)
    upcoming = f"CASE WHEN {this_year} >= {_date(today)} THEN {this_year} ELSE {next_year} END"
    return f"{upcoming} <= {_date(last)}"


def _anniversary_sql(year: int) -> str:
    """The day d comes back in `year`; 29 February falls on 28 February in common years."""
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    day = "day(d)" if leap else "CASE WHEN month(d) = 2 AND day(d) = 29 THEN 28 ELSE day(d) END"
    return f"make_date({year}, month(d), {day})"


def _day_sql(segment: SegmentSettings, name: str, columns: dict[str, str], tz: str) -> str:
    """The column as a calendar DATE in `tz`; dates stay as they are, datetimes are converted."""
    kind = _column_type(segment, name, columns)
    col, zone = f'"{name}"', _sql_text(tz)
    if kind == "DATE":
        return col
    if kind.startswith("TIMESTAMP WITH TIME ZONE"):
        return f"timezone({zone}, {col})::DATE"
    if kind.startswith("TIMESTAMP"):
        return f"timezone({zone}, timezone('UTC', {col}))::DATE"
    if kind == "VARCHAR":
        text = f"trim({col})"
        return f"""CASE
            WHEN length({text}) <= 10 THEN try_cast({text} AS DATE)
            WHEN regexp_matches({text}, '{_OFFSET}')
                THEN timezone({zone}, try_cast({text} AS TIMESTAMPTZ))::DATE
            ELSE timezone({zone}, timezone('UTC', try_cast({text} AS TIMESTAMP)))::DATE END"""
    raise SegmentError(
        f"segment {segment.name!r}: field {name!r} of {PROFILE} is {kind}, not a date or datetime"
    )


def _true_sql(segment: SegmentSettings, name: str, columns: dict[str, str]) -> str:
    kind = _column_type(segment, name, columns)
    if kind == "BOOLEAN":
        return f'"{name}" IS TRUE'
    if kind == "VARCHAR":
        return f'try_cast(trim("{name}") AS BOOLEAN) IS TRUE'
    raise SegmentError(
        f"segment {segment.name!r}: requires {name!r}, a {kind} column of {PROFILE}; "
        "expected a boolean field such as consent_mailing or push_allowed"
    )


def _column_type(segment: SegmentSettings, name: str, columns: dict[str, str]) -> str:
    if name not in columns:
        known = ", ".join(sorted(c for c in columns if c != "match_key"))
        raise SegmentError(
            f"segment {segment.name!r}: {name!r} is not a field of {PROFILE} "
            f"(is it mapped? fields: {known})"
        )
    return columns[name]


def _date(day: date) -> str:
    return f"DATE '{day.isoformat()}'"


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"
