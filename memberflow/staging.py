"""Staging: landing files -> mapped, normalised, validated rows in DuckDB, bad rows quarantined.

Staging is incremental and replayable. It remembers which landing files it has read (and under
which mapping fingerprint); new files re-stage only the records they touch, and a changed mapping
re-stages everything from the raw layer without calling the source (X3).

What a bad value costs (X4): a missing or invalid match key, a field the mapping marks
`required`, or a record id that arrived twice at once with different content withholds the row
(quarantine action 'row withheld'); any other bad field is set to NULL and the row goes on without
it, reported once per field (action 'field dropped'). Records landing could not read
(`_unreadable/`) are moved into quarantine with stage 'land', once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

import duckdb
import pandas as pd

from memberflow import landing, progress, validation
from memberflow.mapping import DELETED_FLAG, EXTERNAL_ID, EntityMapping, FieldRule, rule_sql

CHUNK_ROWS = 50_000


@dataclass
class StageResult:
    """Counts for the materialization's metadata."""

    table: str
    staged: int = 0
    quarantined: int = 0  # rows withheld (plus unreadable records moved from landing)
    files_read: int = 0
    full_rebuild: bool = False
    skipped: int = 0  # never-consented customers; anonymous sales (FP-A5)
    reasons: dict[str, int] = field(default_factory=dict)  # withheld rows by field
    fields_dropped: int = 0  # bad optional values set to NULL on rows that were staged
    drop_reasons: dict[str, int] = field(default_factory=dict)  # "field: what was wrong" -> n
    unreadable: int = 0  # records landing could not read, quarantined this run
    rows_by_day: dict[date, int] = field(default_factory=dict)  # table rows of each touched day
    staged_by_day: dict[date, int] = field(default_factory=dict)  # rows staged this run, by day
    deleted: int = 0  # events whose newest version is a tombstone: taken out of the table

    @property
    def rows_seen(self) -> int:
        """Every row this run decided on: staged + withheld + skipped (counts add up, X4)."""
        return self.staged + self.quarantined + self.skipped


def stage_table(integration: str, entity: str) -> str:
    return f"stg_{integration}_{entity}"


def ensure_bookkeeping(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS staged_files (
            integration VARCHAR, entity VARCHAR, path VARCHAR, fingerprint VARCHAR);
        CREATE TABLE IF NOT EXISTS stage_meta (
            integration VARCHAR, entity VARCHAR, fingerprint VARCHAR,
            PRIMARY KEY (integration, entity));
        CREATE TABLE IF NOT EXISTS quarantine (
            integration VARCHAR, entity VARCHAR, stage VARCHAR, record_id VARCHAR,
            match_key VARCHAR, reason VARCHAR, payload VARCHAR,
            quarantined_at TIMESTAMPTZ DEFAULT current_timestamp, run_id VARCHAR);
        ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS field VARCHAR;
        ALTER TABLE quarantine ADD COLUMN IF NOT EXISTS action VARCHAR;
        """
    )


# --- the change log: what each stage call touched, for the incremental model ------------------
#
# Every call that writes a staged table appends to `stage_changes` under one batch marker (`seq`,
# from a sequence, increasing): for a member table the record ids it replaced with their match
# keys before and after; for an event table the business days it replaced; `full` when the table
# was made anew (a mapping change, the first run). The model reads the entries after its last
# watermark (memberflow/model.py) and deletes what it consumed.

CHANGES = "stage_changes"


IN_PROGRESS = "<staging in progress>"  # record_id of the change log's stand-in `full` marker


def ensure_change_log(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(
        f"""CREATE SEQUENCE IF NOT EXISTS change_seq;
            CREATE TABLE IF NOT EXISTS {CHANGES} (
                seq BIGINT, tbl VARCHAR, "full" BOOLEAN, record_id VARCHAR, match_key VARCHAR,
                business_date DATE)"""
    )


def next_change(conn: duckdb.DuckDBPyConnection) -> int:
    """A new batch marker (greater than every earlier one in this warehouse)."""
    ensure_change_log(conn)
    return int(conn.execute("SELECT nextval('change_seq')").fetchall()[0][0])


def _log_full(conn: duckdb.DuckDBPyConnection, seq: int, table: str) -> None:
    conn.execute(f"INSERT INTO {CHANGES} VALUES (?, ?, true, NULL, NULL, NULL)", [seq, table])


def _log_touched(conn: duckdb.DuckDBPyConnection, seq: int, table: str, member: bool) -> None:
    """The rows of `table` of every record in `mapped` (called before and after they change)."""
    picked = "record_id, match_key, NULL" if member else "NULL, NULL, business_date"
    conn.execute(
        f"""INSERT INTO {CHANGES} SELECT DISTINCT ?, ?, false, {picked} FROM {table}
            WHERE record_id IN (SELECT record_id FROM mapped)""",
        [seq, table],
    )


ROW_WITHHELD = "row withheld"  # a NULL action (rows other modules insert) means the same
FIELD_DROPPED = "field dropped"


@dataclass(frozen=True)
class StageSettings:
    integration: str
    separator: str
    date_format: str
    phone_region: str
    match_on: str
    run_id: str = ""
    source_kind: str = ""  # for external_id ("<source kind>:<record id>"); else the integration

    def external_id(self, record_ids: pd.Series) -> pd.Series:
        """The computed canonical `external_id` of each record id."""
        return (self.source_kind or self.integration) + ":" + record_ids.astype(str)


def staged_fingerprint(mapping: EntityMapping, settings: StageSettings) -> str:
    """What the staged rows depend on: the mapping, and for members the match key and the source
    kind too, so turning merge by phone on or off re-keys every staged record (from raw)."""
    if mapping.role != "members":
        return mapping.fingerprint
    text = f"{mapping.fingerprint}:{settings.match_on}:{settings.source_kind}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _pending_files(
    conn: duckdb.DuckDBPyConnection, settings: StageSettings, mapping: EntityMapping
) -> tuple[list[str], list[str], bool]:
    """(all files, files not yet staged under this mapping, whether a full rebuild is due)."""
    files = landing.day_files(settings.integration, mapping.entity)
    table = stage_table(settings.integration, mapping.entity)
    meta = conn.execute(
        "SELECT fingerprint FROM stage_meta WHERE integration = ? AND entity = ?",
        [settings.integration, mapping.entity],
    ).fetchall()
    exists = bool(
        conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table]
        ).fetchall()[0][0]
    )
    if not exists or not meta or meta[0][0] != staged_fingerprint(mapping, settings):
        return files, files, True
    seen = conn.execute(
        "SELECT path FROM staged_files WHERE integration = ? AND entity = ?",
        [settings.integration, mapping.entity],
    ).fetchall()
    done = {path for (path,) in seen}
    return files, [f for f in files if f not in done], False


def _file_list_sql(files: Iterable[str]) -> str:
    return "[" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "]"


def _mark_staged(
    conn: duckdb.DuckDBPyConnection, settings: StageSettings, entity: str, files: list[str], fp: str
) -> None:
    conn.execute(
        "DELETE FROM staged_files WHERE integration = ? AND entity = ? AND fingerprint <> ?",
        [settings.integration, entity, fp],
    )
    conn.execute(
        "INSERT OR REPLACE INTO stage_meta VALUES (?, ?, ?)", [settings.integration, entity, fp]
    )
    if files:
        frame = pd.DataFrame({"path": files})
        conn.register("new_files", frame)
        conn.execute(
            "INSERT INTO staged_files SELECT ?, ?, path, ? FROM new_files",
            [settings.integration, entity, fp],
        )
        conn.unregister("new_files")


# --- members ----------------------------------------------------------------------------------


def stage_members(
    conn: duckdb.DuckDBPyConnection, mapping: EntityMapping, settings: StageSettings
) -> StageResult:
    """Re-stage every customer record touched by new landing files (all, after a mapping change)."""
    ensure_bookkeeping(conn)
    table = stage_table(settings.integration, mapping.entity)
    result = StageResult(table=table)
    files, new, full = _pending_files(conn, settings, mapping)
    result.full_rebuild, result.files_read = full, len(new)
    seq = next_change(conn)
    if full:
        _create_member_table(conn, table, mapping)
        _log_full(conn, seq, table)
    _add_member_columns(conn, table)
    unreadable = _quarantine_unreadable(conn, settings, mapping, result, full)
    if not new:
        _mark_staged(
            conn, settings, mapping.entity, unreadable, staged_fingerprint(mapping, settings)
        )
        return result
    consent = (
        f"(json_extract_string(payload, '$.{mapping.consent}') = 'true')"
        if mapping.consent
        else "NULL::BOOLEAN"
    )
    cols = ", ".join(
        f'{rule_sql(r, "payload", None, settings.separator)} AS "{r.target}"'
        for r in mapping.fields
    )
    new_ids = f"SELECT DISTINCT record_id FROM read_parquet({_file_list_sql(new)})"
    touched = "" if full else f"WHERE record_id IN ({new_ids})"
    # Pass 1, narrow: which landed row is each record's version, and its flags. No payload
    # travels through the windows (its hash tells versions apart), so they stay small.
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE picked AS
        WITH raw AS (
            SELECT record_id, modified, fetched_at, filename AS _file, file_row_number AS _pos,
                   hash(payload) AS _hash, {_TOMBSTONE} AS tomb, {consent} AS consent
            FROM {_read_rows(files)} {touched}),
        gone AS (
            SELECT record_id FROM raw GROUP BY record_id
            HAVING max(fetched_at) FILTER (WHERE tomb)
                   >= coalesce(max(fetched_at) FILTER (WHERE NOT tomb), '-infinity'::TIMESTAMPTZ)),
        ranked AS (
            SELECT record_id, modified, fetched_at, _file, _pos, consent,
                row_number() OVER (PARTITION BY record_id ORDER BY modified DESC, fetched_at DESC)
                    AS rn,
                {_AMBIGUOUS} AS _ambiguous,
                coalesce(bool_or(consent) OVER (PARTITION BY record_id), false)
                    AS ever_consented,
                coalesce(bool_or(coalesce(consent, true)) OVER (PARTITION BY record_id), false)
                    AS was_member
            FROM raw WHERE NOT tomb)
        SELECT record_id, modified,
               CASE WHEN deleted THEN false ELSE consent END AS consent,
               CASE WHEN deleted THEN was_member ELSE ever_consented END AS ever_consented,
               deleted, _ambiguous, _file, _pos
        FROM (SELECT *, record_id IN (SELECT record_id FROM gone) AS deleted FROM ranked)
        WHERE rn = 1
        """
    )
    # A tombstone without any earlier version: nothing to withdraw, nothing to stage.
    result.skipped += conn.execute(
        f"""SELECT count(DISTINCT record_id) FROM read_parquet({_file_list_sql(new)})
            WHERE {_TOMBSTONE} AND record_id NOT IN (SELECT record_id FROM picked)"""
    ).fetchall()[0][0]
    # Pass 2, in bounded batches of landing files: the picked rows' payloads, mapped, written.
    for batch, files in enumerate(_file_batches(conn)):
        conn.execute(
            f"""
            CREATE OR REPLACE TEMP TABLE mapped AS
            SELECT row_number() OVER () AS _row, p.record_id, p.modified, p.consent,
                   p.ever_consented, p.deleted, p._ambiguous, r.payload, {cols}
            FROM {_read_rows(files)} r
            JOIN (FROM picked WHERE _batch = {batch}) p
                ON p._file = r.filename AND p._pos = r.file_row_number
            """
        )
        _replace_mapped(conn, table, mapping, settings, result, member=True, seq=seq, fresh=full)
    conn.execute("DROP TABLE picked")
    fingerprint = staged_fingerprint(mapping, settings)
    _mark_staged(conn, settings, mapping.entity, new + unreadable, fingerprint)
    return result


# A record the source deleted lands as a tombstone: its id and `_memberflow_deleted: true`. When
# it is the record's latest version (fetched no earlier than any live one), the record is staged
# from its last live version as a consent withdrawn: the model then withdraws its member unless
# another live record shares the member's key.
_TOMBSTONE = f"coalesce(json_extract_string(payload, '$.{DELETED_FLAG}') IN ('true', '1'), false)"


# Two versions of one record with the same modification and fetch time (one page, one batch) but
# different content: which is the record? Neither is picked; the record is withheld instead.
# (Told apart by the payload's 64-bit hash: the windows never carry a payload.)
_AMBIGUOUS = """(min(_hash) OVER (PARTITION BY record_id, modified, fetched_at)
                 <> max(_hash) OVER (PARTITION BY record_id, modified, fetched_at))"""


# Staging maps and writes at most this many records per statement (pass 2), reading only the
# landing files that hold them: memory does not grow with the number of customers or sales.
# (Measured: a statement that extracts a dozen JSON fields into a table holds several KB per
# row in DuckDB until it ends, so the batch, not the list, must bound it.)
BATCH_ROWS = 10_000


def _read_rows(files: list[str]) -> str:
    """Landing files with each row's file and position (to fetch a picked row's payload)."""
    return f"read_parquet({_file_list_sql(files)}, filename = true, file_row_number = true)"


def _file_batches(conn: duckdb.DuckDBPyConnection) -> list[list[str]]:
    """Number the `picked` rows into batches of BATCH_ROWS (column `_batch`, by file and
    position, so a batch reads few files) and return each batch's landing files."""
    conn.execute(
        f"""CREATE OR REPLACE TEMP TABLE picked AS
            SELECT * EXCLUDE (_batch_row),
                   (_batch_row - 1) // {int(BATCH_ROWS)} AS _batch
            FROM (SELECT *, row_number() OVER (ORDER BY _file, _pos) AS _batch_row FROM picked)"""
    )
    rows = conn.execute(
        "SELECT _batch, list(DISTINCT _file ORDER BY _file) FROM picked GROUP BY _batch "
        "ORDER BY _batch"
    ).fetchall()
    return [files for _, files in rows]


def _quarantine_unreadable(
    conn: duckdb.DuckDBPyConnection,
    settings: StageSettings,
    mapping: EntityMapping,
    result: StageResult,
    full: bool,
) -> list[str]:
    """Move records landing could not read into quarantine (stage 'land'), each once: a record
    the source serves again and again is one quarantine row. Returns the files read."""
    files = landing.unreadable_files(settings.integration, mapping.entity)
    if not full:
        seen = conn.execute(
            "SELECT path FROM staged_files WHERE integration = ? AND entity = ?",
            [settings.integration, mapping.entity],
        ).fetchall()
        done = {path for (path,) in seen}
        files = [f for f in files if f not in done]
    if not files:
        return []
    # A payload that is not valid JSON (a lone surrogate) is kept as it came, without an id.
    record_id = (
        f"CASE WHEN json_valid(payload) THEN "
        f"json_extract_string(payload, {_sql_text('$.' + mapping.record_id)}) END"
    )
    inserted = conn.execute(
        f"""
        INSERT INTO quarantine (integration, entity, stage, record_id, reason, payload, run_id,
                                field, action)
        SELECT ?, ?, 'land', {record_id}, reason, payload, ?,
               nullif(regexp_extract(reason, '^unreadable record: ([A-Za-z0-9_.]+): ', 1), ''),
               '{ROW_WITHHELD}'
        FROM (SELECT DISTINCT reason, payload FROM read_parquet({_file_list_sql(files)})) u
        WHERE NOT EXISTS (
            SELECT 1 FROM quarantine q
            WHERE q.integration = ? AND q.entity = ? AND q.stage = 'land'
              AND q.payload = u.payload AND q.reason = u.reason)
        RETURNING reason
        """,
        [settings.integration, mapping.entity, settings.run_id]
        + [settings.integration, mapping.entity],
    ).fetchall()
    result.unreadable += len(inserted)
    result.quarantined += len(inserted)
    if inserted:
        key = "unreadable record"
        result.reasons[key] = result.reasons.get(key, 0) + len(inserted)
    return files


def _sql_text(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _create_member_table(
    conn: duckdb.DuckDBPyConnection, table: str, mapping: EntityMapping
) -> None:
    cols = ", ".join(f'"{r.target}" VARCHAR' for r in mapping.fields)
    conn.execute(
        f"""CREATE OR REPLACE TABLE {table} (
            record_id VARCHAR PRIMARY KEY, modified TIMESTAMPTZ, consent BOOLEAN,
            ever_consented BOOLEAN, match_key VARCHAR, deleted BOOLEAN,
            {EXTERNAL_ID} VARCHAR, {cols})"""
    )


def _add_member_columns(conn: duckdb.DuckDBPyConnection, table: str) -> None:
    """Tables staged before tombstones and external ids existed gain their columns."""
    conn.execute(
        f"""ALTER TABLE {table} ADD COLUMN IF NOT EXISTS deleted BOOLEAN;
            ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {EXTERNAL_ID} VARCHAR"""
    )


# --- events -----------------------------------------------------------------------------------


def stage_events(
    conn: duckdb.DuckDBPyConnection,
    mapping: EntityMapping,
    settings: StageSettings,
    days: Iterable[date] = (),
) -> StageResult:
    """Re-derive the events of every day with new landing files, plus `days` (a backfill)."""
    ensure_bookkeeping(conn)
    table = stage_table(settings.integration, mapping.entity)
    result = StageResult(table=table)
    files, new, full = _pending_files(conn, settings, mapping)
    result.full_rebuild = full
    seq = next_change(conn)
    if full:
        _create_event_table(conn, table, mapping)
        _log_full(conn, seq, table)
    else:
        _add_event_columns(conn, table)
    unreadable = _quarantine_unreadable(conn, settings, mapping, result, full)
    touched_days = {date.fromisoformat(f.split("/")[-2]) for f in new} | set(days)
    day_files = (
        files if full else landing.day_files(settings.integration, mapping.entity, touched_days)
    )
    result.files_read = len(day_files)
    # The days go into the change log before their rows leave the table: a crash in between
    # must leave a day the model rebuilds, never a day gone without a trace.
    conn.execute(
        f"INSERT INTO {CHANGES} SELECT ?, ?, false, NULL, NULL, unnest(?::DATE[])",
        [seq, table, sorted(touched_days)],
    )
    conn.execute(
        f"DELETE FROM {table} WHERE business_date IN (SELECT unnest(?::DATE[]))",
        [sorted(touched_days)],
    )
    if day_files:
        # The records of the touched days, each at its latest version wherever it landed (a
        # sale re-dated to another day must not come back in its old version).
        _pick_events(conn, files, day_files)
        for batch, batch_files in enumerate(_file_batches(conn)):
            result.skipped += _map_events(conn, mapping, settings, batch, batch_files)
            _replace_mapped(
                conn, table, mapping, settings, result, member=False, seq=seq, fresh=full
            )
            conn.execute("DROP TABLE latest_records")
        conn.execute("DROP TABLE picked")
    _count_by_day(conn, table, touched_days, result)
    _mark_staged(conn, settings, mapping.entity, new + unreadable, mapping.fingerprint)
    return result


def _count_by_day(
    conn: duckdb.DuckDBPyConnection, table: str, days: set[date], result: StageResult
) -> None:
    """Rows now in the table for each day this run re-derived (per-partition figures)."""
    if not days:
        return
    rows = conn.execute(
        f"""SELECT d.day, count(t.business_date) FROM (SELECT unnest(?::DATE[]) AS day) d
            LEFT JOIN {table} t ON t.business_date = d.day GROUP BY d.day""",
        [sorted(days)],
    ).fetchall()
    result.rows_by_day = {day: int(n) for day, n in rows}


def _pick_events(
    conn: duckdb.DuckDBPyConnection, files: list[str], touched_files: list[str]
) -> None:
    """Create the temp table `picked`: each record of the touched files at its latest version
    wherever it landed (its file and position there), narrow: no payload (pass 1)."""
    touched = ""
    if touched_files != files:  # a full rebuild reads every file: no filter needed
        ids = f"SELECT record_id FROM read_parquet({_file_list_sql(touched_files)})"
        touched = f"WHERE record_id IN ({ids})"
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE picked AS
        WITH landed AS (
            SELECT record_id, modified, business_date, fetched_at, filename AS _file,
                   file_row_number AS _pos, hash(payload) AS _hash, {_TOMBSTONE} AS _is_tomb
            FROM {_read_rows(files)} {touched}),
        fetched AS (
            SELECT *,
                max(fetched_at) FILTER (WHERE _is_tomb) OVER (PARTITION BY record_id) AS tomb_at,
                max(fetched_at) FILTER (WHERE NOT _is_tomb) OVER (PARTITION BY record_id)
                    AS live_at
            FROM landed),
        -- deleted or not is decided by fetch time (a tombstone's modified time is when it was
        -- seen; a record seen again after it is back); the version by modified time among the rest
        raw AS (
            SELECT record_id, modified, business_date, fetched_at, _file, _pos, _hash
            FROM fetched
            WHERE CASE WHEN tomb_at IS NOT NULL AND tomb_at >= coalesce(live_at, tomb_at)
                       THEN _is_tomb ELSE NOT _is_tomb END),
        ranked AS (
            SELECT *, row_number() OVER (
                    PARTITION BY record_id ORDER BY modified DESC, fetched_at DESC) AS rn,
                {_AMBIGUOUS} AS _ambiguous
            FROM raw)
        SELECT record_id, modified, business_date, _ambiguous, _file, _pos
        FROM ranked WHERE rn = 1
        """
    )


def _map_events(
    conn: duckdb.DuckDBPyConnection,
    mapping: EntityMapping,
    settings: StageSettings,
    batch: int,
    files: list[str],
) -> int:
    """Create the temp tables `latest_records` (the picked records of a batch of landing files,
    with their payloads) and `mapped`, one row per event line; returns how many records had no
    line at all (a journal without lines: counted as skipped, not lost).

    Memory stays flat in lines per record: record-level fields are read once per record, and
    the lines are exploded from the lines array alone (record id, line number, line JSON), then
    joined to them. No line row ever carries its record's whole payload, which made a journal
    of n lines cost n copies of an O(n) payload.
    """
    sep = settings.separator
    line_rules = [r for r in mapping.fields if mapping.explode and _reads_line(r)]
    record_rules = [r for r in mapping.fields if r not in line_rules]
    record_cols = "".join(
        f', {rule_sql(r, "payload", None, sep)} AS "{r.target}"' for r in record_rules
    )
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE latest_records AS
        SELECT p.record_id, p.modified, p.business_date, r.payload, p._ambiguous
        FROM {_read_rows(files)} r
        JOIN (FROM picked WHERE _batch = {batch}) p
            ON p._file = r.filename AND p._pos = r.file_row_number
        """
    )
    customer = f"json_extract_string(payload, {_sql_text('$.' + str(mapping.customer_id))})"
    records = f"""SELECT record_id, modified, business_date, _ambiguous,
                         {customer} AS customer_id, {_customer_ids_sql(mapping)} AS customer_ids,
                         {_live_sql(mapping)} AS live,
                         {_TOMBSTONE} AS _tomb
                         {record_cols}
                  FROM latest_records"""
    record_names = "".join(f', r."{r.target}"' for r in record_rules)
    line_names = "".join(f', l."{r.target}"' for r in line_rules)
    if mapping.explode:
        items = f"json_extract(payload, {_sql_text('$.' + mapping.explode + '[*]')})"
        line_cols = "".join(
            f', {rule_sql(r, "line", "line", sep)} AS "{r.target}"' for r in line_rules
        )
        select = f"""
            WITH arrays AS (SELECT record_id, {items} AS items FROM latest_records),
            lines AS (
                SELECT record_id, unnest(items) AS line,
                       unnest(range(1, len(items) + 1)) AS line_no
                FROM arrays),
            line_fields AS (SELECT record_id, line_no{line_cols} FROM lines),
            records AS ({records})
            SELECT row_number() OVER () AS _row, r.record_id, l.line_no, r.modified,
                   r.business_date, r._ambiguous, r.customer_id, r.customer_ids, r.live,
                   r._tomb{record_names}{line_names}
            FROM line_fields l JOIN records r USING (record_id)"""
    else:
        select = f"""
            WITH records AS ({records})
            SELECT row_number() OVER () AS _row, r.record_id, 1 AS line_no, r.modified,
                   r.business_date, r._ambiguous, r.customer_id, r.customer_ids, r.live,
                   r._tomb{record_names}
            FROM records r"""
    conn.execute(f"CREATE OR REPLACE TEMP TABLE mapped AS {select}")
    lineless = 0
    if mapping.explode:
        lineless = conn.execute(
            f"""SELECT count(*) FROM latest_records
                WHERE coalesce(len({items}), 0) = 0"""
        ).fetchall()[0][0]
    return int(lineless)


def _customer_ids_sql(mapping: EntityMapping) -> str:
    """Every customer the event concerns, as a JSON array text of distinct ids (the first is
    `customer_id`); converted to a list when inserted."""
    paths = mapping.customer_ids or ((mapping.customer_id,) if mapping.customer_id else ())
    if not paths:
        return "'[]'"
    items = ", ".join(f"json_extract_string(payload, {_sql_text('$.' + p)})" for p in paths)
    return f"to_json(list_distinct(list_filter([{items}], lambda x: x IS NOT NULL AND x <> '')))"


def _live_sql(mapping: EntityMapping) -> str:
    """False when the mapping's `cancelled` flag is set on the record (true, 1, yes)."""
    if not mapping.cancelled:
        return "true"
    flag = f"lower(trim(json_extract_string(payload, {_sql_text('$.' + mapping.cancelled)})))"
    return f"NOT coalesce({flag} IN ('true', '1', 'yes'), false)"


def _reads_line(rule: FieldRule) -> bool:
    return rule.path is not None and rule.path.startswith("line.")


def _add_event_columns(conn: duckdb.DuckDBPyConnection, table: str) -> None:
    """Columns added after a warehouse was made (several customers, the cancelled flag)."""
    conn.execute(
        f"""ALTER TABLE {table} ADD COLUMN IF NOT EXISTS customer_ids VARCHAR[];
            ALTER TABLE {table} ADD COLUMN IF NOT EXISTS live BOOLEAN;"""
    )


def _create_event_table(
    conn: duckdb.DuckDBPyConnection, table: str, mapping: EntityMapping
) -> None:
    cols = ", ".join(f'"{r.target}" VARCHAR' for r in mapping.fields)
    conn.execute(
        f"""CREATE OR REPLACE TABLE {table} (
            event_id VARCHAR PRIMARY KEY, record_id VARCHAR, line_no INTEGER,
            customer_id VARCHAR, business_date DATE, modified TIMESTAMPTZ,
            customer_ids VARCHAR[], live BOOLEAN, {cols})"""
    )


# --- shared: normalise, gate, write -----------------------------------------------------------


def _replace_mapped(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    mapping: EntityMapping,
    settings: StageSettings,
    result: StageResult,
    *,
    member: bool,
    seq: int,
    fresh: bool = False,
) -> None:
    """Swap the rows (and stale quarantine reasons) of every record in `mapped` for new ones;
    the change log gets their rows before and after. Until the rows after are logged, a `full`
    marker stands in for them: a staging call that dies half-way (some chunks inserted, their
    new keys unlogged) makes the next model build a full one instead of missing those keys.

    `fresh`: the table was made anew by this call (its real `full` marker is logged and each
    record comes in one batch only), so there are no old rows to log or delete, and no new
    keys to log: a full rebuild would otherwise scan the growing table twice per batch."""
    if not fresh:
        conn.execute(  # the stand-in `full` marker, told from a real one by its record_id
            f"INSERT INTO {CHANGES} VALUES (?, ?, true, ?, NULL, NULL)", [seq, table, IN_PROGRESS]
        )
        _log_touched(conn, seq, table, member)
        conn.execute(f"DELETE FROM {table} WHERE record_id IN (SELECT record_id FROM mapped)")
    conn.execute(
        "DELETE FROM quarantine WHERE integration = ? AND entity = ? AND stage = 'stage' "
        "AND record_id IN (SELECT record_id FROM mapped)",
        [settings.integration, mapping.entity],
    )
    if not member:
        # An event deleted at the source (its tombstone is its newest version) leaves the table
        # wherever it was; nothing of it is staged again.
        result.deleted += conn.execute("SELECT count(*) FROM mapped WHERE _tomb").fetchall()[0][0]
        conn.execute("DELETE FROM mapped WHERE _tomb")
    _process_chunks(conn, table, mapping, settings, result, member=member)
    if not fresh:
        _log_touched(conn, seq, table, member)
        conn.execute(
            f"DELETE FROM {CHANGES} WHERE seq = ? AND tbl = ? AND record_id = ?",
            [seq, table, IN_PROGRESS],
        )
    conn.execute("DROP TABLE mapped")


def _process_chunks(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    mapping: EntityMapping,
    settings: StageSettings,
    result: StageResult,
    *,
    member: bool,
) -> None:
    total = conn.execute("SELECT count(*) FROM mapped").fetchall()[0][0]
    schema = validation.schema_for(mapping, settings.match_on if member else None)
    for start in range(0, total, CHUNK_ROWS):
        frame = conn.execute(
            "SELECT * EXCLUDE (_row) FROM mapped WHERE _row > ? AND _row <= ? ORDER BY _row",
            [start, start + CHUNK_ROWS],
        ).df()
        frame = frame.astype({r.target: object for r in mapping.fields})
        _write_chunk(conn, table, mapping, settings, result, frame, schema, member)


def _write_chunk(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    mapping: EntityMapping,
    settings: StageSettings,
    result: StageResult,
    frame: pd.DataFrame,
    schema: object,
    member: bool,
) -> None:
    frame = frame.where(frame.notna(), None)
    issues = validation.normalise(frame, mapping, settings.date_format, settings.phone_region)
    keys = _row_keys(mapping, settings, member)
    problems = validation.row_problems({f: v for f, v in issues.items() if f in keys}, frame.index)
    drops = {f: v for f, v in issues.items() if f not in keys}
    ambiguous = _flags(frame["_ambiguous"], default=False)
    problems[ambiguous] = problems[ambiguous].map(
        lambda p: validation._join(p, f"record_id: {_AMBIGUOUS_REASON}")
    )
    if member:
        frame[EXTERNAL_ID] = settings.external_id(frame["record_id"])
        frame["match_key"] = frame[settings.match_on] if settings.match_on in frame else None
        consent_false = ~_flags(frame["consent"], default=True)
        no_consent = consent_false & ~_flags(frame["ever_consented"], default=False)
        result.skipped += int(no_consent.sum())
        missing_key = frame["match_key"].isna() & (problems == "") & ~no_consent
        problems[missing_key] = f"{settings.match_on}: missing (the match key)"
        checkable = ~no_consent
    else:
        frame["event_id"] = (
            settings.integration
            + ":"
            + mapping.entity
            + ":"
            + frame["record_id"].astype(str)
            + ":"
            + frame["line_no"].astype(str)
        )
        checkable = frame["customer_id"].notna()
        result.skipped += int((~checkable).sum())  # anonymous sales (FP-A5)
    _gate(frame, schema, checkable & (problems == ""), keys, problems, drops)
    bad = checkable & (problems != "")
    good = checkable & ~bad if not member else ~bad
    skipped_outside = 0 if member else int((~checkable).sum())  # members keep no-consent rows
    if int(good.sum()) + int(bad.sum()) + skipped_outside != len(frame):
        raise AssertionError(f"{table}: staging would lose rows; refusing to write")  # X4
    _insert(conn, table, frame[good], mapping, member)
    withheld = _reason_rows(frame[bad], problems[bad], mapping, ROW_WITHHELD)
    dropped = _dropped_rows(frame, drops, checkable & ~bad, mapping)
    _quarantine(conn, settings, mapping, pd.concat([withheld, dropped], ignore_index=True))
    result.staged += int(good.sum())
    progress.note(rows=int(good.sum()))
    if not member:
        for day, n in frame.loc[good, "business_date"].value_counts().items():
            key = day.date() if isinstance(day, pd.Timestamp) else day
            result.staged_by_day[key] = result.staged_by_day.get(key, 0) + int(n)
    result.quarantined += int(bad.sum())
    for field_name, problem in zip(withheld["field"], withheld["problem"], strict=True):
        key = f"{field_name}: {_kind(problem)}"
        result.reasons[key] = result.reasons.get(key, 0) + 1
    result.fields_dropped += len(dropped)
    for field_name, problem in zip(dropped["field"], dropped["problem"], strict=True):
        key = f"{field_name}: {_kind(problem)}"
        result.drop_reasons[key] = result.drop_reasons.get(key, 0) + 1


_AMBIGUOUS_REASON = (
    "arrived more than once at the same time with different content; withheld rather than "
    "picking one version"
)


def _row_keys(mapping: EntityMapping, settings: StageSettings, member: bool) -> set[str]:
    """Fields whose bad value withholds the whole row: the match key and required fields."""
    keys = {r.target for r in mapping.fields if r.required} | {"record_id"}
    if member:
        keys |= {settings.match_on, "match_key"}
    return keys


def _gate(
    frame: pd.DataFrame,
    schema: object,
    rows: pd.Series,
    keys: set[str],
    problems: pd.Series,
    drops: dict[str, pd.Series],
) -> None:
    """The pandera gate over `rows`: a failing key field withholds its row (into `problems`),
    a failing optional field is dropped (set to None, reason into `drops`)."""
    for column, failures in validation.gate_by_column(frame[rows], schema).items():
        failing = failures[failures != ""]
        if column in keys or column not in drops:
            named = failing.map(lambda m, c=column: f"{c}: {m}")
            problems.loc[failing.index] = [
                validation._join(p, n)
                for p, n in zip(problems.loc[failing.index], named, strict=True)
            ]
        else:
            frame.loc[failing.index, column] = None
            drops[column] = drops[column].copy()
            drops[column].loc[failing.index] = failing


def _reason_rows(
    frame: pd.DataFrame, reasons: pd.Series, mapping: EntityMapping, action: str
) -> pd.DataFrame:
    """Quarantine rows for withheld rows: the first field named in the reason as `field`."""
    fields = reasons.map(lambda r: r.split(":", 1)[0])
    return _rows(frame, fields, reasons.map(lambda r: r.split(":", 1)[1].strip()), mapping, action)


def _dropped_rows(
    frame: pd.DataFrame, drops: dict[str, pd.Series], rows: pd.Series, mapping: EntityMapping
) -> pd.DataFrame:
    """One quarantine row per field set to NULL on a staged row, naming field and reason."""
    parts = []
    for target, problem in drops.items():
        hit = rows & problem.notna() & (problem.astype(str) != "")
        if hit.any():
            fields = pd.Series(target, index=frame.index[hit], dtype=object)
            parts.append(_rows(frame[hit], fields, problem[hit], mapping, FIELD_DROPPED))
    if not parts:
        return _rows(frame.iloc[:0], pd.Series(dtype=object), pd.Series(dtype=object), mapping, "")
    return pd.concat(parts, ignore_index=True)


def _rows(
    frame: pd.DataFrame,
    fields: pd.Series,
    problems: pd.Series,
    mapping: EntityMapping,
    action: str,
) -> pd.DataFrame:
    reasons = fields.astype(str) + ": " + problems.astype(str)
    if mapping.role == "events" and mapping.explode:
        reasons = reasons + " (line " + frame["line_no"].astype(str) + ")"
    rows = pd.DataFrame(
        {
            "record_id": frame["record_id"].astype(str),
            "line_no": frame["line_no"] if "line_no" in frame else 0,
            "field": fields.astype(str),
            "problem": problems.astype(str),
            "reason": reasons,
            "action": action,
        }
    )
    if "payload" in frame:
        rows["payload"] = frame["payload"].astype(object)
    return rows.reset_index(drop=True)


def _kind(problem: str) -> str:
    """What was wrong, without the value: 'invalid mobile', 'implausible date', ..."""
    for stop in (" '", " (", ":", ";", " U+"):
        problem = problem.split(stop, 1)[0]
    return problem.strip()


def _flags(column: pd.Series, default: bool) -> pd.Series:
    """A nullable boolean column as plain bools: NA must never leak into a row mask."""
    return column.map(lambda v: default if pd.isna(v) else bool(v)).astype(bool)


def _insert(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    frame: pd.DataFrame,
    mapping: EntityMapping,
    member: bool,
) -> None:
    if frame.empty:
        return
    fields = [r.target for r in mapping.fields]
    keys = (
        ["record_id", "modified", "consent", "ever_consented", "match_key", "deleted", EXTERNAL_ID]
        if member
        else ["event_id", "record_id", "line_no", "customer_id", "business_date", "modified"]
        + ["customer_ids", "live"]
    )
    conn.register("chunk", frame[keys + fields])
    names = ", ".join(f'"{c}"' for c in keys + fields)
    # customer_ids travels as JSON text through pandas; the table keeps a list
    selects = names.replace('"customer_ids"', 'CAST(json("customer_ids") AS VARCHAR[])')
    conn.execute(f"INSERT INTO {table} ({names}) SELECT {selects} FROM chunk")
    conn.unregister("chunk")


def _quarantine(
    conn: duckdb.DuckDBPyConnection,
    settings: StageSettings,
    mapping: EntityMapping,
    rows: pd.DataFrame,
) -> None:
    if rows.empty:
        return
    # Members carry their payload; event lines do not (one copy per line would multiply memory
    # by the lines per sale), so theirs is read from the record it came from, once per record
    # and chunk: the record's other rows point at it by record id.
    if "payload" in rows:
        source = "SELECT record_id, field, reason, action, payload FROM bad_rows"
    else:
        source = """SELECT b.record_id, b.field, b.reason, b.action,
                           CASE WHEN row_number() OVER (PARTITION BY b.record_id
                                    ORDER BY b.line_no, b.field) = 1
                                THEN l.payload END AS payload
                    FROM bad_rows b LEFT JOIN latest_records l USING (record_id)"""
    conn.register("bad_rows", rows)
    conn.execute(
        "INSERT INTO quarantine (integration, entity, stage, record_id, reason, payload, run_id, "
        "field, action) "
        f"SELECT ?, ?, 'stage', record_id, reason, payload, ?, field, action FROM ({source})",
        [settings.integration, mapping.entity, settings.run_id],
    )
    conn.unregister("bad_rows")
