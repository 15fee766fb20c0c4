"""Tracking-event delivery: send each event the list has not acknowledged, batch by batch, in the
target's bulk import, and record every batch's outcome.
"""

from __future__ import annotations

import duckdb
import pandas as pd

from memberflow.delivery import DeliverySettings, ensure_state
from resources.base import TargetClient

# --- tracking events --------------------------------------------------------------------------


def deliver_events(
    conn: duckdb.DuckDBPyConnection,
    client: TargetClient,
    settings: DeliverySettings,
    columns: list[str],
) -> dict[str, int]:
    """Send events not sent before, for members on the list, in the target's bulk batches."""
    ensure_state(conn)
    if not settings.tracking_id:
        return {"sent": 0, "refused": 0, "batches": 0, "pending_members": 0}
    match_col = settings.match_on
    key = "e.match_key"
    if match_col == "mobile" and client.mobile_wire_format == "digits":
        key = "ltrim(e.match_key, '+')"
    values = ", ".join(f'coalesce(e."{c}", \'\') AS "{c}"' for c in columns)
    # One bulk call per batch, read batch by batch so memory stays flat; every batch is recorded
    # before the next is read, so the next query no longer sees it.
    query = f"""SELECT e.event_id, e.event_hash, {key} AS "{match_col}", {values}
                FROM tracking_events e
                JOIN sync_state s ON s.match_key = e.match_key AND NOT s.removed
                LEFT JOIN event_sync x ON x.event_id = e.event_id
                WHERE x.event_id IS NULL OR x.event_hash IS DISTINCT FROM e.event_hash
                ORDER BY e.business_date, e.event_id
                LIMIT {int(client.max_events_per_call)}"""
    sent = refused = batches = 0
    while not (batch := conn.execute(query).df()).empty:
        rows = batch.drop(columns=["event_id", "event_hash"]).to_dict("records")
        result = client.send_events(settings.tracking_id, match_col, [match_col, *columns], rows)
        batches += 1
        failed = dict(result.failed)
        status = ["refused" if i in failed else "sent" for i in range(len(rows))]
        reasons = [failed.get(i) for i in range(len(rows))]
        _record_events(conn, batch, status, reasons, settings)
        refused += len(failed)
        sent += len(rows) - len(failed)
    waiting = conn.execute(
        """SELECT count(*) FROM tracking_events e
           LEFT JOIN sync_state s ON s.match_key = e.match_key
           WHERE s.match_key IS NULL"""
    ).fetchall()[0][0]
    return {"sent": sent, "refused": refused, "batches": batches, "pending_members": int(waiting)}


def _record_events(
    conn: duckdb.DuckDBPyConnection,
    batch: pd.DataFrame,
    status: list[str],
    reasons: list[str | None],
    settings: DeliverySettings,
) -> None:
    frame = pd.DataFrame(
        {
            "event_id": batch["event_id"].tolist(),
            "event_hash": batch["event_hash"].tolist(),
            "status": status,
            "reason": reasons,
        }
    )
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
