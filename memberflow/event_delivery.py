"""Tracking-event delivery: send each event the list has not acknowledged, batch by batch, in the
target's bulk import, without ever sending an event twice because an answer was lost.

The bulk import is not idempotent (an activity feed is append-only), so every batch is booked in
`event_batches` / `event_batch_items` of the list's warehouse *before* it is sent, in a committed
write, and its outcome after:

    in_flight --clear answer--> done (rows in event_sync as sent or refused)
              --nothing stored (refusal of the file, retries spent)--> failed (sent again later)
              --answer lost or unreadable (UncertainOutcome)--> uncertain
    in_flight found at the start of a run (the last run died between send and bookkeeping)
              --> uncertain
    uncertain --target says which events it holds (events_present)--> resolved
              --target cannot tell, user asked to resend (resend_uncertain)--> released

Events of an uncertain batch are held: not sent again until the target resolves them or a user
releases them after checking the list's feed. A run stops sending at its first uncertain batch,
so the worst case of a run is one batch (`client.events_per_batch` rows) left uncertain.

Which events to look at: after a run that sent everything pending, the next run looks only at
the events tracking_events rebuilt since (its log, memberflow/model.py) and those of members
acknowledged since that run began; every other event was settled then and has not changed. A
run that stopped early, released or resolved batches, or follows a full rebuild of
tracking_events looks at every event.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import duckdb
import pandas as pd

from memberflow import progress
from memberflow.delivery import DeliverySettings, ensure_state, list_state, set_list_state
from memberflow.model import TRACKING_CHANGES
from resources.base import EventImportResult, UncertainOutcome, VendorError
from resources.target import TargetClient

HELD_SAMPLE = 10
HELD = ("in_flight", "uncertain")  # batch statuses whose events are not sent again
# list_state keys: the last run that sent everything pending (the tracking log's mark it read,
# when it began), and whether the last run did
SETTLED_MARK, SETTLED_SINCE = "events_settled_mark", "events_settled_since"
SETTLED = "events_settled"


@dataclass
class EventReport:
    """What one run did with events (`*_this_run`) and where the list stands now (totals)."""

    sent: int = 0
    refused: int = 0
    uncertain: int = 0  # events whose batch became uncertain in this run (incl. a crashed run's)
    resolved_present: int = 0  # uncertain events the target confirmed it holds
    released: int = 0  # uncertain events made sendable again (target says absent, or a user)
    batches: int = 0
    pending_members: int = 0
    held: int = 0  # events held in uncertain batches now, all runs
    held_sample: list[str] = field(default_factory=list)
    acknowledged: int = 0  # events the list acknowledged, all runs (event_sync 'sent')
    looked_at: str = "nothing"  # which events this run considered (see the module docstring)
    warnings: list[str] = field(default_factory=list)

    def metadata(self) -> dict[str, Any]:
        return {
            "sent_this_run": self.sent,
            "refused_this_run": self.refused,
            "uncertain_this_run": self.uncertain,
            "resolved_present_this_run": self.resolved_present,
            "released_for_resend_this_run": self.released,
            "batches_this_run": self.batches,
            "held_uncertain": self.held,
            "held_uncertain_sample": ", ".join(self.held_sample),
            "pending_members": self.pending_members,
            "acknowledged_total": self.acknowledged,
            "looked_at": self.looked_at,
        }


def ensure_event_state(conn: duckdb.DuckDBPyConnection) -> None:
    ensure_state(conn)
    conn.execute(
        """
        CREATE TABLE IF NOT EXISTS event_batches (
            batch_id VARCHAR PRIMARY KEY, run_id VARCHAR, status VARCHAR,
            started_at TIMESTAMPTZ, finished_at TIMESTAMPTZ, events INTEGER, detail VARCHAR);
        CREATE TABLE IF NOT EXISTS event_batch_items (
            batch_id VARCHAR, event_id VARCHAR, event_hash VARCHAR,
            PRIMARY KEY (batch_id, event_id));
        """
    )


def deliver_events(
    conn: duckdb.DuckDBPyConnection,
    client: TargetClient,
    settings: DeliverySettings,
    columns: list[str],
    *,
    resend_uncertain: bool = False,
) -> EventReport:
    """Send events not sent before, for members on the list, in small booked batches.

    Only when the integration tracks events and the target has an activity feed."""
    ensure_event_state(conn)
    report = EventReport()
    if settings.track_events and client.capabilities.activity_feed:
        started, mark = datetime.now(UTC), _tracking_mark(conn)
        abandoned = _abandon_in_flight(conn, settings.run_id)
        report.uncertain += sum(abandoned.values())
        _resolve_uncertain(
            conn, client, settings, columns, resend_uncertain, report, set(abandoned)
        )
        scope = None if abandoned or report.released else _pending_scope(conn)
        set_list_state(conn, SETTLED, "false")  # until this run has sent everything pending
        report.looked_at = "every event" if scope is None else "events changed since the last run"
        if _send_pending(conn, client, settings, columns, report, scope):
            set_list_state(conn, SETTLED_MARK, str(mark))
            set_list_state(conn, SETTLED_SINCE, started.isoformat())
            set_list_state(conn, SETTLED, "true")
            if _has_table(conn, TRACKING_CHANGES):
                conn.execute(f"DELETE FROM {TRACKING_CHANGES} WHERE seq <= ?", [mark])
    elif _has_table(conn, TRACKING_CHANGES):
        conn.execute(f"DELETE FROM {TRACKING_CHANGES}")  # nothing sent: the log is not needed
        set_list_state(conn, SETTLED, "false")
    _totals(conn, report)
    if report.held:
        report.warnings.append(
            f"{report.held} event(s) are held because the list's answer to their import was "
            f"lost (e.g. {', '.join(report.held_sample[:3])}); the list may or may not have "
            "them. Check the list's activity feed, then run events_delivered with "
            "resend_uncertain: true to send them again."
        )
    return report


# --- uncertain batches ------------------------------------------------------------------------


def _abandon_in_flight(conn: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, int]:
    """Batches still in flight belong to a run that died between send and bookkeeping: they
    become uncertain now; returns their ids and sizes."""
    found = dict(
        conn.execute(
            "SELECT batch_id, events FROM event_batches WHERE status = 'in_flight'"
        ).fetchall()
    )
    conn.execute(
        """UPDATE event_batches SET status = 'uncertain', finished_at = current_timestamp,
                  detail = 'found in flight by run ' || ? || ': the run that sent it stopped '
                           || 'before recording the answer'
           WHERE status = 'in_flight'""",
        [run_id],
    )
    return {batch: int(events or 0) for batch, events in found.items()}


def _resolve_uncertain(
    conn: duckdb.DuckDBPyConnection,
    client: TargetClient,
    settings: DeliverySettings,
    columns: list[str],
    resend: bool,
    report: EventReport,
    found_this_run: set[str],
) -> None:
    """Ask the target about each uncertain batch; without an answer, release only on request.

    `resend_uncertain` releases only batches that were uncertain before this run began, i.e.
    the ones a user could have checked; a batch this run found in flight waits for the next
    check (releasing it too would resend what a crashed run may have delivered)."""
    batches = conn.execute(
        "SELECT batch_id FROM event_batches WHERE status = 'uncertain' ORDER BY started_at"
    ).fetchall()
    for (batch_id,) in batches:
        frame = _select_rows(conn, settings, columns, batch_id)
        rows = _wire_rows(frame)
        events = dict(zip(frame["event_id"].tolist(), rows, strict=True))
        present = client.events_present(settings.match_on, events)
        if present is None and (not resend or batch_id in found_this_run):
            continue
        present = present or set()
        acked = frame[frame["event_id"].isin(present)]
        status = "resolved" if not resend else "released"
        detail = (
            f"{len(acked)} of {len(frame)} confirmed on the list by run {settings.run_id}"
            if not resend
            else f"released for resend by run {settings.run_id} (resend_uncertain)"
        )
        with _transaction(conn):
            _record_events(conn, acked, ["sent"] * len(acked), [None] * len(acked), settings)
            _set_batch(conn, batch_id, status, detail)
        report.resolved_present += len(acked)
        report.released += len(frame) - len(acked)


# --- which events to look at -------------------------------------------------------------------


def _tracking_mark(conn: duckdb.DuckDBPyConnection) -> int:
    if not _has_table(conn, TRACKING_CHANGES):
        return 0
    return int(conn.execute(f"SELECT coalesce(max(seq), 0) FROM {TRACKING_CHANGES}").fetchone()[0])


def _pending_scope(conn: duckdb.DuckDBPyConnection) -> str | None:
    """A temp table of event ids that holds every event to send now (see the module docstring);
    None: look at every event."""
    mark, since = list_state(conn, SETTLED_MARK), list_state(conn, SETTLED_SINCE)
    if list_state(conn, SETTLED) != "true" or mark is None or since is None:
        return None
    if not _has_table(conn, TRACKING_CHANGES):
        return None
    (everything,) = conn.execute(
        f"SELECT bool_or(everything) FROM {TRACKING_CHANGES} WHERE seq > ?", [int(mark)]
    ).fetchone()
    if everything:
        return None
    conn.execute(
        f"""CREATE OR REPLACE TEMP TABLE scope_days AS
                SELECT DISTINCT integration, entity, business_date FROM {TRACKING_CHANGES}
                WHERE seq > {int(mark)} AND business_date IS NOT NULL"""
    )
    conn.execute(
        f"""CREATE OR REPLACE TEMP TABLE scope_keys AS
                SELECT match_key FROM {TRACKING_CHANGES}
                WHERE seq > {int(mark)} AND match_key IS NOT NULL
                UNION SELECT match_key FROM sync_state WHERE acked_at >= ?::TIMESTAMPTZ""",
        [since],
    )
    # the candidates' ids first, so both sides of the pending join can be cut to them
    conn.execute(
        """CREATE OR REPLACE TEMP TABLE scope_events AS
               SELECT e.event_id FROM tracking_events e
               JOIN scope_days d USING (integration, entity, business_date)
               UNION
               SELECT e.event_id FROM tracking_events e
               WHERE e.match_key IN (SELECT match_key FROM scope_keys)"""
    )
    return "scope_events"


# --- sending ----------------------------------------------------------------------------------


def _send_pending(
    conn: duckdb.DuckDBPyConnection,
    client: TargetClient,
    settings: DeliverySettings,
    columns: list[str],
    report: EventReport,
    scope: str | None = None,
) -> bool:
    """Send what is pending (within `scope`, see _pending_scope); True when all of it went."""
    size = max(1, min(int(client.events_per_batch), int(client.max_events_per_call)))
    _select_pending(conn, settings, columns, scope)
    match_col = settings.match_on
    done = 0
    while not (batch := _next_batch(conn, done, size)).empty:
        done += len(batch)
        rows = _wire_rows(batch)
        batch_id = _book_batch(conn, batch, settings.run_id)
        report.batches += 1
        try:
            result = client.send_events(match_col, [match_col, *columns], rows)
        except UncertainOutcome as exc:
            _finish_uncertain(conn, batch_id, str(exc), len(batch), report)
            return False  # stop gambling: the rest stays pending, certainly unsent, for next run
        except (VendorError, ValueError) as exc:
            _set_batch(conn, batch_id, "failed", f"nothing stored: {exc}")
            raise
        # Any other exception (or a kill) leaves the batch in flight: uncertain on the next run.
        if not _adds_up(result, len(rows)):
            detail = f"the list's counts do not add up for {len(rows)} rows: {result}"
            _finish_uncertain(conn, batch_id, detail[:500], len(batch), report)
            return False
        failed = dict(result.failed)
        status = ["refused" if i in failed else "sent" for i in range(len(rows))]
        reasons = [failed.get(i) for i in range(len(rows))]
        with _transaction(conn):
            _record_events(conn, batch, status, reasons, settings)
            _set_batch(
                conn, batch_id, "done", f"{len(rows) - len(failed)} sent, {len(failed)} refused"
            )
        report.refused += len(failed)
        report.sent += len(rows) - len(failed)
        progress.note(events=len(rows) - len(failed))
    return True


def sent_by_integration(conn: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, int]:
    """Events the list acknowledged in this run's batches, per integration they came from (the
    `sent_this_run` figure, split for a list fed by several)."""
    if not _has_table(conn, "tracking_events"):
        return {}
    rows = conn.execute(
        """SELECT t.integration, count(DISTINCT i.event_id)
           FROM event_batches b
           JOIN event_batch_items i USING (batch_id)
           JOIN event_sync x ON x.event_id = i.event_id AND x.status = 'sent'
           JOIN tracking_events t ON t.event_id = i.event_id
           WHERE b.run_id = ? AND b.status = 'done'
           GROUP BY 1""",
        [run_id],
    ).fetchall()
    return {str(integration): int(n) for integration, n in rows}


def _adds_up(result: EventImportResult, rows: int) -> bool:
    """A clear answer accounts for every row exactly once: imported + refused = sent."""
    indices = [i for i, _ in result.failed]
    return (
        result.imported + len(result.failed) == rows
        and len(set(indices)) == len(indices)
        and all(0 <= i < rows for i in indices)
    )


def _finish_uncertain(
    conn: duckdb.DuckDBPyConnection, batch_id: str, detail: str, events: int, report: EventReport
) -> None:
    _set_batch(conn, batch_id, "uncertain", detail)
    report.uncertain += events


def _select_pending(
    conn: duckdb.DuckDBPyConnection,
    settings: DeliverySettings,
    columns: list[str],
    scope: str | None = None,
) -> None:
    """Every event to send now (of those in the table `scope`, see _pending_scope), numbered,
    into a temp table read batch by batch (flat memory)."""
    match_col = settings.match_on
    key = "e.match_key"  # canonical: the client writes it in its wire format
    values = ", ".join(f'coalesce(e."{c}", \'\') AS "{c}"' for c in columns)
    held = ", ".join(f"'{s}'" for s in HELD)
    events, sent = "tracking_events", "event_sync"
    if scope is not None:  # both sides cut to the candidates before they are joined
        events = f"(SELECT * FROM tracking_events WHERE event_id IN (SELECT event_id FROM {scope}))"
        sent = f"(SELECT * FROM event_sync WHERE event_id IN (SELECT event_id FROM {scope}))"
    conn.execute(
        f"""CREATE OR REPLACE TEMP TABLE pending_events AS
            SELECT row_number() OVER (ORDER BY e.business_date, e.event_id) AS n,
                   e.event_id, e.event_hash, {key} AS "{match_col}", {values}
            FROM {events} e
            JOIN sync_state s ON s.match_key = e.match_key AND NOT s.removed
            LEFT JOIN {sent} x ON x.event_id = e.event_id
            WHERE (x.event_id IS NULL OR x.event_hash IS DISTINCT FROM e.event_hash)
              AND NOT EXISTS (
                  SELECT 1 FROM event_batch_items i JOIN event_batches b USING (batch_id)
                  WHERE b.status IN ({held}) AND i.event_id = e.event_id
                    AND i.event_hash IS NOT DISTINCT FROM e.event_hash)
            ORDER BY n"""  # each batch reads its range of n
    )


def _next_batch(conn: duckdb.DuckDBPyConnection, done: int, size: int) -> pd.DataFrame:
    """Rows done+1 .. done+size of `pending_events` (numbered 1..N without gaps). A range, not
    `n > done ... LIMIT size`: that sorts every row still pending for each batch, so a run's
    cost grew with the square of its events (6 M events at a million customers)."""
    return conn.execute(
        "SELECT * EXCLUDE (n) FROM pending_events WHERE n > ? AND n <= ? ORDER BY n",
        [done, done + size],
    ).df()


def _select_rows(
    conn: duckdb.DuckDBPyConnection,
    settings: DeliverySettings,
    columns: list[str],
    batch: str,
) -> pd.DataFrame:
    """The rows of one booked batch as they would be sent now (for the target to look up)."""
    values = ", ".join(f'coalesce(e."{c}", \'\') AS "{c}"' for c in columns)
    return conn.execute(
        f"""SELECT i.event_id, i.event_hash, e.match_key AS "{settings.match_on}", {values}
            FROM event_batch_items i JOIN tracking_events e ON e.event_id = i.event_id
            WHERE i.batch_id = ? ORDER BY i.event_id""",
        [batch],
    ).df()


def _wire_rows(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return frame.drop(columns=["event_id", "event_hash"]).to_dict("records")


# --- bookkeeping ------------------------------------------------------------------------------


class _transaction:
    """One committed write: all of it or none of it reaches the warehouse."""

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.begin()

    def __exit__(self, kind: Any, *_: Any) -> None:
        if kind is None:
            self.conn.commit()
        else:
            self.conn.rollback()


def _book_batch(conn: duckdb.DuckDBPyConnection, batch: pd.DataFrame, run_id: str) -> str:
    """Record the batch as in flight, committed, before anything is sent."""
    batch_id = uuid.uuid4().hex
    items = pd.DataFrame(
        {
            "batch_id": batch_id,
            "event_id": batch["event_id"].tolist(),
            "event_hash": batch["event_hash"].tolist(),
        }
    )
    with _transaction(conn):
        conn.execute(
            """INSERT INTO event_batches VALUES
               (?, ?, 'in_flight', current_timestamp, NULL, ?, NULL)""",
            [batch_id, run_id, len(batch)],
        )
        conn.register("batch_items", items)
        conn.execute("INSERT INTO event_batch_items SELECT * FROM batch_items")
        conn.unregister("batch_items")
    return batch_id


def _set_batch(conn: duckdb.DuckDBPyConnection, batch_id: str, status: str, detail: str) -> None:
    conn.execute(
        """UPDATE event_batches SET status = ?, detail = ?, finished_at = current_timestamp
           WHERE batch_id = ?""",
        [status, detail, batch_id],
    )


def _record_events(
    conn: duckdb.DuckDBPyConnection,
    batch: pd.DataFrame,
    status: list[str],
    reasons: list[str | None],
    settings: DeliverySettings,
) -> None:
    if batch.empty:
        return
    frame = pd.DataFrame(
        {
            "event_id": batch["event_id"].tolist(),
            "event_hash": batch["event_hash"].tolist(),
            "status": status,
            "reason": reasons,
        }
    ).astype({"reason": object})
    conn.register("sent_events", frame)
    conn.execute(
        """INSERT OR REPLACE INTO event_sync
           SELECT event_id, status, reason, current_timestamp, event_hash FROM sent_events"""
    )
    conn.execute(
        """INSERT INTO quarantine (integration, entity, stage, record_id, reason, run_id)
           SELECT 'list', 'events', 'deliver', event_id, reason, ? FROM sent_events
           WHERE status = 'refused'""",
        [settings.run_id],
    )
    conn.unregister("sent_events")


def _totals(conn: duckdb.DuckDBPyConnection, report: EventReport) -> None:
    held = ", ".join(f"'{s}'" for s in HELD)
    report.held = conn.execute(
        f"""SELECT count(*) FROM event_batch_items i JOIN event_batches b USING (batch_id)
            WHERE b.status IN ({held})"""
    ).fetchall()[0][0]
    report.held_sample = [
        row[0]
        for row in conn.execute(
            f"""SELECT i.event_id FROM event_batch_items i JOIN event_batches b USING (batch_id)
                WHERE b.status IN ({held}) ORDER BY b.started_at, i.event_id LIMIT ?""",
            [HELD_SAMPLE],
        ).fetchall()
    ]
    report.acknowledged = conn.execute(
        "SELECT count(*) FROM event_sync WHERE status = 'sent'"
    ).fetchall()[0][0]
    if _has_table(conn, "tracking_events"):
        report.pending_members = conn.execute(
            """SELECT count(*) FROM tracking_events e
               LEFT JOIN sync_state s ON s.match_key = e.match_key
               WHERE s.match_key IS NULL"""
        ).fetchall()[0][0]


def _has_table(conn: duckdb.DuckDBPyConnection, name: str) -> bool:
    return bool(
        conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [name]
        ).fetchall()[0][0]
    )
