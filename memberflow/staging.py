"""Staging: landing files -> mapped, normalised, validated rows in DuckDB, bad rows quarantined.

Staging is incremental and replayable. It remembers which landing files it has read (and under
which mapping fingerprint); new files re-stage only the records they touch, and a changed mapping
re-stages everything from the raw layer without calling the source (X3).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date

import duckdb
import pandas as pd

from memberflow import landing, validation
from memberflow.mapping import EntityMapping, rule_sql

CHUNK_ROWS = 50_000


@dataclass
class StageResult:
    """Counts for the materialization's metadata."""

    table: str
    staged: int = 0
    quarantined: int = 0
    files_read: int = 0
    full_rebuild: bool = False
    skipped: int = 0  # never-consented customers; anonymous sales (FP-A5)
    reasons: dict[str, int] = field(default_factory=dict)


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
        """
    )


@dataclass(frozen=True)
class StageSettings:
    integration: str
    separator: str
    date_format: str
    phone_region: str
    match_on: str
    run_id: str = ""


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
    if not exists or not meta or meta[0][0] != mapping.fingerprint:
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
    if full:
        _create_member_table(conn, table, mapping)
    if not new:
        _mark_staged(conn, settings, mapping.entity, [], mapping.fingerprint)
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
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE mapped AS
        WITH raw AS (
            SELECT record_id, modified, fetched_at, payload
            FROM read_parquet({_file_list_sql(files)}) {touched}),
        ranked AS (
            SELECT *, {consent} AS consent,
                row_number() OVER (PARTITION BY record_id ORDER BY modified DESC, fetched_at DESC)
                    AS rn,
                coalesce(bool_or({consent}) OVER (PARTITION BY record_id), false)
                    AS ever_consented
            FROM raw)
        SELECT row_number() OVER () AS _row, record_id, modified, consent, ever_consented,
               payload, {cols}
        FROM ranked WHERE rn = 1
        """
    )
    _replace_mapped(conn, table, mapping, settings, result, member=True)
    _mark_staged(conn, settings, mapping.entity, new, mapping.fingerprint)
    return result


def _create_member_table(
    conn: duckdb.DuckDBPyConnection, table: str, mapping: EntityMapping
) -> None:
    cols = ", ".join(f'"{r.target}" VARCHAR' for r in mapping.fields)
    conn.execute(
        f"""CREATE OR REPLACE TABLE {table} (
            record_id VARCHAR PRIMARY KEY, modified TIMESTAMPTZ, consent BOOLEAN,
            ever_consented BOOLEAN, match_key VARCHAR, {cols})"""
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
    if full:
        _create_event_table(conn, table, mapping)
    touched_days = {date.fromisoformat(f.split("/")[-2]) for f in new} | set(days)
    day_files = (
        files if full else landing.day_files(settings.integration, mapping.entity, touched_days)
    )
    result.files_read = len(day_files)
    conn.execute(
        f"DELETE FROM {table} WHERE business_date IN (SELECT unnest(?::DATE[]))",
        [sorted(touched_days)],
    )
    if day_files:
        # The records of the touched days, each at its latest version wherever it landed (a
        # sale re-dated to another day must not come back in its old version).
        result.skipped += _map_events(conn, mapping, settings, files, day_files)
        _replace_mapped(conn, table, mapping, settings, result, member=False)
        conn.execute("DROP TABLE latest_records")
    _mark_staged(conn, settings, mapping.entity, new, mapping.fingerprint)
    return result


def _map_events(
    conn: duckdb.DuckDBPyConnection,
    mapping: EntityMapping,
    settings: StageSettings,
    files: list[str],
    touched_files: list[str],
) -> int:
    """Create the temp table `mapped`, one row per event line; returns how many records had no
    line at all (a journal without lines: counted as skipped, not lost)."""
    line = "line" if mapping.explode else None
    cols = ", ".join(
        f'{rule_sql(r, "payload", line, settings.separator)} AS "{r.target}"'
        for r in mapping.fields
    )
    customer = f"json_extract_string(payload, '$.{mapping.customer_id}')"
    if mapping.explode:
        lines = f"json_extract(payload, '$.{mapping.explode}[*]')"
        exploded = f"""SELECT *, unnest({lines}) AS line,
                              unnest(range(1, len({lines}) + 1)) AS line_no FROM latest_records"""
    else:
        exploded = "SELECT *, NULL::JSON AS line, 1 AS line_no FROM latest_records"
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE latest_records AS
        WITH raw AS (
            SELECT record_id, modified, business_date, fetched_at, payload
            FROM read_parquet({_file_list_sql(files)})
            WHERE record_id IN (
                SELECT record_id FROM read_parquet({_file_list_sql(touched_files)})))
        SELECT * FROM (
            SELECT *, row_number() OVER (
                PARTITION BY record_id ORDER BY modified DESC, fetched_at DESC) AS rn
            FROM raw) WHERE rn = 1
        """
    )
    conn.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE mapped AS
        WITH exploded AS ({exploded})
        SELECT row_number() OVER () AS _row, record_id, line_no, modified, business_date,
               {customer} AS customer_id, {cols}
        FROM exploded
        """
    )
    lineless = 0
    if mapping.explode:
        lineless = conn.execute(
            f"SELECT count(*) FROM latest_records WHERE coalesce(len({lines}), 0) = 0"
        ).fetchall()[0][0]
    return int(lineless)


def _create_event_table(
    conn: duckdb.DuckDBPyConnection, table: str, mapping: EntityMapping
) -> None:
    cols = ", ".join(f'"{r.target}" VARCHAR' for r in mapping.fields)
    conn.execute(
        f"""CREATE OR REPLACE TABLE {table} (
            event_id VARCHAR PRIMARY KEY, record_id VARCHAR, line_no INTEGER,
            customer_id VARCHAR, business_date DATE, modified TIMESTAMPTZ, {cols})"""
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
) -> None:
    """Swap the rows (and stale quarantine reasons) of every record in `mapped` for new ones."""
    conn.execute(f"DELETE FROM {table} WHERE record_id IN (SELECT record_id FROM mapped)")
    conn.execute(
        "DELETE FROM quarantine WHERE integration = ? AND entity = ? "
        "AND record_id IN (SELECT record_id FROM mapped)",
        [settings.integration, mapping.entity],
    )
    _process_chunks(conn, table, mapping, settings, result, member=member)
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
    problems = validation.normalise(frame, mapping, settings.date_format, settings.phone_region)
    if member:
        frame["match_key"] = frame[settings.match_on] if settings.match_on in frame else None
        consent_false = ~_flags(frame["consent"], default=True)
        no_consent = consent_false & ~_flags(frame["ever_consented"], default=False)
        result.skipped += int(no_consent.sum())
        missing_key = frame["match_key"].isna() & (problems == "") & ~no_consent
        problems[missing_key] = f"no {settings.match_on} (the match key)"
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
    gated = validation.gate(frame[checkable & (problems == "")], schema)
    problems.loc[gated.index] = gated
    bad = checkable & (problems != "")
    good = checkable & ~bad if not member else ~bad
    skipped_outside = 0 if member else int((~checkable).sum())  # members keep no-consent rows
    if int(good.sum()) + int(bad.sum()) + skipped_outside != len(frame):
        raise AssertionError(f"{table}: staging would lose rows; refusing to write")  # X4
    _insert(conn, table, frame[good], mapping, member)
    _quarantine(conn, settings, mapping, frame[bad], problems[bad])
    result.staged += int(good.sum())
    result.quarantined += int(bad.sum())
    for reason in problems[bad]:
        key = reason.split(":")[0]
        result.reasons[key] = result.reasons.get(key, 0) + 1


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
        ["record_id", "modified", "consent", "ever_consented", "match_key"]
        if member
        else ["event_id", "record_id", "line_no", "customer_id", "business_date", "modified"]
    )
    conn.register("chunk", frame[keys + fields])
    names = ", ".join(f'"{c}"' for c in keys + fields)
    conn.execute(f"INSERT INTO {table} ({names}) SELECT {names} FROM chunk")
    conn.unregister("chunk")


def _quarantine(
    conn: duckdb.DuckDBPyConnection,
    settings: StageSettings,
    mapping: EntityMapping,
    frame: pd.DataFrame,
    reasons: pd.Series,
) -> None:
    if frame.empty:
        return
    rows = pd.DataFrame(
        {"record_id": frame["record_id"].astype(str), "reason": reasons.astype(str)}
    )
    # Members carry their payload; event lines do not (one copy per line would multiply memory
    # by the lines per sale), so theirs is read from the record it came from.
    if "payload" in frame:
        rows["payload"] = frame["payload"].astype(str)
        source = "SELECT record_id, reason, payload FROM bad_rows"
    else:
        source = """SELECT b.record_id, b.reason, l.payload FROM bad_rows b
                    LEFT JOIN latest_records l USING (record_id)"""
    conn.register("bad_rows", rows)
    conn.execute(
        "INSERT INTO quarantine (integration, entity, stage, record_id, reason, payload, run_id) "
        f"SELECT ?, ?, 'stage', record_id, reason, payload, ? FROM ({source})",
        [settings.integration, mapping.entity, settings.run_id],
    )
    conn.unregister("bad_rows")
