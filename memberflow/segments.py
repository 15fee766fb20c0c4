r"""Segments as data: groups that follow from dates (TX5), from events or from being a member at
all, gated by boolean fields (consent and push permission, TX4).

A segment is a named rule over `member_profile` (one row per match key, canonical columns) and,
for event rules, `member_events`. The groups are tables (`segment_groups`, `segment_members`), so
delivery treats a member joining or leaving a group like any other field change and sends only the
difference; recomputing them every day (the daily schedule) is what makes "birthday in the next 7
days" move with the calendar.

```yaml
segments:
  - {name: birthday_next_7_days, rule: {anniversary_of: birthday, within_days: 7}}
  - {name: Clients, rule: {everyone: true}}
  - {name: Clients archivés, rule: {everyone: true}, requires: is_archived}
  - name: activity
    rule:
      from_events: registrations
      title: '{program} \ {category} \ {subcategory} \ {activity}'
    unless: is_archived
  - {name: program, rule: {from_events: registrations, title: '{program}'}, unless: is_archived}
```

Date rules and their bounds (`today` is the caller's date, so tests and reruns use a fixed clock):
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

Other rules:
- `{everyone: true}`: every member of `member_profile` (the general group of an integration).
- `{from_events: E, title: T}`: one group per distinct title rendered from each of the member's
  live events of entity E. `member_events(match_key, entity, event_id, live, <event columns>)`
  holds one row per member and event (the model builds it); only rows with `live` true count, so
  a cancelled registration takes the member out of its group. `{field}` in T names an event
  column (`{{` and `}}` are literal braces); each value is trimmed (control characters become
  spaces) and an event with any of its fields empty gives no group. The title is trimmed and cut
  to 255 characters. Hierarchies are one rule per level (program, program \ category, ...).
  Without the table, or without rows for E, the rule gives no group.

Names: the `name` of an `everyone` segment is the group name, any text of 1 to 255 characters
without control characters or spaces at either end; a date segment's name stays a lowercase
identifier as before; a `from_events` segment's name labels the rule, its groups are the titles.
A title two segments produce is one group (a member of either is in it).

`requires` names boolean columns (consent_mailing for mailing groups, push_allowed for push
groups) that must all be true; `unless` names boolean columns none of which may be true (an
archived member is in no activity group). A member failing either is in none of that segment's
groups. A withdrawn member is in no segment at all.

`segment_groups` lists every group with its rule as JSON (plus `segment`, the name, for event
rules, and `unless` when set), its `requires` and its member count: a configured name even when
empty, an event title whenever a live event of a member renders it.
"""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import date, datetime, timedelta
from string import Formatter
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
EVENTS = "member_events"
NAME_MAX = 255  # longest group name; a longer rendered title is cut
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


class EveryoneRule(_Strict):
    """Every member: the general group of an integration."""

    everyone: Literal[True]


class EventsRule(_Strict):
    """One group per title rendered from each of a member's live events of one entity."""

    from_events: str = Field(pattern=_IDENT, description="the `entity` of member_events rows")
    title: str = Field(min_length=1, max_length=1000, description="'{field} \\ {field}' template")

    @field_validator("title")
    @classmethod
    def _valid_template(cls, value: str) -> str:
        title_pieces(value)
        return value

    @property
    def fields(self) -> list[str]:
        """The event columns the title names, each once, in order."""
        return list(dict.fromkeys(f for _, f in title_pieces(self.title) if f is not None))


def title_pieces(title: str) -> list[tuple[str, str | None]]:
    """The title as (literal text, field or None) pairs; a ValueError says what is wrong.

    Parsed like a Python format string, so `{{`/`}}` are literal braces; a field is a bare
    lowercase name (no format spec, conversion, index or attribute) and at least one is needed:
    a title without one would put every member in the same fixed group.
    """
    try:
        parsed = list(Formatter().parse(title))
    except ValueError as exc:
        raise ValueError(f"title {title!r}: {exc} (write {{{{ or }}}} for a brace)") from None
    pieces: list[tuple[str, str | None]] = []
    for literal, field, spec, conversion in parsed:
        if field is not None and (spec or conversion or not re.fullmatch(_IDENT, field)):
            raise ValueError(
                f"title {title!r}: each placeholder is {{field}} with a lowercase field name"
            )
        pieces.append((literal, field))
    if not any(field for _, field in pieces):
        raise ValueError(f"title {title!r} names no field (write {{field}} for an event column)")
    return pieces


DateRule = AnniversaryRule | SinceRule
_KINDS = {
    "anniversary_of": "anniversary",
    "since": "since",
    "everyone": "everyone",
    "from_events": "events",
}
_MODEL_KINDS = {
    AnniversaryRule: "anniversary",
    SinceRule: "since",
    EveryoneRule: "everyone",
    EventsRule: "events",
}


def _rule_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return _MODEL_KINDS.get(type(value))
    if isinstance(value, dict):
        return next((kind for key, kind in _KINDS.items() if key in value), None)
    return None


Rule = Annotated[
    Annotated[AnniversaryRule, Tag("anniversary")]
    | Annotated[SinceRule, Tag("since")]
    | Annotated[EveryoneRule, Tag("everyone")]
    | Annotated[EventsRule, Tag("events")],
    Discriminator(
        _rule_kind,
        custom_error_type="segment_rule",
        custom_error_message=(
            "expected {anniversary_of: <field>, within: month | within_days: N}, "
            "{since: <field>, within_days: N | older_than_days: N}, {everyone: true} or "
            "{from_events: <entity>, title: '<text with {field} placeholders>'}"
        ),
    ),
]
_Flag = Annotated[str, Field(pattern=_IDENT)]


class SegmentSettings(_Strict):
    """One segment of an integration file's `segments:` list.

    ```yaml
    segments:
      - name: birthday_next_7_days
        rule: {anniversary_of: birthday, within_days: 7}
        requires: consent_mailing
      - {name: Clients archivés, rule: {everyone: true}, requires: is_archived}
      - name: membership
        rule: {from_events: memberships, title: '{name}'}
        unless: is_archived
    ```
    """

    name: str = Field(
        min_length=1,
        max_length=NAME_MAX,
        description="the group name the target receives (for from_events: the rule's label)",
    )
    rule: Rule
    requires: list[_Flag] = Field(
        default_factory=list, description="boolean fields that must all be true (TX4)"
    )
    unless: list[_Flag] = Field(
        default_factory=list, description="boolean fields none of which may be true"
    )

    @field_validator("requires", "unless", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _printable(cls, value: str) -> str:
        if value != value.strip():
            raise ValueError(f"name {value!r} starts or ends with a space")
        if any(unicodedata.category(char) == "Cc" for char in value):
            raise ValueError(f"name {value!r} contains a control character")
        return value

    @model_validator(mode="after")
    def _date_names_stay_identifiers(self) -> SegmentSettings:
        """Date segments keep the identifier names they had (birthday_next_7_days)."""
        if isinstance(self.rule, DateRule) and not re.fullmatch(_IDENT, self.name):
            raise ValueError(
                f"name {self.name!r}: a date segment is named by a lowercase identifier "
                "such as birthday_next_7_days"
            )
        return self

    def rule_text(self) -> str:
        """The rule as compact JSON, kept in `segment_groups` so a group says what it means.

        An event rule's groups are named by titles, so its text carries the segment's name;
        `unless` is there when set (`requires` has its own column).
        """
        rule = self.rule.model_dump(exclude_none=True)
        if isinstance(self.rule, EventsRule):
            rule["segment"] = self.name
        if self.unless:
            rule["unless"] = list(self.unless)
        return json.dumps(rule, sort_keys=True, ensure_ascii=False)


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
    """Replace `segment_groups` and `segment_members` from `member_profile` (and `member_events`
    for event rules); returns the member count per group name.

    `today` is the caller's day (an ISO text is read as one), never the machine's clock, so a
    test or a rerun of a past day computes that day's groups. Each rule is one SELECT of a single
    statement: the work stays in DuckDB however many events there are.
    """
    today = _day(today)
    try:
        check_timezone(tz)
    except ValueError as exc:
        raise SegmentError(str(exc)) from None
    segments = _unique(segments)
    columns = _profile_columns(conn)
    events = _event_columns(conn) if any(_from_events(s) for s in segments) else None
    parts = [_hits_sql(i, s, columns, events, today, tz) for i, s in enumerate(segments)]
    union = "\nUNION ALL\n".join(p for p in parts if p) or _EMPTY
    conn.execute(f"CREATE OR REPLACE TEMP TABLE segment_hits AS {union}")
    conn.execute(
        """CREATE OR REPLACE TABLE segment_members AS
            SELECT DISTINCT match_key, group_name FROM segment_hits WHERE inside
            ORDER BY group_name, match_key"""
    )
    _write_groups(conn, segments)
    conn.execute("DROP TABLE segment_hits")
    rows = conn.execute("SELECT group_name, members FROM segment_groups").fetchall()
    return {name: int(count) for name, count in rows}


# segment_hits: (match_key, group_name, seg: index of the segment, inside: passes the gates)
_EMPTY = (
    "SELECT NULL::VARCHAR AS match_key, NULL::VARCHAR AS group_name, NULL::INTEGER AS seg, "
    "NULL::BOOLEAN AS inside LIMIT 0"
)


def _write_groups(conn: duckdb.DuckDBPyConnection, segments: list[SegmentSettings]) -> None:
    """`segment_groups`: one row per group name, its rule(s), requires and member count.

    A configured name is listed even with nobody in it; a title only when some live event
    renders it. A name several segments produce lists their rules as a JSON array.
    """
    conn.execute(
        """CREATE OR REPLACE TEMP TABLE segment_defs (
            seg INTEGER, name VARCHAR, rule VARCHAR, requires VARCHAR[], fixed BOOLEAN)"""
    )
    if segments:
        conn.executemany(
            "INSERT INTO segment_defs VALUES (?, ?, ?, ?, ?)",
            [
                [i, s.name, s.rule_text(), list(s.requires), not _from_events(s)]
                for i, s in enumerate(segments)
            ],
        )
    conn.execute(
        """CREATE OR REPLACE TABLE segment_groups (
            group_name VARCHAR PRIMARY KEY, rule VARCHAR, requires VARCHAR[], members BIGINT)"""
    )
    conn.execute(
        """INSERT INTO segment_groups
        WITH produced AS (
            SELECT DISTINCT group_name, seg FROM segment_hits
            UNION SELECT name, seg FROM segment_defs WHERE fixed),
        meta AS (
            SELECT group_name, list(rule ORDER BY seg) AS rules,
                list(requires ORDER BY seg) AS gates
            FROM produced JOIN segment_defs USING (seg) GROUP BY group_name),
        counted AS (SELECT group_name, count(*) AS n FROM segment_members GROUP BY group_name)
        SELECT group_name,
            CASE WHEN len(rules) = 1 THEN rules[1]
                ELSE '[' || array_to_string(rules, ', ') || ']' END,
            CASE WHEN len(gates) = 1 THEN gates[1]
                ELSE list_sort(list_distinct(flatten(gates))) END,
            coalesce(n, 0)
        FROM meta LEFT JOIN counted USING (group_name)
        ORDER BY group_name"""
    )
    conn.execute("DROP TABLE segment_defs")


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


def _event_columns(conn: duckdb.DuckDBPyConnection) -> dict[str, str] | None:
    """The columns of `member_events`, or None when there is no such table (no events yet)."""
    try:
        rows = conn.execute(f"DESCRIBE {EVENTS}").fetchall()
    except duckdb.CatalogException:
        return None
    columns = {row[0]: row[1] for row in rows}
    missing = [c for c in ("match_key", "entity", "live") if c not in columns]
    if missing:
        raise SegmentError(
            f"{EVENTS} lacks {', '.join(missing)} (columns: {', '.join(sorted(columns))})"
        )
    return columns


def _from_events(segment: SegmentSettings) -> bool:
    return isinstance(segment.rule, EventsRule)


def _hits_sql(
    seg: int,
    segment: SegmentSettings,
    columns: dict[str, str],
    events: dict[str, str] | None,
    today: date,
    tz: str,
) -> str | None:
    """The segment's SELECT of segment_hits rows; None for an event rule without events."""
    rule = segment.rule
    if isinstance(rule, EventsRule):
        return None if events is None else _events_sql(seg, segment, rule, columns, events)
    day = None if isinstance(rule, EveryoneRule) else _day_sql(segment, rule.field, columns, tz)
    where = " AND ".join(["match_key IS NOT NULL", *_gates_sql(segment, columns)])
    select = (
        f"SELECT match_key, {_sql_text(segment.name)} AS group_name, {seg} AS seg, true AS inside"
    )
    if day is None:
        return f"{select} FROM {PROFILE} WHERE {where}"
    return f"""{select}
        FROM (SELECT match_key, {day} AS d FROM {PROFILE} WHERE {where})
        WHERE {_window_sql(rule, today)}"""


def _events_sql(
    seg: int,
    segment: SegmentSettings,
    rule: EventsRule,
    columns: dict[str, str],
    events: dict[str, str],
) -> str:
    """One row per live event of a member whose title fields are all filled: the rendered title
    and whether the member passes the segment's gates (the title is listed either way)."""
    fields = rule.fields
    for name in fields:
        if name not in events:
            known = ", ".join(sorted(c for c in events if c not in ("match_key", "live")))
            raise SegmentError(
                f"segment {segment.name!r}: title field {name!r} is not a column of {EVENTS} "
                f"(columns: {known})"
            )
    raw = {name: f"v{i}" for i, name in enumerate(fields)}
    clean = {name: f"c{i}" for i, name in enumerate(fields)}
    pieces = []
    for literal, name in title_pieces(rule.title):
        pieces += [_sql_text(literal)] if literal else []
        pieces += [clean[name]] if name is not None else []
    title = f"rtrim(left(trim(concat({', '.join(pieces)})), {NAME_MAX}))"
    picked = ", ".join(f"CAST({_q(name)} AS VARCHAR) AS {raw[name]}" for name in fields)
    cleaned = ", ".join(f"{_clean_sql(raw[name])} AS {clean[name]}" for name in fields)
    filled = " AND ".join(f"{c} <> ''" for c in clean.values())
    inside = " AND ".join(_gates_sql(segment, columns)) or "true"
    raws = ", ".join(raw.values())
    # Titles are rendered once per distinct set of values, then joined back to the events.
    return f"""SELECT * FROM (
        WITH ev AS (
            SELECT match_key, {picked} FROM {EVENTS}
            WHERE entity = {_sql_text(rule.from_events)} AND try_cast(live AS BOOLEAN) IS TRUE),
        titles AS (
            SELECT {raws}, {title} AS group_name
            FROM (SELECT {raws}, {cleaned} FROM (SELECT DISTINCT {raws} FROM ev))
            WHERE {filled})
        SELECT ev.match_key, titles.group_name, {seg} AS seg, p.inside
        FROM ev JOIN titles USING ({raws})
        JOIN (SELECT match_key, {inside} AS inside FROM {PROFILE}
              WHERE match_key IS NOT NULL) p ON p.match_key = ev.match_key)"""


def _clean_sql(column: str) -> str:
    """An event value as trimmed text, control characters (tabs, line breaks) as spaces."""
    return f"trim(regexp_replace(CAST({column} AS VARCHAR), '[\\x00-\\x1f\\x7f]', ' ', 'g'))"


def _gates_sql(segment: SegmentSettings, columns: dict[str, str]) -> list[str]:
    """Conditions on member_profile: every `requires` true, no `unless` true, not withdrawn."""
    gates = [_flag_sql(segment, name, columns, "requires") for name in segment.requires]
    gates += [_flag_sql(segment, name, columns, "unless") for name in segment.unless]
    if "withdrawn" in columns:
        gates.append("withdrawn IS NOT TRUE")
    return gates


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


def _flag_sql(segment: SegmentSettings, name: str, columns: dict[str, str], gate: str) -> str:
    kind = _column_type(segment, name, columns)
    if kind == "BOOLEAN":
        value = _q(name)
    elif kind == "VARCHAR":
        value = f"try_cast(trim({_q(name)}) AS BOOLEAN)"
    else:
        raise SegmentError(
            f"segment {segment.name!r}: {gate} {name!r}, a {kind} column of {PROFILE}; "
            "expected a boolean field such as consent_mailing or push_allowed"
        )
    return f"{value} IS TRUE" if gate == "requires" else f"{value} IS NOT TRUE"


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


def _q(name: str) -> str:
    """A column name quoted for SQL (names are validated identifiers)."""
    return f'"{name}"'
