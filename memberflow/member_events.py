"""What a member takes from its events: who counts as a member at all, and fields from the newest
event (a consent date and its proof, the current membership), computed as data in DuckDB.

An event concerns one or more customers (`customer_id` may list several paths: a registration
concerns the registered person and the account's owner). `event_links` joins every staged event
of the list's feeds to each customer it names; `member_events` is the same by member (match key),
one row per member and event, the table date and group rules read (memberflow/segments.py).

Settings, in the integration file:

```yaml
member_events:
  required: [registrations, memberships]  # a source record no such event names is no member
  latest:                                   # member fields from the member's newest live event
    - entities: [registrations, memberships]
      by: date                              # an event field both entities map (ISO text)
      fields: {consent_date: date, consent_proof: proof}
```

`required` keeps people out who never bought or registered (a full person list holds every
former client) or whose every registration was cancelled before memberflow saw them; a member
already on the target stays one when its events are cancelled or deleted, so it is updated
(taken out of groups) rather than forgotten. A cancelled event (the mapping's `cancelled` flag)
is not live: it counts for nothing.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import duckdb
from pydantic import BaseModel, ConfigDict, Field, field_validator

from memberflow.staging import stage_table

if TYPE_CHECKING:
    from memberflow.model import Feed

_IDENT = r"^[a-z][a-z0-9_]{0,62}$"
LINKS = "event_links"
MEMBER_EVENTS = "member_events"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LatestFields(_Strict):
    """Member fields copied from the member's newest live event of `entities`, newest by `by`."""

    entities: list[Annotated[str, Field(pattern=_IDENT)]] = Field(min_length=1)
    by: str = Field(pattern=_IDENT)
    fields: dict[str, str] = Field(min_length=1, description="member field -> event field")

    @field_validator("fields")
    @classmethod
    def _names(cls, value: dict[str, str]) -> dict[str, str]:
        for member_field, event_field in value.items():
            for name in (member_field, event_field):
                if not re.match(_IDENT, name):
                    raise ValueError(f"{name!r}: expected a lowercase field name")
        return value


_RESERVED = frozenset({"match_key", "sources", "source_records", "modified", "withdrawn"})


class MemberEventSettings(_Strict):
    """The integration file's `member_events:` section."""

    required: list[Annotated[str, Field(pattern=_IDENT)]] = Field(default_factory=list)
    latest: list[LatestFields] = Field(default_factory=list)

    @field_validator("latest")
    @classmethod
    def _not_reserved(cls, value: list[LatestFields]) -> list[LatestFields]:
        for rule in value:
            taken = sorted(set(rule.fields) & _RESERVED)
            if taken:
                raise ValueError(f"{taken}: memberflow keeps these member columns itself")
        return value

    def entities(self) -> set[str]:
        return set(self.required) | {e for rule in self.latest for e in rule.entities}

    def member_fields(self) -> list[str]:
        return [name for rule in self.latest for name in rule.fields]


def fact_fields(feeds: Sequence[Feed]) -> list[str]:
    """Member fields the feeds' `latest` rules produce, in first-seen order."""
    names: list[str] = []
    for feed in feeds:
        if feed.member_events is not None:
            names += [n for n in feed.member_events.member_fields() if n not in names]
    return names


def table_exists(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Does the warehouse hold `table` (a staged table appears with its first data)?"""
    row = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
    ).fetchall()[0]
    return bool(row[0])


def _columns(conn: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [r[0] for r in conn.execute(f"DESCRIBE {table}").fetchall()]


def build_event_links(conn: duckdb.DuckDBPyConnection, feeds: Sequence[Feed]) -> None:
    """Temp table `event_links`: (integration, entity, customer, event_id, live, event fields)
    for every staged event of every feed, once per customer it names."""
    parts = []
    for feed in feeds:
        for mapping in feed.events:
            table = stage_table(feed.integration, mapping.entity)
            if not table_exists(conn, table):
                continue
            cols = _columns(conn, table)
            ids = "customer_ids" if "customer_ids" in cols else "[customer_id]"
            live = "coalesce(live, true)" if "live" in cols else "true"
            own = [r.target for r in mapping.fields]
            fields = "".join(f', "{c}"' for c in own)
            parts.append(
                f"""SELECT '{feed.integration}' AS integration, '{mapping.entity}' AS entity,
                        unnest(coalesce({ids}, [customer_id])) AS customer, event_id,
                        {live} AS live{fields}
                    FROM {table}"""
            )
    empty = (
        "SELECT NULL::VARCHAR AS integration, NULL::VARCHAR AS entity, NULL::VARCHAR AS customer,"
        " NULL::VARCHAR AS event_id, NULL::BOOLEAN AS live LIMIT 0"
    )
    union = " UNION ALL BY NAME ".join(f"({part})" for part in [empty, *parts])
    conn.execute(
        f"CREATE OR REPLACE TEMP TABLE {LINKS} AS "
        f"SELECT * FROM ({union}) WHERE customer IS NOT NULL"
    )


def required_filter(conn: duckdb.DuckDBPyConnection, feeds: Sequence[Feed]) -> str:
    """A condition on a member record (columns integration, record_id, match_key): its feed has
    no `required` entities, or an event of them names it, or its member is on the target."""
    rules = {
        f.integration: f.member_events.required
        for f in feeds
        if f.member_events is not None and f.member_events.required
    }
    if not rules:
        return "true"
    names = ", ".join(f"'{name}'" for name in rules)
    clauses = [f"integration NOT IN ({names})"]
    for name, entities in rules.items():
        listed = ", ".join(f"'{e}'" for e in entities)
        clauses.append(
            f"""(integration = '{name}' AND record_id IN (
                    SELECT customer FROM {LINKS}
                    WHERE integration = '{name}' AND live AND entity IN ({listed})))"""
        )
    if table_exists(conn, "sync_state"):
        clauses.append(
            "match_key IN (SELECT match_key FROM sync_state WHERE NOT coalesce(removed, false))"
        )
    return "(" + " OR ".join(clauses) + ")"


def build_member_events(conn: duckdb.DuckDBPyConnection) -> None:
    """`member_events`: one row per (member, event), from `event_links` and `member_records`."""
    conn.execute(
        f"""CREATE OR REPLACE TABLE {MEMBER_EVENTS} AS
            SELECT DISTINCT ON (r.match_key, l.event_id) r.match_key, l.* EXCLUDE (customer)
            FROM {LINKS} l JOIN member_records r
              ON r.integration = l.integration AND r.record_id = l.customer
            ORDER BY r.match_key, l.event_id"""
    )


def apply_latest(
    conn: duckdb.DuckDBPyConnection, feeds: Sequence[Feed], profile: str = "member_profile"
) -> None:
    """Fill each `latest` member field on `profile` from the member's newest live event of the
    feed's own integration: one event per member (ties: entity, then the highest event id), and
    every field of the rule read from that one event."""
    columns = set(_columns(conn, MEMBER_EVENTS))
    for feed in feeds:
        for rule in feed.member_events.latest if feed.member_events else []:
            picks = ", ".join(
                f'"{src}" AS "{dst}"' if src in columns else f'NULL::VARCHAR AS "{dst}"'
                for dst, src in rule.fields.items()
            )
            by = f'"{rule.by}"' if rule.by in columns else "NULL"
            entities = ", ".join(f"'{e}'" for e in rule.entities)
            for dst in rule.fields:
                conn.execute(f'ALTER TABLE {profile} ADD COLUMN IF NOT EXISTS "{dst}" VARCHAR')
            sets = ", ".join(f'"{dst}" = f."{dst}"' for dst in rule.fields)
            conn.execute(
                f"""UPDATE {profile} SET {sets} FROM (
                        SELECT match_key, {picks} FROM {MEMBER_EVENTS}
                        WHERE live AND integration = '{feed.integration}'
                            AND entity IN ({entities}) AND {by} IS NOT NULL
                        QUALIFY row_number() OVER (PARTITION BY match_key
                            ORDER BY {by} DESC, entity, event_id DESC) = 1) f
                    WHERE {profile}.match_key = f.match_key"""
            )
