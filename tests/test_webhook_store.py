"""The webhook store: durable across reopen, replays refused, pending and consumed by seq."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from memberflow.webhook_store import WebhookStore
from resources.webhooks import WebhookEvent

AT = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _sha(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def _event(record_id: str, kind: str = "update") -> WebhookEvent:
    return WebhookEvent(kind=kind, entity="passes", record_id=record_id, payload={"id": record_id})


def test_events_survive_reopening_the_file(tmp_path):
    path = tmp_path / "hooks" / "demo.sqlite"
    assert WebhookStore(path).add(_sha(b"a"), [_event("1"), _event("2", "create")], AT) == 2
    reopened = WebhookStore(path)
    pending = reopened.pending()
    assert [(e.seq, e.kind, e.record_id) for e in pending] == [
        (1, "update", "1"),
        (2, "create", "2"),
    ]
    assert pending[0].payload == {"id": "1"} and pending[0].received_at == AT
    assert reopened.last_seq() == 2


def test_a_replayed_body_is_refused_and_stores_nothing(tmp_path):
    store = WebhookStore(tmp_path / "demo.sqlite")
    assert store.add(_sha(b"body"), [_event("1")], AT) == 1
    assert store.add(_sha(b"body"), [_event("1"), _event("9")], AT) is None
    assert [e.record_id for e in store.pending()] == ["1"]
    assert store.last_seq() == 1


def test_pending_stops_at_through_and_consumed_events_leave_it(tmp_path):
    store = WebhookStore(tmp_path / "demo.sqlite")
    store.add(_sha(b"1"), [_event("1"), _event("2")], AT)
    store.add(_sha(b"2"), [_event("3", "delete")], AT)
    assert [e.seq for e in store.pending(through=2)] == [1, 2]
    store.mark_consumed(2, "run-a")
    assert [e.seq for e in store.pending()] == [3]
    assert store.last_pending_seq() == 3
    store.mark_consumed(3, "run-b")
    assert store.pending() == [] and store.last_pending_seq() is None
    assert store.last_seq() == 3


def test_marking_again_keeps_the_first_run_that_consumed(tmp_path):
    import sqlite3

    store = WebhookStore(tmp_path / "demo.sqlite")
    store.add(_sha(b"1"), [_event("1")], AT)
    store.mark_consumed(1, "run-a")
    store.mark_consumed(1, "run-b")
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("SELECT consumed_by FROM events").fetchall() == [("run-a",)]


def test_the_file_is_in_wal_mode_under_the_data_dir(tmp_path, monkeypatch):
    import sqlite3

    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    store = WebhookStore.for_integration("demo_teyca")
    assert store.path == tmp_path / "data" / "webhooks" / "demo_teyca.sqlite"
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert store.last_seq() == 0 and store.pending() == []
