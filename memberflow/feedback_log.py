"""The list's feedback, kept in its warehouse: every unsubscribe, click, bounce and member only on
the list that the target reported, once each, with where it came from and what became of it.

Feedback arrives by several routes: webhooks stored by the receiver (copied here by the run that
handles them), a read of the target (`TargetClient.iter_feedback`, e.g. bounces), a write the
target refused because the member unsubscribed there, a full listing that shows members nobody
sent. The same piece of feedback seen twice has the same `Feedback.key`, so it is one row here
however often it arrives (`seen` counts the sightings); that is what makes a click delivered
three times one click. Feedback belongs to the list (integrations sharing a list share it);
`feedback_decisions` says, per integration, what the core made of it (write-backs planned, or why
not), and `mailed_at` when a bounce was mailed, so nothing is mailed twice.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import duckdb

from memberflow.member_events import table_exists
from memberflow.webhook_store import WebhookStore
from resources.feedback import Feedback

ROUTES = ("webhook", "read", "write", "listing")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feedback (
    key VARCHAR PRIMARY KEY, kind VARCHAR NOT NULL, email VARCHAR, member_id VARCHAR,
    occurred_at TIMESTAMPTZ, detail VARCHAR, member_values VARCHAR, route VARCHAR,
    first_seen_at TIMESTAMPTZ, first_run VARCHAR, seen INTEGER DEFAULT 1,
    mailed_at TIMESTAMPTZ);
CREATE TABLE IF NOT EXISTS feedback_integrations (
    integration VARCHAR PRIMARY KEY, joined_at TIMESTAMPTZ, joined_by VARCHAR);
CREATE TABLE IF NOT EXISTS feedback_decisions (
    integration VARCHAR NOT NULL, key VARCHAR NOT NULL, decided VARCHAR NOT NULL,
    decided_at TIMESTAMPTZ, PRIMARY KEY (integration, key));
"""


def ensure_feedback(conn: duckdb.DuckDBPyConnection) -> None:
    conn.execute(_SCHEMA)


def record(
    conn: duckdb.DuckDBPyConnection, items: Iterable[Feedback], route: str, run_id: str
) -> int:
    """Keep these pieces of feedback; returns how many were new (the others count a sighting)."""
    ensure_feedback(conn)
    now = datetime.now(UTC)
    new = 0
    for item in items:
        key = item.key
        seen = conn.execute("SELECT 1 FROM feedback WHERE key = ?", [key]).fetchall()
        if seen:
            conn.execute("UPDATE feedback SET seen = seen + 1 WHERE key = ?", [key])
            continue
        conn.execute(
            "INSERT INTO feedback (key, kind, email, member_id, occurred_at, detail,"
            " member_values, route, first_seen_at, first_run) VALUES (?,?,?,?,?,?,?,?,?,?)",
            [
                key,
                item.kind,
                (item.email or "").lower() or None,
                item.member_id,
                item.occurred_at,
                _json(item.detail),
                _json(item.values),
                route,
                now,
                run_id,
            ],
        )
        new += 1
    return new


def undecided(conn: duckdb.DuckDBPyConnection, integration: str) -> list[dict[str, Any]]:
    """Feedback the core has not decided about yet for `integration`, oldest first."""
    ensure_feedback(conn)
    rows = conn.execute(
        """SELECT key, kind, email, member_id, occurred_at, detail, member_values
           FROM feedback f WHERE NOT EXISTS (
               SELECT 1 FROM feedback_decisions d WHERE d.key = f.key AND d.integration = ?)
           ORDER BY occurred_at, key""",
        [integration],
    ).fetchall()
    return [
        {
            "key": key,
            "kind": kind,
            "email": email,
            "member_id": member_id,
            "occurred_at": occurred_at,
            "detail": json.loads(detail or "{}"),
            "values": json.loads(values or "{}"),
        }
        for key, kind, email, member_id, occurred_at, detail, values in rows
    ]


BEFORE = "reported before this integration handled the list's feedback"


def join(conn: duckdb.DuckDBPyConnection, integration: str, run_id: str) -> int:
    """The first time `integration` handles the list's feedback, what the list reported in
    earlier runs is decided BEFORE, so an integration that joins a shared list later never
    writes months-old clicks into its source. Returns how many."""
    ensure_feedback(conn)
    joined = conn.execute(
        "SELECT 1 FROM feedback_integrations WHERE integration = ?", [integration]
    ).fetchall()
    if joined:
        return 0
    old = conn.execute(
        "SELECT key FROM feedback WHERE first_run IS DISTINCT FROM ?", [run_id]
    ).fetchall()
    conn.execute("BEGIN TRANSACTION")
    try:
        for (key,) in old:
            decide(conn, integration, key, BEFORE)
        conn.execute(
            "INSERT INTO feedback_integrations VALUES (?, ?, ?)",
            [integration, datetime.now(UTC), run_id],
        )
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return len(old)


def decide(conn: duckdb.DuckDBPyConnection, integration: str, key: str, decision: str) -> None:
    conn.execute(
        "INSERT OR REPLACE INTO feedback_decisions VALUES (?, ?, ?, ?)",
        [integration, key, decision, datetime.now(UTC)],
    )


def unmailed_bounces(conn: duckdb.DuckDBPyConnection) -> list[dict[str, Any]]:
    """Bounces not mailed yet: email, bounce type, when, campaign."""
    ensure_feedback(conn)
    rows = conn.execute(
        """SELECT key, email, occurred_at, detail FROM feedback
           WHERE kind = 'bounced' AND mailed_at IS NULL ORDER BY occurred_at, key"""
    ).fetchall()
    out = []
    for key, email, occurred_at, detail in rows:
        extra = json.loads(detail or "{}")
        out.append(
            {
                "key": key,
                "email": email or "",
                "bounce_type": str(extra.get("bounce_type") or ""),
                "occurred_at": occurred_at.isoformat() if occurred_at else "",
                "campaign_id": str(extra.get("campaign_id") or ""),
            }
        )
    return out


def mark_mailed(conn: duckdb.DuckDBPyConnection, keys: list[str]) -> None:
    now = datetime.now(UTC)
    for key in keys:
        conn.execute("UPDATE feedback SET mailed_at = ? WHERE key = ?", [now, key])


def run_counts(conn: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, int]:
    """New feedback this run, by kind."""
    ensure_feedback(conn)
    rows = conn.execute(
        "SELECT kind, count(*) FROM feedback WHERE first_run = ? GROUP BY kind", [run_id]
    ).fetchall()
    return {kind: int(n) for kind, n in rows}


def _json(value: Any) -> str:
    return json.dumps(dict(value or {}), sort_keys=True, default=str, ensure_ascii=False)


# --- getting feedback in -------------------------------------------------------------------------

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ingest_webhooks(conn: duckdb.DuckDBPyConnection, store: WebhookStore, run_id: str) -> int:
    """Copy the receiver's pending feedback into the warehouse, then mark it consumed (a crash in
    between copies it again: `record` keeps one row per key). Returns the new ones."""
    pending = store.pending()
    if not pending:
        return 0
    new = record(conn, [Feedback.from_payload(e.payload) for e in pending], "webhook", run_id)
    store.mark_consumed(pending[-1].seq, run_id)
    return new


def from_remote_unsubscribes(conn: duckdb.DuckDBPyConnection) -> list[Feedback]:
    """Unsubscribes the target reported while being written or listed (`remote_members`), as
    feedback: the fallback for a webhook that never came. Their time is the unsubscribe's own,
    or the epoch when the target gave none, so the same one always has the same key."""
    if not table_exists(conn, "remote_members"):
        return []
    rows = conn.execute(
        """SELECT match_key, member_id, coalesce(unsubscribed_at, updated_at)
           FROM remote_members WHERE status = 'unsubscribed' AND match_key IS NOT NULL"""
    ).fetchall()
    return [
        Feedback("unsubscribed", key, member_id, _aware(at) if at else EPOCH)
        for key, member_id, at in rows
    ]


def note_unsubscribes(conn: duckdb.DuckDBPyConnection) -> int:
    """Tell delivery about unsubscribes that came as feedback: a `remote_members` row saying so,
    so the member is not written again (and counted as skipped) whatever its source says."""
    ensure_feedback(conn)
    if not table_exists(conn, "remote_members"):
        return 0
    rows = conn.execute(
        """SELECT f.email, max(f.member_id), max(f.occurred_at) FROM feedback f
           WHERE f.kind = 'unsubscribed' AND f.email IS NOT NULL AND f.member_id IS NOT NULL
             AND NOT EXISTS (SELECT 1 FROM remote_members r
                             WHERE r.match_key = f.email AND r.status = 'unsubscribed')
           GROUP BY f.email"""
    ).fetchall()
    for email, member_id, at in rows:
        conn.execute(
            """INSERT OR REPLACE INTO remote_members
                 (member_id, match_key, status, email_status, unsubscribed_at, updated_at,
                  pulled_at)
               VALUES (?, ?, 'unsubscribed', NULL, ?, ?, current_timestamp)""",
            [member_id, email, at, at],
        )
    return len(rows)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
