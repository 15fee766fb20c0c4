"""Feedback routes into the warehouse: the receiver's feedback endpoint over a real socket
(verified, stored before the 200, a forged one refused, never an email in the log line), and a
full listing that notices members added on the list (members only there)."""

from __future__ import annotations

import hmac
import json
from collections.abc import Mapping
from datetime import UTC, datetime

import duckdb
import httpx

from app.receiver import build_app
from memberflow import reconcile
from memberflow.delivery import ensure_state
from memberflow.webhook_store import WebhookStore
from resources.base import RemoteMember
from resources.feedback import Feedback, FeedbackWebhook
from resources.webhooks import WebhookRefused
from tests.asgi import served

TOKEN = "verify-me"


class FakeFeedbackHook(FeedbackWebhook):
    """A verification token in the body, one event per body: {token, event, email, at}."""

    def verify(self, headers: Mapping[str, str], body: bytes, query: object = None) -> None:
        try:
            token = str(json.loads(body).get("token", ""))
        except ValueError:
            token = ""
        if not hmac.compare_digest(token, TOKEN):
            raise WebhookRefused(401, "wrong verification token")

    def parse(self, body: bytes) -> list[Feedback]:
        data = json.loads(body)
        if data["event"] != "unsubscribed":
            return []
        at = datetime.fromisoformat(data["at"])
        return [Feedback("unsubscribed", data["email"], "42", at)]


def test_feedback_is_stored_before_the_200_and_a_forged_one_is_refused(tmp_path, caplog):
    stores: dict[str, WebhookStore] = {}

    def store_for(name: str) -> WebhookStore:
        stores[name] = WebhookStore(tmp_path / f"{name}.feedback.sqlite")
        return stores[name]

    app = build_app({}, feedback={"af": FakeFeedbackHook()}, feedback_store_for=store_for)
    body = {
        "token": TOKEN,
        "event": "unsubscribed",
        "email": "an@kantoor.be",
        "at": "2026-11-30T09:00:00+00:00",
    }
    with served(app) as url, caplog.at_level("INFO", logger="memberflow.receiver"):
        ok = httpx.post(f"{url}/webhooks/af/feedback", json=body)
        again = httpx.post(f"{url}/webhooks/af/feedback", json=body)
        forged = httpx.post(f"{url}/webhooks/af/feedback", json={**body, "token": "guess"})
        other = httpx.post(f"{url}/webhooks/nobody/feedback", json=body)
        ignored = httpx.post(f"{url}/webhooks/af/feedback", json={**body, "event": "opened"})
        health = httpx.get(f"{url}/health").json()
    assert ok.status_code == 200 and ok.json() == {"stored": 1}
    assert again.json() == {"stored": 0}
    assert forged.status_code == 401 and other.status_code == 404
    assert ignored.json() == {"stored": 0}
    pending = stores["af"].pending()
    assert [(e.kind, e.entity) for e in pending] == [("feedback", "unsubscribed")]
    assert Feedback.from_payload(pending[0].payload).email == "an@kantoor.be"
    assert health["feedback"] == ["af"]
    assert "an@kantoor.be" not in caplog.text and TOKEN not in caplog.text


class Listing:
    def __init__(self, members: list[RemoteMember]) -> None:
        self.members = members

    def member_count(self) -> int:
        return len(self.members)

    def iter_members(self, since):
        yield from self.members


def _member(member_id: str, email: str) -> RemoteMember:
    return RemoteMember(member_id, email, None, "active", None, None, None, {"name": "X"})


def test_members_added_on_the_list_are_noticed_by_count_and_listed_once():
    conn = duckdb.connect()
    ensure_state(conn)
    conn.execute("CREATE TABLE members AS SELECT 'b@x.be' AS match_key")
    conn.execute(
        "INSERT INTO sync_state (match_key, member_id, fields_hash, action, acked_at, removed)"
        " VALUES ('a@x.be', '1', 'h', 'create', now(), false)"
    )
    listing = Listing([_member("1", "a@x.be"), _member("2", "B@x.be"), _member("3", "c@x.be")])
    now = datetime(2026, 11, 30, tzinfo=UTC)
    first = reconcile.reconcile(conn, listing, "email", now=now, notice_additions=True)
    assert [f.email for f in first.only_on_list] == ["c@x.be"]  # b is a member of the model
    assert first.only_on_list[0].values == {"name": "X"}
    # the same count an hour later: no listing, nothing new
    later = reconcile.reconcile(
        conn, listing, "email", now=now.replace(hour=1), notice_additions=True
    )
    assert later.full_listing == "" and later.only_on_list == ()
    # one more added on the list: the count is above what the last listing plus our acks expect
    listing.members.append(_member("4", "d@x.be"))
    grown = reconcile.reconcile(
        conn, listing, "email", now=now.replace(hour=2), notice_additions=True
    )
    assert "added there" in grown.full_listing
    assert sorted(f.email for f in grown.only_on_list) == ["c@x.be", "d@x.be"]
    # without notice_additions (a one-way integration), the count above ours reads nothing
    listing.members.append(_member("5", "e@x.be"))
    plain = reconcile.reconcile(conn, listing, "email", now=now.replace(hour=3))
    assert plain.full_listing == "" and plain.only_on_list == ()


def test_members_acknowledged_without_an_id_are_reconciled_by_key():
    """A bulk import answers no ids: such a member lost on the list is still noticed, and one
    still there learns its id from the listing."""
    conn = duckdb.connect()
    ensure_state(conn)
    conn.execute(
        "INSERT INTO sync_state (match_key, member_id, fields_hash, action, acked_at, removed)"
        " VALUES ('a@x.be', NULL, 'h', 'create', now(), false),"
        " ('b@x.be', NULL, 'h', 'create', now(), false)"
    )
    found = reconcile.reconcile(conn, Listing([_member("7", "a@x.be")]), "email")
    assert found.missing == frozenset({"b@x.be"})
    assert conn.execute("SELECT match_key, member_id FROM sync_state").fetchall() == [
        ("a@x.be", "7")
    ]


def test_an_unsubscribed_member_gone_from_the_listing_is_not_called_missing():
    """Some lists hide unsubscribed contacts from their listing: a member last heard of as
    unsubscribed (a webhook, a changed-since read) is forgotten, not counted as lost and not
    created again; a member lost without a word still is."""
    conn = duckdb.connect()
    ensure_state(conn)
    conn.execute(
        "INSERT INTO sync_state (match_key, member_id, fields_hash, action, acked_at, removed)"
        " VALUES ('a@x.be', '1', 'h', 'create', now(), false),"
        " ('b@x.be', '2', 'h', 'create', now(), false),"
        " ('c@x.be', '3', 'h', 'create', now(), false)"
    )
    conn.execute(
        "INSERT INTO remote_members (member_id, match_key, status) VALUES ('2', 'b@x.be', "
        "'unsubscribed')"
    )
    found = reconcile.reconcile(conn, Listing([_member("1", "a@x.be")]), "email")
    assert found.missing == frozenset({"c@x.be"})
    assert found.left_unsubscribed == frozenset({"b@x.be"})
    assert found.metadata()["missing_on_list"] == 1
    assert found.metadata()["unsubscribed_not_listed"] == 1
    assert conn.execute("SELECT match_key FROM sync_state").fetchall() == [("a@x.be",)]
    assert conn.execute("SELECT status FROM remote_members WHERE member_id = '2'").fetchall() == [
        ("unsubscribed",)
    ]
