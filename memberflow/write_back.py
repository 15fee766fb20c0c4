"""Write-back: the list's feedback carried into a two-way source, once, without loops (AF3-AF5).

Each piece of feedback (memberflow/feedback_log.py) is decided once:
- unsubscribed: every live source record of the member is told to stop marking it for the list
  (`unsubscribe`), so the next run withdraws it and it is never sent again;
- clicked: the member's first live source record gets a record of the click (`record_click`);
- only_on_target: a member nobody sent is created at the source (`create`) — unless any source
  record carries its key already (it was withheld, or its flag is off): then nothing is created;
- bounced: nothing is written; bounces are mailed (assets/write_back.py).
With write-back off (the integration's `feedback.write_back`), feedback is decided "write-back
off" and never replayed if it is switched on later.

The write-backs live in the warehouse table `write_backs`, keyed by feedback key and record, and
go through three states: planned -> attempted (committed *before* the call) -> a result. A run
killed between a call and its result leaves "attempted": the next run hands it over with
`resumed=True`, and the source client looks before it writes, so a click is recorded once and an
unsubscribe is never lost. A member created at the source is adopted in `sync_state` with the
target's id, so its record coming back through the next extract updates the member on the list
rather than creating it a second time.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb

from memberflow import feedback_log
from memberflow.delivery import ensure_state
from memberflow.member_events import table_exists
from resources.base import VendorError
from resources.source import SourceClient, WriteBack

BATCH = 20  # write-backs per attempt mark: a crash leaves at most this many to look up
ACTION_OF = {"unsubscribed": "unsubscribe", "clicked": "record_click", "only_on_target": "create"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS write_backs (
    key VARCHAR PRIMARY KEY, integration VARCHAR NOT NULL, feedback_key VARCHAR NOT NULL,
    action VARCHAR NOT NULL,
    record_id VARCHAR, match_key VARCHAR, member_id VARCHAR, wb_values VARCHAR, detail VARCHAR,
    state VARCHAR NOT NULL, attempts INTEGER DEFAULT 0, result_record_id VARCHAR,
    reason VARCHAR, planned_at TIMESTAMPTZ, planned_by VARCHAR, attempted_at TIMESTAMPTZ,
    finished_at TIMESTAMPTZ, finished_by VARCHAR);
"""
OPEN = ("planned", "attempted")


# A click or an unsubscribe whose member has no source record yet (created at the source from
# the list moments ago, not extracted yet) waits this long for it before it is given up.
RECORD_GRACE = timedelta(days=1)


@dataclass(frozen=True)
class WriteBackSetup:
    """What the core needs to know of one two-way integration."""

    integration: str
    enabled: bool  # feedback.write_back (opt-in)
    members_table: str  # the integration's staged member table
    actions: frozenset[str]  # what its source can apply (SourceClient.write_back_actions)
    # target-named values of a member only on the list -> the source's field names
    to_source: Callable[[Mapping[str, Any]], dict[str, Any]]


@dataclass
class WriteBackReport:
    planned: dict[str, int] = field(default_factory=dict)  # by action
    not_written: dict[str, int] = field(default_factory=dict)  # by decision text
    results: dict[str, dict[str, int]] = field(default_factory=dict)  # action -> status -> n
    resumed: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)  # refused or skipped, with why
    waiting: int = 0  # feedback waiting for its member's source record (RECORD_GRACE)
    transient_error: str | None = None

    def count(self, action: str, status: str) -> None:
        by = self.results.setdefault(action, {})
        by[status] = by.get(status, 0) + 1


def ensure_write_backs(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(_SCHEMA)


# --- deciding ------------------------------------------------------------------------------------


def plan(
    conn: duckdb.DuckDBPyConnection, setup: WriteBackSetup, run_id: str, report: WriteBackReport
) -> None:
    """Decide every undecided piece of feedback (module docstring); one transaction each, so a
    crash never leaves feedback decided without its write-backs."""
    ensure_write_backs(conn)
    for item in feedback_log.undecided(conn, setup.integration):
        planned, decision = _write_backs_for(conn, setup, item)
        if decision is None:
            report.waiting += 1
            continue
        conn.execute("BEGIN TRANSACTION")
        try:
            for wb in planned:
                _insert(conn, setup.integration, item, wb, run_id)
            feedback_log.decide(conn, setup.integration, item["key"], decision)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        for wb in planned:
            report.planned[wb["action"]] = report.planned.get(wb["action"], 0) + 1
        if not planned:
            report.not_written[decision] = report.not_written.get(decision, 0) + 1


def _write_backs_for(
    conn: duckdb.DuckDBPyConnection, setup: WriteBackSetup, item: dict[str, Any]
) -> tuple[list[dict[str, Any]], str | None]:
    """The write-backs for one piece of feedback and the decision to record; no decision (None)
    while its member's source record may still be on its way."""
    kind = item["kind"]
    if kind == "bounced":
        return [], "bounce: mailed, not written back"
    if not setup.enabled:
        return [], "write-back off"
    action = ACTION_OF[kind]
    if action not in setup.actions:
        return [], f"the source takes no {action}"
    email = item["email"]
    if action == "create":
        known = _records_with_key(conn, setup.members_table, email, live_only=False)
        if known:
            return [], f"the source has this member already (record {known[0]})"
        values = setup.to_source({**item["values"], "email": email})
        return [{"action": action, "record_id": None, "values": values}], "planned: create"
    records = _records_with_key(conn, setup.members_table, email, live_only=True)
    if not records:
        records = _created_here(conn, setup.integration, email)
    if not records:
        if _age(item["occurred_at"]) < RECORD_GRACE:
            return [], None
        return [], "no live source record has this member"
    if action == "record_click":
        records = records[:1]
    planned = [{"action": action, "record_id": rid, "values": {}} for rid in records]
    return planned, f"planned: {action} on {len(planned)} record(s)"


def _records_with_key(
    conn: duckdb.DuckDBPyConnection, table: str, key: str | None, live_only: bool
) -> list[str]:
    """Source record ids carrying match key `key`, numerically first."""
    if not key or not table_exists(conn, table):
        return []
    live = "AND NOT coalesce(deleted, false)" if live_only else ""
    # records that consent now first: a click belongs on the record the member was sent for
    consenting = "coalesce(consent, true) DESC, " if _has_column(conn, table, "consent") else ""
    rows = conn.execute(
        f"""SELECT record_id FROM {table} WHERE match_key = ? {live}
            ORDER BY {consenting}try_cast(record_id AS HUGEINT) NULLS LAST, record_id""",
        [key],
    ).fetchall()
    return [str(r[0]) for r in rows]


def _has_column(conn: duckdb.DuckDBPyConnection, table: str, column: str) -> bool:
    row = conn.execute(
        """SELECT count(*) FROM information_schema.columns
           WHERE table_name = ? AND column_name = ?""",
        [table, column],
    ).fetchall()[0]
    return bool(row[0])


def _created_here(conn: duckdb.DuckDBPyConnection, integration: str, key: str | None) -> list[str]:
    """The source record a create write-back of this integration made (or found) for `key`."""
    rows = conn.execute(
        """SELECT DISTINCT result_record_id FROM write_backs
           WHERE integration = ? AND action = 'create' AND match_key = ?
             AND state IN ('done', 'already') AND result_record_id IS NOT NULL""",
        [integration, key],
    ).fetchall()
    return sorted(str(r[0]) for r in rows)


def _age(moment: Any) -> timedelta:
    if not isinstance(moment, datetime):
        return timedelta(0)
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return datetime.now(UTC) - aware


def _insert(
    conn: duckdb.DuckDBPyConnection,
    integration: str,
    item: dict[str, Any],
    wb: dict[str, Any],
    run_id: str,
) -> None:
    key = f"{integration}|{item['key']}|{wb['record_id'] or 'new'}"
    detail = {**item["detail"], "occurred_at": _iso(item["occurred_at"])}
    conn.execute(
        """INSERT OR IGNORE INTO write_backs (key, integration, feedback_key, action, record_id,
               match_key, member_id, wb_values, detail, state, planned_at, planned_by)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'planned', ?, ?)""",
        [
            key,
            integration,
            item["key"],
            wb["action"],
            wb["record_id"],
            item["email"],
            item["member_id"],
            json.dumps(wb["values"], default=str, sort_keys=True, ensure_ascii=False),
            json.dumps(detail, default=str, sort_keys=True, ensure_ascii=False),
            datetime.now(UTC),
            run_id,
        ],
    )


# --- applying ------------------------------------------------------------------------------------


def apply(
    conn: duckdb.DuckDBPyConnection,
    client: SourceClient,
    integration: str,
    run_id: str,
    report: WriteBackReport,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Send every open write-back to the source, BATCH at a time: mark them attempted (durably),
    call, record each result as it comes. A transient failure stops here; the rest stay open."""
    ensure_write_backs(conn)
    ensure_state(conn)
    rows = conn.execute(
        f"""SELECT key, action, record_id, match_key, member_id, wb_values, detail, state
            FROM write_backs WHERE state IN {OPEN} AND integration = ?
            ORDER BY planned_at, key""",
        [integration],
    ).fetchall()
    done = 0
    for start in range(0, len(rows), BATCH):
        batch = rows[start : start + BATCH]
        changes = [_write_back(row) for row in batch]
        report.resumed += sum(wb.resumed for wb in changes)
        conn.executemany(
            """UPDATE write_backs SET state = 'attempted', attempts = attempts + 1,
               attempted_at = ? WHERE key = ?""",
            [[datetime.now(UTC), wb.key] for wb in changes],
        )
        members = {row[0]: (row[3], row[4]) for row in batch}
        try:
            for wb, result in client.write_back(changes):
                adopt = wb.action == "create" and result.status in ("done", "already")
                conn.execute("BEGIN TRANSACTION")
                try:
                    _finish(conn, wb, result.status, result.record_id, result.reason, run_id)
                    if adopt:
                        _adopt(conn, *members[wb.key])
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                report.count(wb.action, result.status)
                if result.status in ("refused", "skipped"):
                    report.problems.append(
                        {
                            "action": wb.action,
                            "status": result.status,
                            "record": wb.record_id or "new",
                            "reason": str(result.reason or ""),
                        }
                    )
        except VendorError as exc:
            report.transient_error = exc.summary()
            return
        done += len(batch)
        if progress is not None:
            progress(done, len(rows))


def _write_back(row: tuple[Any, ...]) -> WriteBack:
    key, action, record_id, _match_key, _member_id, values, detail, state = row
    return WriteBack(
        action=action,
        key=key,
        record_id=record_id,
        values=json.loads(values or "{}"),
        detail=json.loads(detail or "{}"),
        resumed=state == "attempted",
    )


def _finish(
    conn: duckdb.DuckDBPyConnection,
    wb: WriteBack,
    status: str,
    record_id: str | None,
    reason: str | None,
    run_id: str,
) -> None:
    conn.execute(
        """UPDATE write_backs SET state = ?, result_record_id = ?, reason = ?,
           finished_at = ?, finished_by = ? WHERE key = ?""",
        [status, record_id, reason, datetime.now(UTC), run_id, wb.key],
    )


def _adopt(conn: duckdb.DuckDBPyConnection, match_key: str | None, member_id: str | None) -> None:
    """A member created at the source from the list is the list's own: acknowledged under its
    id (no fields hash: its first run sends an update, never a create)."""
    if not match_key or not member_id:
        return
    conn.execute(
        """INSERT INTO sync_state (match_key, member_id, fields_hash, action, acked_at, removed)
           VALUES (?, ?, NULL, 'adopt', ?, false) ON CONFLICT DO NOTHING""",
        [match_key, member_id, datetime.now(UTC)],
    )


def open_count(conn: duckdb.DuckDBPyConnection, integration: str) -> int:
    ensure_write_backs(conn)
    sql = f"SELECT count(*) FROM write_backs WHERE state IN {OPEN} AND integration = ?"
    return int(conn.execute(sql, [integration]).fetchall()[0][0])


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=UTC)
        return moment.astimezone(UTC).isoformat()
    return str(value)


# --- values of a member only on the list, under the source's field names --------------------------


def source_values_of(
    columns: list[Any], members: Any
) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """A function turning a listed member's values (target field names, canonical values) into
    the source's field names, by inverting the target mapping (`columns`: model.TargetField)
    and the source's member mapping (`members`: mapping.EntityMapping). Only plain renames are
    inverted (with their value translations); a computed or nested field is left out."""
    by_target = {c.name: c for c in columns if not c.collect}

    def convert(values: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in values.items():
            col = by_target.get(name)
            canonical, value = (col.source, _unmap(col.values, value)) if col else (name, value)
            rule = members.field(canonical)
            if rule is None or rule.path is None or "." in rule.path or value is None:
                continue
            out[rule.path] = _unmap(rule.values, value)
        return out

    return convert


def _unmap(pairs: tuple[tuple[str, str], ...], value: Any) -> Any:
    """The original of a translated value (first match), or the value itself."""
    for original, translated in pairs:
        if translated == value:
            return original
    return value
