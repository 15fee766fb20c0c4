"""The model of one target list: `member_profile` (canonical fields, one row per match key, across
every source that feeds the list), `members` (the same members under the target's field names)
and `tracking_events` (every staged event whose customer is a member).

Precedence across records (X6), documented in the README: for each field, the non-empty value of
the most recently modified source record wins; ties go to the integration whose name sorts first,
then to the lowest record id. A consent withdrawn at any source (consent false after it was true)
withdraws the member: it is taken off the list and not sent again until that source gives consent
anew. A record the source deleted only withdraws its member when no live record shares the key.

Both tables are built incrementally when they can (see "Incremental builds" below): only the
match keys and event days staging touched since the last build are rebuilt.

Records of one integration that share a key are merged like any others, unless the integration
withholds shared keys (`shared_match_keys: withhold`, AF1): then a key that several of its
records consent to now gets no member from that integration and those records are reported
(memberflow/shared_keys.py); a key that one of its records consents to now is that record's
alone, and a key none of its records consents to now is withdrawn like any other.
"""

from __future__ import annotations

import hashlib
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
from memberflow.staging import CHANGES, ensure_change_log, next_change, stage_table
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


# --- Incremental builds -------------------------------------------------------------------------
#
# Staging logs what each call touched under an increasing batch marker (memberflow/staging.py,
# `stage_changes`): member records with their match keys before and after, event days. Each
# model table keeps a watermark (the last marker it consumed) in `model_state`:
# - `members` rebuilds only the match keys of member records staged since its watermark, which
#   is exact because every step of the build is per match key (ranks only order records within
#   a key). It logs the keys it rebuilt in `model_changes` (NULL: all of them).
# - `tracking_events` rebuilds only the event days staged since its watermark, plus every event
#   of a key the members build or member staging touched since (a member withdrawn, a customer
#   re-keyed).
# A full rebuild happens instead on the first build, after a mapping or list-settings change
# (fingerprint), after staging rebuilt a table from raw, when segments are configured (their
# dates roll over daily), when members take facts from their events or an integration withholds
# shared keys (both read across keys), and when more than FULL_SHARE of the members changed.

STATE = "model_state"
MODEL_CHANGES = "model_changes"
# What each tracking_events build rebuilt, for event delivery (memberflow/event_delivery.py):
# event days (integration, entity, business_date) and match keys; `everything` for a full build.
TRACKING_CHANGES = "tracking_changes"
FULL_SHARE = 0.25


def _ensure_state(conn: duckdb.DuckDBPyConnection) -> None:
    ensure_change_log(conn)
    conn.execute(
        f"""CREATE TABLE IF NOT EXISTS {STATE} (key VARCHAR PRIMARY KEY, value VARCHAR);
            CREATE TABLE IF NOT EXISTS {MODEL_CHANGES} (seq BIGINT, match_key VARCHAR);
            CREATE TABLE IF NOT EXISTS {TRACKING_CHANGES} (
                seq BIGINT, everything BOOLEAN, integration VARCHAR, entity VARCHAR,
                business_date DATE, match_key VARCHAR)"""
    )


def rebuilt(conn: duckdb.DuckDBPyConnection, table: str) -> str:
    """What the last build of `members` or `tracking` rebuilt: "all", or what changed."""
    return _get(conn, f"{table}.rebuilt") or "all"


def _get(conn: duckdb.DuckDBPyConnection, key: str) -> str | None:
    rows = conn.execute(f"SELECT value FROM {STATE} WHERE key = ?", [key]).fetchall()
    return rows[0][0] if rows else None


def _set(conn: duckdb.DuckDBPyConnection, key: str, value: object) -> None:
    conn.execute(f"INSERT OR REPLACE INTO {STATE} VALUES (?, ?)", [key, str(value)])


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def _members_fingerprint(feeds: list[Feed], segments: Sequence[SegmentSettings] = ()) -> str:
    """What the members tables' shape and content depend on besides the staged rows (segments:
    their names, so dropping them all rebuilds `members` without its groups)."""
    return _fingerprint(
        sorted(s.name for s in segments),
        [
            (f.integration, f.members.fingerprint, f.shared_match_keys, repr(f.member_events))
            for f in feeds
        ],
        target_columns(feeds),
    )


def _tables_sql(tables: Sequence[str]) -> str:
    return "(" + ", ".join(_lit(t) for t in tables) + ")" if tables else "(NULL)"


def _high_mark(conn: duckdb.DuckDBPyConnection) -> int:
    """The newest batch marker in the log (a consumer's watermark when the log was pruned)."""
    (logged,) = conn.execute(f"SELECT max(seq) FROM {CHANGES}").fetchone()
    marks = [_get(conn, "members.seq"), _get(conn, "tracking.seq")]
    return max([int(logged or 0), *(int(m) for m in marks if m is not None)])


def _prune(conn: duckdb.DuckDBPyConnection) -> None:
    """Forget log entries every consumer has read."""
    marks = [_get(conn, "members.seq"), _get(conn, "tracking.seq")]
    if all(m is not None for m in marks):
        conn.execute(f"DELETE FROM {CHANGES} WHERE seq <= ?", [min(int(m) for m in marks)])
    seen = _get(conn, "tracking.model")
    if seen is not None:
        conn.execute(f"DELETE FROM {MODEL_CHANGES} WHERE seq <= ?", [int(seen)])


def _member_tables(conn: duckdb.DuckDBPyConnection, feeds: list[Feed]) -> list[str]:
    return [stage_table(f.integration, f.members.entity) for f in feeds]


def _changed_keys(
    conn: duckdb.DuckDBPyConnection,
    feeds: list[Feed],
    segments: Sequence[SegmentSettings],
    high: int,
) -> int | None:
    """Fill temp table `model_keys` with the match keys to rebuild and return how many; None
    when a full rebuild is due (see above)."""
    fingerprint = _members_fingerprint(feeds, segments)
    mark = _get(conn, "members.seq")
    if (
        segments
        or uses_events(feeds, segments)
        or withholding(feeds)
        or mark is None
        or _get(conn, "members.fingerprint") != fingerprint
        or not (_existing(conn, "members") and _existing(conn, "member_profile"))
    ):
        return None
    tables = _tables_sql(_member_tables(conn, feeds))
    window = f"seq > {int(mark)} AND seq <= {high} AND tbl IN {tables}"
    (full,) = conn.execute(f'SELECT bool_or("full") FROM {CHANGES} WHERE {window}').fetchone()
    if full:
        return None
    conn.execute(
        f"""CREATE OR REPLACE TEMP TABLE model_keys AS
            SELECT DISTINCT match_key FROM {CHANGES} WHERE {window} AND match_key IS NOT NULL"""
    )
    (changed,) = conn.execute("SELECT count(*) FROM model_keys").fetchone()
    (members,) = conn.execute("SELECT count(*) FROM members").fetchone()
    return None if changed > FULL_SHARE * max(members, 1) else int(changed)


def build_members(
    conn: duckdb.DuckDBPyConnection,
    feeds: list[Feed],
    segments: Sequence[SegmentSettings] = (),
    today: date | None = None,
    timezone: str = "UTC",
) -> dict[str, int]:
    """Build `member_profile` (canonical fields) and `members` (the target's fields) from every
    feed's staged customers; with `segments`, also the segment tables and `members.groups`.
    Only the keys staging touched since the last build when it can (see above): `rebuilt` says
    how many keys were rebuilt (rebuilt(conn, "members")). Returns counts for metadata."""
    _ensure_state(conn)
    high = _high_mark(conn)
    changed = _changed_keys(conn, feeds, segments, high)
    if changed is None:
        counts = _build_all_members(conn, feeds, segments, today, timezone)
    else:
        counts = _build_some_members(conn, feeds, changed)
    _set(conn, "members.seq", high)
    _set(conn, "members.rebuilt", "all" if changed is None else changed)
    _set(conn, "members.fingerprint", _members_fingerprint(feeds, segments))
    _prune(conn)
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
        **counts,
    }


def _build_some_members(conn: duckdb.DuckDBPyConnection, feeds: list[Feed], changed: int) -> dict:
    """Rebuild the members of the keys in `model_keys` and swap them in (one transaction)."""
    if changed:
        _build_candidates(conn, feeds, "true", only_keys="model_keys")
        _member_records_from_candidates(conn, feeds)
        fields = [*source_fields(feeds), EXTERNAL_ID]
        _build_profile(conn, fields, into="member_profile_delta", temp=True)
        _build_target_rows(
            conn,
            target_columns(feeds),
            with_groups=False,
            profile="member_profile_delta",
            into="members_delta",
            temp=True,
        )
        keys = "SELECT match_key FROM model_keys"
        conn.execute("BEGIN TRANSACTION")
        try:
            conn.execute(
                f"""DELETE FROM member_profile WHERE match_key IN ({keys});
                    INSERT INTO member_profile BY NAME SELECT * FROM member_profile_delta;
                    DELETE FROM members WHERE match_key IN ({keys});
                    INSERT INTO members BY NAME SELECT * FROM members_delta;
                    INSERT INTO {MODEL_CHANGES} SELECT {next_change(conn)}, match_key
                        FROM model_keys;"""
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        conn.execute(
            "DROP TABLE member_records; DROP TABLE member_profile_delta; DROP TABLE members_delta"
        )
    conn.execute("DROP TABLE model_keys")
    return {}  # never with a withholding integration (always a full build)


def _build_all_members(
    conn: duckdb.DuckDBPyConnection,
    feeds: list[Feed],
    segments: Sequence[SegmentSettings],
    today: date | None,
    timezone: str,
) -> dict[str, int]:
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
    conn.execute(f"INSERT INTO {MODEL_CHANGES} VALUES ({next_change(conn)}, NULL)")
    return {**({"withheld_shared_keys": withheld} if withholding(feeds) else {}), **counts}


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
    return _member_records_from_candidates(conn, feeds)


def _member_records_from_candidates(conn: duckdb.DuckDBPyConnection, feeds: list[Feed]) -> int:
    """`member_records` from `member_candidates` (see _build_member_records)."""
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


def _build_candidates(
    conn: duckdb.DuckDBPyConnection,
    feeds: list[Feed],
    required: str,
    only_keys: str | None = None,
) -> None:
    """Temp table `member_candidates`: the consenting (or once consenting) records of every
    member that meets `required`, tombstones included, ranked (see _build_member_records);
    with `only_keys`, only those of the match keys in that table."""
    some = f" AND match_key IN (SELECT match_key FROM {only_keys})" if only_keys else ""
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
            WHERE match_key IS NOT NULL AND (coalesce(consent, true) OR ever_consented){some})
        -- a member qualifies as a whole: once one of its records does, every record sharing
        -- its key contributes (the same profile before and after it reaches the target)
        SELECT * EXCLUDE (qualifies) FROM ranked
        QUALIFY bool_or(qualifies) OVER (PARTITION BY match_key)
        """
    )


def _build_profile(
    conn: duckdb.DuckDBPyConnection,
    fields: list[str],
    into: str = "member_profile",
    temp: bool = False,
) -> None:
    """`member_profile`: one row per match key; per field the non-empty value of the most
    recently modified record wins, ties to the lower rank (X6)."""
    picks = ",\n".join(
        f"""arg_max("{name}", (modified, -rank)) FILTER (WHERE "{name}" IS NOT NULL) AS "{name}\""""
        for name in fields
    )
    conn.execute(
        f"""
        CREATE OR REPLACE {"TEMP " if temp else ""}TABLE {into} AS
        SELECT match_key, {picks},
            list(DISTINCT integration ORDER BY integration) AS sources,
            count(*) AS source_records,
            max(modified) AS modified,
            bool_or(consent = false AND ever_consented) AS withdrawn
        FROM member_records GROUP BY match_key
        """
    )


def _build_target_rows(
    conn: duckdb.DuckDBPyConnection,
    columns: list[TargetField],
    with_groups: bool,
    profile: str = "member_profile",
    into: str = "members",
    temp: bool = False,
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
        CREATE OR REPLACE {"TEMP " if temp else ""}TABLE {into} AS
        WITH t AS (
            SELECT p.match_key{cols}, p.sources, p.source_records, p.modified, p.withdrawn
            FROM {profile} p {" ".join(joins)})
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


def _tracking_fingerprint(feeds: list[Feed]) -> str:
    return _fingerprint(
        _members_fingerprint(feeds),
        [(f.integration, [m.fingerprint for m in f.events]) for f in feeds],
        event_columns(feeds),
    )


def _event_parts(feeds: list[Feed], conn: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(staged event table, its SELECT of every event with its customer's match key)."""
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
            select = f"""SELECT e.event_id, '{feed.integration}' AS integration,
                        '{mapping.entity}' AS entity, e.business_date, c.match_key, {cols}
                    FROM {events} e LEFT JOIN {customers} c ON c.record_id = e.customer_id
                        AND (coalesce(c.consent, true) OR c.ever_consented)"""
            parts.append((events, select))
    return parts


def _changed_events(conn: duckdb.DuckDBPyConnection, feeds: list[Feed], high: int) -> bool:
    """Fill temp tables `event_days` (table, day) and `event_keys` (match keys) with what
    tracking_events must rebuild; False when a full rebuild is due (see Incremental builds)."""
    mark, seen = _get(conn, "tracking.seq"), _get(conn, "tracking.model")
    if (
        mark is None
        or seen is None
        or _get(conn, "tracking.fingerprint") != _tracking_fingerprint(feeds)
        or not _existing(conn, "tracking_events")
    ):
        return False
    window = f"seq > {int(mark)} AND seq <= {high}"
    event_tables = _tables_sql([t for f in feeds for t in _event_tables(f)])
    member_tables = _tables_sql(_member_tables(conn, feeds))
    (full,) = conn.execute(
        # a member table staged anew (or a staging call that never finished) re-keys events too
        f'SELECT bool_or("full") FROM {CHANGES} WHERE {window} '
        f"AND (tbl IN {event_tables} OR tbl IN {member_tables})"
    ).fetchone()
    (all_keys,) = conn.execute(
        f"SELECT bool_or(match_key IS NULL) FROM {MODEL_CHANGES} WHERE seq > ?", [int(seen)]
    ).fetchone()
    if full or all_keys:
        return False
    conn.execute(
        f"""CREATE OR REPLACE TEMP TABLE event_days AS
                SELECT DISTINCT tbl, business_date FROM {CHANGES}
                WHERE {window} AND tbl IN {event_tables} AND business_date IS NOT NULL;
            CREATE OR REPLACE TEMP TABLE event_keys AS
                SELECT match_key FROM {MODEL_CHANGES} WHERE seq > {int(seen)}
                UNION
                SELECT match_key FROM {CHANGES}
                WHERE {window} AND tbl IN {member_tables} AND match_key IS NOT NULL;"""
    )
    return True


def _event_tables(feed: Feed) -> list[str]:
    return [stage_table(feed.integration, m.entity) for m in feed.events]


def build_tracking_events(conn: duckdb.DuckDBPyConnection, feeds: list[Feed]) -> dict[str, int]:
    """Build `tracking_events`: each staged event joined to its customer's member. Only the
    event days and member keys staged or rebuilt since the last build when it can (see
    Incremental builds)."""
    _ensure_state(conn)
    high = _high_mark(conn)
    (seen,) = conn.execute(f"SELECT coalesce(max(seq), 0) FROM {MODEL_CHANGES}").fetchone()
    columns = event_columns(feeds)
    parts = _event_parts(feeds, conn)
    incremental = bool(parts) and _changed_events(conn, feeds, high)
    # What the activity feed last got for an event: when it changes (a ticket refunded), the
    # event is sent again as a new activity row.
    hashed = ", ".join(f"'{c}', a.\"{c}\"" for c in ["match_key", *columns])
    shaped = f"""SELECT a.*, md5(json_object({hashed})::VARCHAR) AS event_hash
                 FROM all_events a JOIN members m USING (match_key)
                 WHERE NOT m.withdrawn"""
    if incremental:
        touched = " UNION ALL ".join(
            f"""{select} WHERE e.business_date IN (
                    SELECT business_date FROM event_days WHERE tbl = {_lit(table)})
                OR c.match_key IN (SELECT match_key FROM event_keys)"""
            for table, select in parts
        )
        days = " OR ".join(
            f"""(integration = {_lit(f.integration)} AND entity = {_lit(m.entity)}
                 AND business_date IN (SELECT business_date FROM event_days
                                       WHERE tbl = {_lit(stage_table(f.integration, m.entity))}))"""
            for f in feeds
            for m in f.events
        )
        conn.execute(f"CREATE OR REPLACE TEMP TABLE all_events AS {touched}")
        tables = " UNION ALL ".join(
            f"SELECT {_lit(stage_table(f.integration, m.entity))} AS tbl, "
            f"{_lit(f.integration)} AS integration, {_lit(m.entity)} AS entity"
            for f in feeds
            for m in f.events
        )
        seq = next_change(conn)
        conn.execute("BEGIN TRANSACTION")
        try:
            conn.execute(
                f"""DELETE FROM tracking_events
                    WHERE match_key IN (SELECT match_key FROM event_keys) OR {days or "false"};
                    INSERT INTO tracking_events BY NAME {shaped};
                    INSERT INTO {TRACKING_CHANGES}
                        SELECT {seq}, false, t.integration, t.entity, d.business_date, NULL
                        FROM event_days d JOIN ({tables}) t USING (tbl);
                    INSERT INTO {TRACKING_CHANGES}
                        SELECT {seq}, false, NULL, NULL, NULL, match_key FROM event_keys;"""
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        conn.execute("DROP TABLE event_days; DROP TABLE event_keys; DROP TABLE all_events")
        (total,) = conn.execute(
            "SELECT " + " + ".join(f"(SELECT count(*) FROM {t})" for t, _ in parts)
        ).fetchone()
    else:
        selects = [select for _, select in parts]
        if not selects:
            cols = ", ".join(f'NULL::VARCHAR AS "{c}"' for c in columns)
            selects = [
                f"""SELECT NULL::VARCHAR AS event_id, NULL::VARCHAR AS integration,
                         NULL::VARCHAR AS entity, NULL::DATE AS business_date,
                         NULL::VARCHAR AS match_key{", " + cols if cols else ""} LIMIT 0"""
            ]
        conn.execute(
            f"""CREATE OR REPLACE TEMP TABLE all_events AS {" UNION ALL ".join(selects)};
                CREATE OR REPLACE TABLE tracking_events AS {shaped};
                INSERT INTO {TRACKING_CHANGES} VALUES
                    ({next_change(conn)}, true, NULL, NULL, NULL, NULL);"""
        )
        (total,) = conn.execute("SELECT count(*) FROM all_events").fetchone()
        conn.execute("DROP TABLE all_events")
    _set(conn, "tracking.seq", high)
    _set(conn, "tracking.rebuilt", "changed days and keys" if incremental else "all")
    _set(conn, "tracking.model", int(seen))
    _set(conn, "tracking.fingerprint", _tracking_fingerprint(feeds))
    _prune(conn)
    row = conn.execute(
        """SELECT count(*), count(DISTINCT integration) FROM tracking_events"""
    ).fetchall()[0]
    return {
        "events": row[0],
        "without_member": int(total) - row[0],
        "integrations": row[1],
    }
