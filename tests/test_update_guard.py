"""The read before each update, batched (issue 10, 1%-changed run): the members of a chunk of
updates are read in one call right before their upserts, so an update-only run costs about one
call per member, not two, and still never reactivates an unsubscribed member. Real HTTP to the
Heyloyalty emulator (uvicorn), except the last test, whose list answers against HL-A14."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import httpx
import pytest

from resources.base import UpsertFlags
from resources.heyloyalty import HeyloyaltyClient
from resources.target import MemberChange, WritePolicy
from sandbox.server import SandboxServer
from tests.list_state import heyloyalty_client

LIST = 4711
POLICY = WritePolicy(
    match_on="email",
    import_type="create_and_update",
    reimport_unsubscribed=False,
    flags=UpsertFlags(),
)


@pytest.fixture
def sandbox():
    with SandboxServer(seed=6, customers=10, rate_limits=False) as server:
        yield server


def make_client(sandbox: SandboxServer) -> HeyloyaltyClient:
    return heyloyalty_client(sandbox, LIST)


def updates(emails: list[str], city: str = "Svendborg") -> list[MemberChange]:
    return [
        MemberChange(e, "update", {"email": e, "city": city}, modified=datetime.now(UTC))
        for e in emails
    ]


def test_updates_cost_one_read_per_chunk_and_skip_the_unsubscribed(sandbox):
    hl = sandbox.heyloyalty
    emails = [f"u{i:03d}@guard.dk" for i in range(120)]
    for email in emails:
        hl.add_member(LIST, {"email": email, "city": "Odense"})
    left = [emails[3], emails[77], emails[119]]  # in three chunks (a chunk: one wave of 8)
    for email in left:
        hl.unsubscribe(LIST, email=email)
    client = make_client(sandbox)
    client.target_fields()
    before = client.calls.by_endpoint()

    acks = {a.match_key: a for a in client.write_members(updates(emails), POLICY)}

    spent = {k: v - before.get(k, 0) for k, v in client.calls.by_endpoint().items()}
    spent = {k: v for k, v in spent.items() if v}
    assert spent == {"members": 15, "members/upsert": 117}  # was 120 reads + 117 upserts
    assert client.run_figures() == {"guard_reads": 15, "guard_lookups": 0}
    assert all(a.checked for a in acks.values())  # every member read right before its write
    assert {k for k, a in acks.items() if a.outcome == "unsubscribed"} == set(left)
    assert sum(a.outcome == "updated" for a in acks.values()) == 117
    for email in left:
        member = hl.member_by_email(LIST, email)
        assert member["status"] == "unsubscribed" and member["fields"]["city"] == "Odense"
    assert hl.member_by_email(LIST, emails[0])["fields"]["city"] == "Svendborg"


def test_an_unsubscribe_after_one_chunk_was_read_is_caught_by_the_next_chunks_read(sandbox):
    """The window is one chunk: a member of a later chunk who unsubscribes while an earlier
    chunk is being sent is read (unsubscribed) before its own upsert and left alone."""
    hl = sandbox.heyloyalty
    emails = [f"w{i:03d}@guard.dk" for i in range(60)]
    for email in emails:
        hl.add_member(LIST, {"email": email, "city": "Odense"})
    client = make_client(sandbox)
    upsert = client.upsert_member
    fired: list[bool] = []

    def upsert_member(*args, **kwargs):
        if not fired:
            fired.append(True)
            hl.unsubscribe(LIST, email=emails[55])  # in a later chunk (48..55)
        return upsert(*args, **kwargs)

    client.upsert_member = upsert_member  # type: ignore[method-assign]
    acks = {a.match_key: a for a in client.write_members(updates(emails), POLICY)}

    assert acks[emails[55]].outcome == "unsubscribed"
    assert hl.member_by_email(LIST, emails[55])["status"] == "unsubscribed"
    assert hl.member_by_email(LIST, emails[55])["fields"]["city"] == "Odense"
    assert sum(a.outcome == "updated" for a in acks.values()) == 59


def test_a_member_the_chunk_read_did_not_show_is_looked_up_alone(sandbox):
    """Under update_only a member gone from the list is skipped, judged by its own lookup."""
    hl = sandbox.heyloyalty
    hl.add_member(LIST, {"email": "here@guard.dk"})
    client = make_client(sandbox)
    policy = WritePolicy("email", "update_only", False, UpsertFlags())
    acks = {
        a.match_key: a
        for a in client.write_members(updates(["here@guard.dk", "gone@guard.dk"]), policy)
    }
    assert acks["here@guard.dk"].outcome == "updated"
    assert acks["gone@guard.dk"].outcome == "import_type"
    assert client.run_figures() == {"guard_reads": 1, "guard_lookups": 1}
    assert hl.member_by_email(LIST, "gone@guard.dk") is None


def test_a_list_that_ignores_the_in_filter_gets_one_read_per_member(caplog):
    """HL-A14 is an assumption: a list answering members not asked for (the filter ignored)
    must not be taken as "not on the list"; the client reads members one by one from then on."""
    unsubscribed = {
        "id": "m-2",
        "updated_at": "2026-01-01 00:00:00",
        "unsubscribed_at": "2026-01-01 00:00:00",
        "status": {"status": "unsubscribed", "email": "active"},
        "fields": {"email": {"value": "b@x.dk"}},
    }
    other = {**unsubscribed, "id": "m-9", "status": {"status": "active"}}
    other = {**other, "fields": {"email": {"value": "someone@else.dk"}}}
    posted: list[dict] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "GET" and path.endswith("/lists/4711"):
            return httpx.Response(200, json={"fields": {"email": {"format": "text"}}})
        if request.method == "GET" and path.endswith("/members"):
            wanted = request.url.params.get("filter[email][eq][]")
            if wanted is None:  # the `in` read: this list ignores the filter
                return httpx.Response(200, json={"members": [other]})
            found = [unsubscribed] if wanted == "b@x.dk" else []
            return httpx.Response(200, json={"members": found})
        posted.append(json.loads(request.content))
        return httpx.Response(200, json={"type": "update", "member_id": "m-1"})

    client = HeyloyaltyClient(
        base_url="http://hl.test/v1",
        api_key="k",
        api_secret="s",
        list_id="4711",
        transport=httpx.MockTransport(handler),
        requests_per_second=None,
    )
    with caplog.at_level(logging.WARNING):
        acks = {a.match_key: a for a in client.write_members(updates(["a@x.dk", "b@x.dk"]), POLICY)}
    assert acks["b@x.dk"].outcome == "unsubscribed"
    assert acks["a@x.dk"].outcome == "updated"
    assert [p["member"]["email"] for p in posted] == ["a@x.dk"]
    assert client.run_figures() == {"guard_reads": 1, "guard_lookups": 2}
    assert "HL-A14" in caplog.text
