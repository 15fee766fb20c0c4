"""Webhook events, kept durably between the receiver that accepts them and the run that reads
them again.

The receiver answers 2xx only after `add` has committed, so a vendor that got its 2xx never
loses an event to a crash: SQLite in WAL mode with `synchronous=FULL` (the commit is on disk
when `add` returns). A body seen before (same sha256) is a replay: nothing is stored and `add`
returns None, so the receiver can refuse it. Every event gets a sequence number; the run that
re-read the records of events up to some seq marks them consumed with its run id, so a sensor
knows what is pending and a crashed run's events stay pending until a run finishes them.

One file per integration, `<data dir>/webhooks/<integration>.sqlite`; the receiver, the sensor
and the runs are separate processes and share it through SQLite's locking.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from memberflow import landing
from resources.feedback import Feedback, FeedbackWebhook
from resources.webhooks import WebhookCapability, WebhookEvent

if TYPE_CHECKING:
    from memberflow.config import Integration

_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    id INTEGER PRIMARY KEY,
    body_sha256 TEXT NOT NULL UNIQUE,
    received_at TEXT NOT NULL,
    events INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery INTEGER NOT NULL REFERENCES deliveries(id),
    kind TEXT NOT NULL,
    entity TEXT NOT NULL,
    record_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    received_at TEXT NOT NULL,
    consumed_by TEXT,
    consumed_at TEXT
);
CREATE INDEX IF NOT EXISTS events_pending ON events(seq) WHERE consumed_by IS NULL;
"""


@dataclass(frozen=True)
class StoredEvent:
    """One accepted event with its place in the store's order."""

    seq: int
    kind: str  # create | update | delete
    entity: str
    record_id: str
    payload: dict[str, Any]
    received_at: datetime


class WebhookStore:
    """The accepted webhook events of one integration."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # persistent: set once per file
            conn.executescript(_SCHEMA)

    @classmethod
    def for_integration(cls, name: str) -> WebhookStore:
        return cls(landing.data_dir() / "webhooks" / f"{name}.sqlite")

    @classmethod
    def for_feedback(cls, name: str) -> WebhookStore:
        """The store of a target's feedback webhooks for integration `name` (kind "feedback")."""
        return cls(landing.data_dir() / "webhooks" / f"{name}.feedback.sqlite")

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # autocommit mode: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            yield conn
        finally:
            conn.close()

    def add(
        self, body_sha256: str, events: Sequence[WebhookEvent], received_at: datetime
    ) -> int | None:
        """Store one delivery's events, committed before returning; the number stored, or None
        when a body with this sha256 was stored before (a replay: nothing is stored)."""
        at = _iso(received_at)
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cursor = conn.execute(
                    "INSERT INTO deliveries (body_sha256, received_at, events) VALUES (?, ?, ?)",
                    (body_sha256, at, len(events)),
                )
            except sqlite3.IntegrityError:
                conn.execute("ROLLBACK")
                return None
            try:
                conn.executemany(
                    "INSERT INTO events (delivery, kind, entity, record_id, payload, received_at)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    [(cursor.lastrowid, *_row(event), at) for event in events],
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return len(events)

    def pending(self, through: int | None = None) -> list[StoredEvent]:
        """Events no run has consumed yet, in seq order; only those with seq <= `through`."""
        sql = (
            "SELECT seq, kind, entity, record_id, payload, received_at FROM events"
            " WHERE consumed_by IS NULL AND seq <= ? ORDER BY seq"
        )
        limit = through if through is not None else 2**62
        with self._connect() as conn:
            rows = conn.execute(sql, (limit,)).fetchall()
        return [
            StoredEvent(
                seq=seq,
                kind=kind,
                entity=entity,
                record_id=record_id,
                payload=json.loads(payload),
                received_at=datetime.fromisoformat(received),
            )
            for seq, kind, entity, record_id, payload, received in rows
        ]

    def last_seq(self) -> int:
        """The newest event's seq (consumed or not); 0 when the store has none."""
        with self._connect() as conn:
            (seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()
        return int(seq)

    def last_pending_seq(self) -> int | None:
        """The newest event no run has consumed; None when nothing is pending."""
        with self._connect() as conn:
            (seq,) = conn.execute(
                "SELECT MAX(seq) FROM events WHERE consumed_by IS NULL"
            ).fetchone()
        return None if seq is None else int(seq)

    def mark_consumed(
        self, through: int, run_id: str, entities: Collection[str] | None = None
    ) -> None:
        """Record that run `run_id` handled every pending event with seq <= `through` (of
        `entities` only, when given: each extract step consumes its own entity's events)."""
        sql = (
            "UPDATE events SET consumed_by = ?, consumed_at = ?"
            " WHERE seq <= ? AND consumed_by IS NULL"
        )
        args: list[Any] = [run_id, _iso(datetime.now(UTC)), through]
        if entities is not None:
            names = sorted(entities)
            if not names:
                return
            sql += f" AND entity IN ({', '.join('?' * len(names))})"
            args += names
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(sql, args)
            conn.execute("COMMIT")


def webhook_capability(integration: Integration) -> WebhookCapability | None:
    """The integration's source webhook capability; None when webhooks are off or the source
    kind has none. Other errors (a secret's env var missing) propagate: the caller decides."""
    offer = getattr(integration.source, "webhook", None)
    if offer is None:
        return None
    try:
        return offer()
    except NotImplementedError:
        return None


def feedback_webhook(integration: Integration) -> FeedbackWebhook | None:
    """The integration's target feedback webhook; None when its target pushes none or they are
    off. Other errors (a token's env var missing) propagate."""
    offer = getattr(integration.target, "feedback_webhook", None)
    return None if offer is None else offer()


def feedback_events(items: Sequence[Feedback]) -> list[WebhookEvent]:
    """Feedback as storable events (kind "feedback")."""
    return [
        WebhookEvent(kind="feedback", entity=f.kind, record_id=f.key, payload=f.to_payload())
        for f in items
    ]


def _row(event: WebhookEvent) -> tuple[str, str, str, str]:
    payload = json.dumps(dict(event.payload), default=str, ensure_ascii=False, sort_keys=True)
    return event.kind, event.entity, str(event.record_id), payload


def _iso(moment: datetime) -> str:
    """Aware UTC ISO text; a naive moment is taken as UTC."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat()
