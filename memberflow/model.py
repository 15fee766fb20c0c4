"""The model of one target list: `member_profile` (canonical fields, one row per match key, across
every source that feeds the list), `members` (the same members under the target's field names)
and `tracking_events` (every staged event whose customer is a member).

Precedence across records (X6), documented in the README: for each field, the non-empty value of
the most recently modified source record wins; ties go to the integration whose name sorts first,
then to the lowest record id. A consent withdrawn at any source (consent false after it was true)
withdraws the member: it is taken off the list and not sent again until that source gives consent
anew. A record the source deleted only withdraws its member when no live record shares the key.

Records of one integration that share a key are merged like any others, unless the integration
withholds shared keys (`shared_match_keys: withhold`, AF1): then a key that several of its
records consent to now gets no member from that integration and those records are reported
(memberflow/shared_keys.py); a key that one of its records consents to now is that record's
alone, and a key none of its records consents to now is withdrawn like any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Literal

import duckdb

from memberflow import member_events as facts
from memberflow import shared_keys
from memberflow.mapping import EXTERNAL_ID, EntityMapping
from memberflow.member_events import MemberEventSettings
from memberflow.segments import SegmentSettings, build_segments
from memberflow.staging import stage_table
from memberflow.target_mapping import TargetField, TargetMapping, identity

INTERNAL = ("match_key", "sources", "source_records", "modified", "withdrawn", "fields_hash")


@dataclass(frozen=True)
class Feed:
    """One integration feeding the list: its member mapping, its event mappings and the target's
    field names (None: every canonical field under its own name)."""

    integration: str
    members: EntityMapping
    events: tuple[EntityMapping, ...]
    target: TargetMapping | None = None
    member_events: MemberEventSettings | None = None  # what members take from their events
    shared_match_keys: Literal["merge", "withhold"] = "merge"  # AF1: see memberflow/shared_keys


def withholding(feeds: Sequence[Feed]) -> list[str]:
    """The integrations on the list that withhold keys shared by several of their records."""
    return [f.integration for f in feeds if f.shared_match_keys == "withhold"]


def source_fields(feeds: list[Feed]) -> list[str]:
    """Every canonical field any feed's member mapping produces, in first-seen order."""
    names: list[str] = []
    for feed in feeds:
        names += [r.target for r in feed.members.fields if r.target not in names]
    return names


def canonical_fields(feeds: list[Feed]) -> list[str]:
    """The member mappings' fields, then those members take from their events
    (memberflow/member_events.py), then the computed `external_id`."""
    names = source_fields(feeds)
    names += [n for n in facts.fact_fields(feeds) if n not in names]
    return [*names, EXTERNAL_ID]


def uses_events(feeds: list[Feed], segments: Sequence[SegmentSettings] = ()) -> bool:
    """Do members or their groups follow from events (so the model reads the event tables)?"""
    return any(f.member_events is not None for f in feeds) or any(
        getattr(s.rule, "from_events", None) for s in segments
    )


def target_columns(feeds: list[Feed]) -> list[TargetField]:
    """The `members` columns named as the target names them (feeds on one list share a target)."""
    mapping = next((f.target for f in feeds if f.target is not None), None) or identity()
    return mapping.columns(canonical_fields(feeds))


def field_types(feeds: list[Feed]) -> dict[str, str | None]:
    """The type each target field declares (for a target that creates missing custom fields)."""
    return {c.name: c.type for c in target_columns(feeds)}


def member_fields(feeds: list[Feed]) -> list[str]:
    """Every target field the list's members carry, by the target's names (what C7 checks)."""
    return [c.name for c in target_columns(feeds)]


def match_field(feeds: list[Feed], match_on: str) -> str | None:
    """The target field that carries the match key (None: the target gets it another way)."""
    mapping = next((f.target for f in feeds if f.target is not None), None) or identity()
    return mapping.match_field(match_on)


def event_columns(feeds: list[Feed]) -> list[str]:
    names: list[str] = []
    for feed in feeds:
        for mapping in feed.events:
            names += [r.target for r in mapping.fields if r.target not in names]
    return names


_existing = facts.table_exists


def build_members(
    conn: duckdb.DuckDBPyConnection,
    feeds: list[Feed],
    segments: Sequence[SegmentSettings] = (),
    today: date | None = None,
    timezone: str = "UTC",
) -> dict[str, int]:
    """Rebuild `member_profile` (canonical fields) and `members` (the target's fields) from every
    feed's staged customers; with `segments`, also the segment tables and `members.groups`.
    Returns counts for metadata."""
    linked = uses_events(feeds, segments)
    if linked:
        facts.build_event_links(conn, feeds)
    required = facts.required_filter(conn, feeds) if linked else "true"
    withheld = _build_member_records(conn, feeds, required)
    _build_profile(conn, [*source_fields(feeds), EXTERNAL_ID])
    counts: dict[str, int] = {}
    if linked:
        facts.build_member_events(conn)
        facts.apply_latest(conn, feeds)
        conn.execute(f"DROP TABLE {facts.LINKS}")
    if segments:
        groups = build_segments(conn, list(segments), today or date.today(), timezone)
        counts["segment_members"] = int(sum(groups.values()))
    _build_target_rows(conn, target_columns(feeds), with_groups=bool(segments))
    conn.execute("DROP TABLE member_records")
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
        **({"withheld_shared_keys": withheld} if withholding(feeds) else {}),
        **counts,
    }


def _build_member_records(
    conn: duckdb.DuckDBPyConnection, feeds: list[Feed], required: str = "true"
) -> int:
    """Temp table `member_records`: every staged record that contributes to a member, ranked.

    A record never consented is no member. A deleted record (a tombstone) contributes nothing
    while another live record shares its match key; a member whose records are all deleted
    keeps their last values and is withdrawn. `rank` orders records for ties and lists: by
    integration name, then record id (numerically when ids are numbers). `required` is a further
    condition on a record (memberflow/member_events.py: named by an event, or already a member);
    a member one of whose records meets it takes all its records.

    For a withholding integration only consent now counts (shared_keys.CONSENTS_NOW): a key that
    several of its records consent to takes none of its records (tombstones and unticked ones
    included); a key that one of them consents to takes that record only, since in that
    integration records are not merged and an unticked duplicate must neither withdraw the
    member nor lend it values; a key none of them consents to takes them all, so it is a
    withdrawn member. Returns how many withheld (integration, key) pairs there are.
    """
    _build_candidates(conn, feeds, required)
    names = withholding(feeds)
    withheld = shared_keys.build_table(conn, "member_candidates", names)
    withholds = f"integration IN ({', '.join(_lit(n) for n in names)})" if names else "false"
    now = shared_keys.CONSENTS_NOW
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE member_records AS
        WITH kept AS (
            SELECT c.*,
                bool_or({now}) OVER (PARTITION BY c.integration, c.match_key) AS someone_consents
            FROM member_candidates c ANTI JOIN {shared_keys.TABLE} s
                ON s.integration = c.integration AND s.match_key = c.match_key)
        SELECT * EXCLUDE (someone_consents) FROM kept
        WHERE {now} OR NOT someone_consents OR NOT {withholds}
        QUALIFY live OR NOT bool_or(live) OVER (PARTITION BY match_key);
        DROP TABLE member_candidates;
        """
    )
    return withheld


def _build_candidates(conn: duckdb.DuckDBPyConnection, feeds: list[Feed], required: str) -> None:
    """Temp table `member_candidates`: the consenting (or once consenting) records of every
    member that meets `required`, tombstones included, ranked (see _build_member_records)."""
    fields = [*source_fields(feeds), EXTERNAL_ID]
    tables = {f.integration: stage_table(f.integration, f.members.entity) for f in feeds}
    parts = [
        f"SELECT '{name}' AS integration, * FROM {table}"
        for name, table in tables.items()
        if _existing(conn, table)
    ]
    typed = ", ".join(f'NULL::VARCHAR AS "{n}"' for n in fields)
    empty = (
        f"SELECT {typed}, NULL::VARCHAR AS integration, NULL::VARCHAR AS record_id, "
        "NULL::VARCHAR AS match_key, NULL::TIMESTAMPTZ AS modified, NULL::BOOLEAN AS consent, "
        "NULL::BOOLEAN AS ever_consented, NULL::BOOLEAN AS deleted LIMIT 0"
    )
    union = "".join(f"\nUNION ALL BY NAME {part}" for part in parts)
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE member_candidates AS
        WITH contrib AS (SELECT * FROM ({empty}){union}),
        ranked AS (
            SELECT *, NOT coalesce(deleted, false) AS live,
                dense_rank() OVER (ORDER BY integration,
                    try_cast(record_id AS HUGEINT) NULLS LAST, record_id) AS rank,
                {required} AS qualifies
            FROM contrib
            WHERE match_key IS NOT NULL AND (coalesce(consent, true) OR ever_consented))
        -- a member qualifies as a whole: once one of its records does, every record sharing
        -- its key contributes (the same profile before and after it reaches the target)
        SELECT * EXCLUDE (qualifies) FROM ranked
        QUALIFY bool_or(qualifies) OVER (PARTITION BY match_key)
        """
    )


def _build_profile(conn: duckdb.DuckDBPyConnection, fields: list[str]) -> None:
    """`member_profile`: one row per match key; per field the non-empty value of the most
    recently modified record wins, ties to the lower rank (X6)."""
    picks = ",\n".join(
        f"""arg_max("{name}", (modified, -rank)) FILTER (WHERE "{name}" IS NOT NULL) AS "{name}\""""
        for name in fields
    )
    conn.execute(
        f"""
        CREATE OR REPLACE TABLE member_profile AS
        SELECT match_key, {picks},
            list(DISTINCT integration ORDER BY integration) AS sources,
            count(*) AS source_records,
            max(modified) AS modified,
            bool_or(consent = false AND ever_consented) AS withdrawn
        FROM member_records GROUP BY match_key
        """
    )


def _build_target_rows(
    conn: duckdb.DuckDBPyConnection, columns: list[TargetField], with_groups: bool
) -> None:
    """`members`: the profile under the target's field names, values translated, collected
    fields as lists; `fields_hash` over the target columns (what delivery compares)."""
    joins, selects = [], []
    for i, col in enumerate(columns):
        if col.collect:
            alias = f"c{i}"
            joins.append(
                f"""LEFT JOIN (
                    SELECT match_key, list(v ORDER BY r) AS v FROM (
                        SELECT match_key, {_translated(col, f'"{col.source}"')} AS v,
                            min(rank) AS r
                        FROM member_records WHERE "{col.source}" IS NOT NULL GROUP BY ALL)
                    WHERE v IS NOT NULL GROUP BY match_key) {alias} USING (match_key)"""
            )
            selects.append(f'{alias}.v AS "{col.name}"')
        else:
            selects.append(f'{_translated(col, f"p.{_q(col.source)}")} AS "{col.name}"')
    if with_groups:
        joins.append(
            """LEFT JOIN (SELECT match_key, list(DISTINCT group_name ORDER BY group_name) AS g
                          FROM segment_members GROUP BY match_key) sg USING (match_key)"""
        )
        selects.append("coalesce(sg.g, []::VARCHAR[]) AS groups")
    hashed = ", ".join(f"'{c.name}', \"{c.name}\"" for c in columns)
    cols = "".join(f", {s}" for s in selects)
    conn.execute(
        f"""
        CREATE OR REPLACE TABLE members AS
        WITH t AS (
            SELECT p.match_key{cols}, p.sources, p.source_records, p.modified, p.withdrawn
            FROM member_profile p {" ".join(joins)})
        SELECT *, md5(json_object({hashed})::VARCHAR) AS fields_hash FROM t
        """
    )


def _translated(col: TargetField, expr: str) -> str:
    """`values:` applied in SQL: a canonical value without an entry is no value."""
    if not col.values:
        return expr
    cases = " ".join(f"WHEN {_lit(k)} THEN {_lit(v)}" for k, v in col.values)
    return f"CASE {expr} {cases} END"


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


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
