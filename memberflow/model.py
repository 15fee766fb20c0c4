"""The model of one target list: `members` (one row per match key, across every source that feeds
the list) and `tracking_events` (every staged event whose customer is a member).

Precedence across sources (X6), documented in the README: for each field, the non-empty value of
the most recently modified source record wins; ties go to the integration whose name sorts first.
A consent withdrawn at any source (consent false after it was true) withdraws the member: it is
taken off the list and not sent again until that source gives consent anew.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from memberflow.mapping import EntityMapping
from memberflow.staging import stage_table

INTERNAL = ("match_key", "sources", "source_records", "modified", "withdrawn", "fields_hash")


@dataclass(frozen=True)
class Feed:
    """One integration feeding the list: its member mapping and its event mappings."""

    integration: str
    members: EntityMapping
    events: tuple[EntityMapping, ...]


def member_fields(feeds: list[Feed]) -> list[str]:
    """Every target field any feed maps, in first-seen order."""
    names: list[str] = []
    for feed in feeds:
        names += [r.target for r in feed.members.fields if r.target not in names]
    return names


def event_columns(feeds: list[Feed]) -> list[str]:
    names: list[str] = []
    for feed in feeds:
        for mapping in feed.events:
            names += [r.target for r in mapping.fields if r.target not in names]
    return names


def _existing(conn: duckdb.DuckDBPyConnection, table: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
    ).fetchall()[0]
    return bool(row[0])


def build_members(conn: duckdb.DuckDBPyConnection, feeds: list[Feed]) -> dict[str, int]:
    """Rebuild `members` from every feed's staged customers; returns counts for metadata."""
    fields = member_fields(feeds)
    tables = {f.integration: stage_table(f.integration, f.members.entity) for f in feeds}
    parts = [
        f"SELECT '{name}' AS integration, * FROM {table}"
        for name, table in tables.items()
        if _existing(conn, table)
    ]
    if not parts:
        parts = [
            "SELECT NULL::VARCHAR AS integration, NULL::VARCHAR AS match_key, "
            "NULL::TIMESTAMPTZ AS modified, NULL::BOOLEAN AS consent, "
            "NULL::BOOLEAN AS ever_consented LIMIT 0"
        ]
    picks = ",\n".join(
        f"""arg_max("{name}", (modified, -rank)) FILTER (WHERE "{name}" IS NOT NULL) AS "{name}\""""
        for name in fields
    )
    hashed = ", ".join(f"'{n}', \"{n}\"" for n in fields)
    union = "\nUNION ALL BY NAME\n".join(parts)
    typed = ", ".join(f'NULL::VARCHAR AS "{n}"' for n in fields)
    conn.execute(
        f"""
        CREATE OR REPLACE TABLE members AS
        WITH contrib AS (
            SELECT * FROM (SELECT {typed}, NULL::VARCHAR AS integration LIMIT 0)
            UNION ALL BY NAME {union}),
        ranked AS (
            SELECT *, dense_rank() OVER (ORDER BY integration) AS rank FROM contrib
            WHERE match_key IS NOT NULL AND (coalesce(consent, true) OR ever_consented)),
        grouped AS (
            SELECT match_key, {picks},
                list(DISTINCT integration ORDER BY integration) AS sources,
                count(*) AS source_records,
                max(modified) AS modified,
                bool_or(consent = false AND ever_consented) AS withdrawn
            FROM ranked GROUP BY match_key)
        SELECT *, md5(json_object({hashed})::VARCHAR) AS fields_hash FROM grouped
        """
    )
    row = conn.execute(
        """SELECT count(*), count(*) FILTER (WHERE len(sources) > 1),
                  count(*) FILTER (WHERE withdrawn), coalesce(sum(source_records), 0)
           FROM members"""
    ).fetchall()[0]
    return {
        "members": row[0],
        "merged_across_sources": row[1],
        "withdrawn": row[2],
        "source_records": int(row[3]),
    }


def build_tracking_events(conn: duckdb.DuckDBPyConnection, feeds: list[Feed]) -> dict[str, int]:
    """Rebuild `tracking_events`: each staged event joined to its customer's member."""
    columns = event_columns(feeds)
    parts = []
    for feed in feeds:
        customers = stage_table(feed.integration, feed.members.entity)
        for mapping in feed.events:
            events = stage_table(feed.integration, mapping.entity)
            if not (_existing(conn, events) and _existing(conn, customers)):
                continue
            own = {r.target for r in mapping.fields}
            cols = ", ".join(f'e."{c}"' if c in own else f'NULL::VARCHAR AS "{c}"' for c in columns)
            parts.append(
                f"""SELECT e.event_id, '{feed.integration}' AS integration,
                        '{mapping.entity}' AS entity, e.business_date, c.match_key, {cols}
                    FROM {events} e LEFT JOIN {customers} c ON c.record_id = e.customer_id
                        AND (coalesce(c.consent, true) OR c.ever_consented)"""
            )
    if not parts:
        cols = ", ".join(f'NULL::VARCHAR AS "{c}"' for c in columns)
        parts = [
            f"""SELECT NULL::VARCHAR AS event_id, NULL::VARCHAR AS integration,
                     NULL::VARCHAR AS entity, NULL::DATE AS business_date,
                     NULL::VARCHAR AS match_key{", " + cols if cols else ""} LIMIT 0"""
        ]
    # What the activity feed last got for an event: when it changes (a ticket refunded), the
    # event is sent again as a new activity row.
    hashed = ", ".join(f"'{c}', a.\"{c}\"" for c in ["match_key", *columns])
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE all_events AS {" UNION ALL ".join(parts)};
        CREATE OR REPLACE TABLE tracking_events AS
            SELECT a.*, md5(json_object({hashed})::VARCHAR) AS event_hash
            FROM all_events a JOIN members m USING (match_key)
            WHERE NOT m.withdrawn;
        """
    )
    row = conn.execute(
        """SELECT (SELECT count(*) FROM tracking_events), (SELECT count(*) FROM all_events),
                  (SELECT count(DISTINCT integration) FROM tracking_events)"""
    ).fetchall()[0]
    conn.execute("DROP TABLE all_events")
    return {"events": row[0], "without_member": row[1] - row[0], "integrations": row[2]}
