"""The Heyloyalty client's bulk path (HL-A11) over real HTTP against the sandbox emulator: one
import per large batch, confirmed by reading back; refusals, unsubscribes and lost rows."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from resources.base import UpsertFlags
from resources.heyloyalty import HeyloyaltyClient
from resources.heyloyalty_import import BULK_BATCH
from resources.target import MemberChange, WritePolicy
from sandbox.credentials import SANDBOX_ENV

LIST = 4711
POLICY = WritePolicy("email", "create_and_update", reimport_unsubscribed=False, flags=UpsertFlags())


@pytest.fixture
def hl(sandbox):
    return sandbox.heyloyalty


def make_client(sandbox, threshold: int = 500, fresh: float = 0.0) -> HeyloyaltyClient:
    """`fresh`: how old a listing read may be to stand for the read right before an import; 0
    (these tests' default) makes every import read the list's changes right before it, whatever
    the machine's speed (tests/test_bulk_calls.py covers the fresh reads)."""
    client = HeyloyaltyClient(
        sleep=lambda seconds: None,  # no backoff waits in tests
        base_url=f"{sandbox.url}/heyloyalty/loyalty/v1",
        api_key=SANDBOX_ENV["HEYLOYALTY_API_KEY"],
        api_secret=SANDBOX_ENV["HEYLOYALTY_API_SECRET"],
        list_id=str(LIST),
        bulk_threshold=threshold,
    )
    client.fresh_read_seconds = fresh
    return client


def creates(n: int, start: int = 0, **values) -> list[MemberChange]:
    return [
        MemberChange(
            f"m{i}@x.dk",
            "create",
            {"email": f"m{i}@x.dk", "firstname": f"F{i}", "city": "Odense", **values},
        )
        for i in range(start, start + n)
    ]


def acks_of(client, changes, policy=POLICY):
    return {ack.match_key: ack for ack in client.write_members(changes, policy)}


def test_a_batch_of_1200_creates_is_one_import_and_a_read_back(sandbox, hl):
    client = make_client(sandbox)
    assert client.batch_size == BULK_BATCH  # the core hands over one import's worth
    list(client.iter_members(None))  # the core reads the list first (pull-back)
    acks = acks_of(client, creates(1200, sex="Kvinde", postalcode=5000.0))
    assert Counter(a.outcome for a in acks.values()) == {"created": 1200}
    assert all(a.member_id for a in acks.values())
    assert client.calls.by_endpoint() == {
        "lists/{id}": 1,  # the list's fields (choice option ids)
        "members": 3,  # the pull-back, the guard read right before the import, the read-back
        "members/import": 1,
    }
    [imported] = hl.member_imports
    assert imported["rows"] == 1200 and imported["duplicate_field"] == "email"
    assert imported["handle_existing"] == "update" and imported["date_format"] == "Y-m-d"
    assert imported["trigger_autoresponder"] == "0"
    member = hl.member_by_email(LIST, "m7@x.dk")
    assert member["fields"]["sex"] == "2" and member["fields"]["postalcode"] == "5000"
    assert len(hl.members(LIST)) == 1200
    assert client.run_figures()["bulk_rows_confirmed"] == 1200

    # the same members changed: updated, one import again
    changes = [
        MemberChange(c.match_key, "update", {**c.values, "city": "Vejle"}) for c in creates(1200)
    ]
    acks = acks_of(client, changes)
    assert Counter(a.outcome for a in acks.values()) == {"updated": 1200}
    assert hl.member_by_email(LIST, "m7@x.dk")["fields"]["city"] == "Vejle"
    assert client.calls.by_endpoint()["members/import"] == 2


def test_a_refused_row_reaches_the_ack_with_the_lists_reason(sandbox, hl):
    client = make_client(sandbox, threshold=10)
    list(client.iter_members(None))
    batch = creates(20)
    batch[3] = MemberChange("m3@x.dk", "create", {"email": "m3@x.dk", "postalcode": "abc"})
    acks = acks_of(client, batch)
    assert acks["m3@x.dk"].outcome == "refused"
    assert acks["m3@x.dk"].reason == "Invalid number for field postalcode: abc"
    assert Counter(a.outcome for a in acks.values()) == {"created": 19, "refused": 1}
    assert client.calls.by_endpoint()["members/import"] == 1
    assert hl.member_by_email(LIST, "m3@x.dk") is None


def test_an_unsubscribed_member_is_kept_out_of_the_import_and_not_reactivated(sandbox, hl):
    client = make_client(sandbox, threshold=10)
    list(client.iter_members(None))
    assert Counter(a.outcome for a in acks_of(client, creates(30)).values()) == {"created": 30}
    hl.unsubscribe(LIST, email="m5@x.dk")  # after the client's last listing read
    long_ago = datetime.now(UTC) - timedelta(days=30)
    changes = [
        MemberChange(c.match_key, "update", {**c.values, "city": "Vejle"}, modified=long_ago)
        for c in creates(30)
    ]
    acks = acks_of(client, changes)
    assert acks["m5@x.dk"].outcome == "unsubscribed"
    assert acks["m5@x.dk"].remote is not None and acks["m5@x.dk"].remote.status == "unsubscribed"
    assert Counter(a.outcome for a in acks.values()) == {"updated": 29, "unsubscribed": 1}
    member = hl.member_by_email(LIST, "m5@x.dk")
    assert member["status"] == "unsubscribed" and member["fields"]["city"] == "Odense"
    assert hl.member_imports[-1]["rows"] == 29
    assert client.run_figures()["bulk_unsubscribed_kept_out"] == 1


def test_the_reimport_rule_lets_a_member_changed_after_the_unsubscribe_back(sandbox, hl):
    client = make_client(sandbox, threshold=5)
    list(client.iter_members(None))
    acks_of(client, creates(10))
    hl.unsubscribe(LIST, email="m2@x.dk")
    later = datetime.now(UTC) + timedelta(minutes=1)
    policy = WritePolicy("email", "create_and_update", reimport_unsubscribed=True)
    changes = [MemberChange(c.match_key, "update", c.values, modified=later) for c in creates(10)]
    acks = acks_of(client, changes, policy)
    assert acks["m2@x.dk"].outcome == "updated"
    assert hl.member_by_email(LIST, "m2@x.dk")["status"] == "active"


def test_the_client_keeps_a_read_member_as_an_object_only_while_it_is_not_active(sandbox, hl):
    """A read of a million members must not stay in memory for the run (issue 10): the client
    keeps a hash of each key it saw, and the state of a member only while it is not active."""
    client = make_client(sandbox, threshold=5)
    list(client.iter_members(None))
    acks_of(client, creates(10))  # the read-back shows the ten
    hl.unsubscribe(LIST, email="m2@x.dk")
    list(client.iter_members(None))
    assert all(client.seen("email", f"m{i}@x.dk") for i in range(10))
    assert not client.seen("email", "m10@x.dk") and not client.seen("mobile", "m2@x.dk")
    assert client.listed("email", "m2@x.dk").status == "unsubscribed"
    assert [client.listed("email", f"m{i}@x.dk") for i in (0, 1, 3)] == [None, None, None]
    assert len(client._listed) == 1  # one object: the unsubscribed member
    later = datetime.now(UTC) + timedelta(minutes=1)
    policy = WritePolicy("email", "create_and_update", reimport_unsubscribed=True)
    changes = [MemberChange(c.match_key, "update", c.values, modified=later) for c in creates(10)]
    assert acks_of(client, changes, policy)["m2@x.dk"].outcome == "updated"
    # the read-back showed it active again: no longer kept, still seen
    assert client.listed("email", "m2@x.dk") is None and client.seen("email", "m2@x.dk")
    assert client._listed == {}


def test_a_row_the_import_silently_lost_is_acked_error_not_created(sandbox, hl):
    client = make_client(sandbox, threshold=10)
    list(client.iter_members(None))
    hl.lose_import_rows("m4@x.dk")
    acks = acks_of(client, creates(20))
    assert acks["m4@x.dk"].outcome == "error"
    assert "did not store this row" in acks["m4@x.dk"].reason
    assert Counter(a.outcome for a in acks.values()) == {"created": 19, "error": 1}
    assert client.run_figures()["bulk_lookups"] == 1  # looked up once before giving up


def test_without_a_listing_read_or_with_opt_in_the_single_way_is_used(sandbox, hl):
    client = make_client(sandbox, threshold=5)
    acks = acks_of(client, creates(10))  # no iter_members before: nothing to guard from
    assert Counter(a.outcome for a in acks.values()) == {"created": 10}
    assert "members/import" not in client.calls.by_endpoint()
    list(client.iter_members(None))
    optin = WritePolicy("email", "create_and_update", False, UpsertFlags(send_optin=True))
    acks = acks_of(client, creates(10, start=10), optin)
    assert Counter(a.outcome for a in acks.values()) == {"created": 10}
    assert "members/import" not in client.calls.by_endpoint()
    assert client.calls.by_endpoint()["members/upsert"] == 20


def test_removes_stay_single_and_small_batches_too(sandbox, hl):
    client = make_client(sandbox, threshold=50)
    list(client.iter_members(None))
    acks_of(client, creates(60))
    gone = hl.member_by_email(LIST, "m0@x.dk")["id"]
    batch = [MemberChange("m0@x.dk", "remove", member_id=gone), *creates(3, start=100)]
    acks = acks_of(client, batch)
    assert acks["m0@x.dk"].outcome == "removed"
    assert Counter(a.outcome for a in acks.values()) == {"removed": 1, "created": 3}
    assert client.calls.by_endpoint()["members/import"] == 1  # only the 60 went as a file


def test_a_refused_file_falls_back_to_single_calls(sandbox, hl):
    client = make_client(sandbox, threshold=5)
    list(client.iter_members(None))
    client.target_fields()
    hl.remove_field(LIST, "city")  # the list changed under the run: the file names it
    acks = acks_of(client, creates(6))
    assert {a.outcome for a in acks.values()} == {"refused"}  # each single upsert says why
    assert all(a.reason == "Unknown field: city" for a in acks.values())
    assert not client.bulk_usable and client.calls.by_endpoint()["members/upsert"] == 6


def test_the_single_way_guards_creates_every_200_in_a_large_batch(sandbox, hl):
    client = make_client(sandbox, threshold=10_000)  # on, but above this batch
    list(client.iter_members(None))
    hl.add_member(LIST, {"email": "m450@x.dk"})
    hl.unsubscribe(LIST, email="m450@x.dk")  # appeared and unsubscribed during the run
    acks = acks_of(client, creates(500))
    assert acks["m450@x.dk"].outcome == "unsubscribed"
    assert hl.member_by_email(LIST, "m450@x.dk")["status"] == "unsubscribed"
    assert Counter(a.outcome for a in acks.values()) == {"created": 499, "unsubscribed": 1}


def test_an_import_without_answer_is_settled_by_the_read_back_alone(sandbox, hl):
    client = make_client(sandbox, threshold=5)
    list(client.iter_members(None))
    sandbox.faults.add("/import", 500, times=1)  # answered 500 before reaching the list: retried
    acks = acks_of(client, creates(8))
    assert Counter(a.outcome for a in acks.values()) == {"created": 8}

    sandbox.faults.add("/import", 500, times=5)  # every try: nothing imported, nothing claimed
    acks = acks_of(client, creates(8, start=100))
    assert Counter(a.outcome for a in acks.values()) == {"error": 8}
    assert client.run_figures()["bulk_lookups"] == 8
    assert len(hl.members(LIST)) == 8
