"""The review findings on the Heyloyalty bulk import (HL-A11), over real HTTP to the emulator:
unsubscribed members the guard read cannot see, answers of other shapes, row numbers that
disagree with the list, absent and dropped values, a failing guard read, dates, duplicate keys."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from resources.target import MemberChange
from tests.test_heyloyalty_import_client import LIST, POLICY, acks_of, creates, make_client


@pytest.fixture
def hl(sandbox):
    return sandbox.heyloyalty


def updates(n: int, start: int = 0, **values) -> list[MemberChange]:
    return [
        MemberChange(c.match_key, "update", {**c.values, **values}) for c in creates(n, start=start)
    ]


def test_a_routed_create_seen_unsubscribed_by_an_earlier_read_stays_out_of_the_file(sandbox, hl):
    """Review H1 case 1: the core's refresh saw X appear and unsubscribe and routed X's create to
    an update; X changed before the refresh's newest member, so the guard read misses X."""
    client = make_client(sandbox, threshold=10)
    list(client.iter_members(None))
    acks_of(client, creates(30))
    hl.add_member(LIST, {"email": "x@x.dk", "city": "Aarhus"})
    hl.unsubscribe(LIST, email="x@x.dk")
    hl.backdate(LIST, "x@x.dk", 30)  # older than the newest member the refresh reads
    list(client.iter_members(None))  # the core's refresh: sees X unsubscribed
    routed = replace(creates(1, start=999)[0], match_key="x@x.dk", action="update")
    routed = replace(routed, values={**routed.values, "email": "x@x.dk"}, planned="create")
    acks = acks_of(client, [*updates(30, city="Vejle"), routed])
    assert acks["x@x.dk"].outcome == "unsubscribed"
    member = hl.member_by_email(LIST, "x@x.dk")
    assert member["status"] == "unsubscribed" and member["fields"]["city"] == "Aarhus"
    assert Counter(a.outcome for a in acks.values()) == {"updated": 30, "unsubscribed": 1}
    assert hl.member_imports[-1]["rows"] == 30


def test_a_member_unsubscribing_during_one_import_is_kept_out_of_the_next(sandbox, hl):
    """Review H1 case 2: the read-back of import 1 sees the unsubscribe; the cursor moves past it,
    so the guard read of import 2 does not; the client's listed states still do."""
    client = make_client(sandbox, threshold=10)
    list(client.iter_members(None))
    acks_of(client, creates(30))
    hl.unsubscribe(LIST, email="m7@x.dk")
    hl.backdate(LIST, "m7@x.dk", 30)
    list(client.iter_members(None))  # a read that shows it, then the cursor is past it
    acks = acks_of(client, updates(30, city="Vejle"))
    assert acks["m7@x.dk"].outcome == "unsubscribed"
    assert hl.member_by_email(LIST, "m7@x.dk")["status"] == "unsubscribed"


@pytest.mark.parametrize("shape", ["minimal", "empty", "other"])
def test_an_answer_of_another_shape_is_settled_by_the_read_back_with_one_import(sandbox, hl, shape):
    client = make_client(sandbox, threshold=10)
    list(client.iter_members(None))
    hl.answer_imports_with(shape)
    acks = acks_of(client, creates(30))
    assert Counter(a.outcome for a in acks.values()) == {"created": 30}
    assert client.calls.by_endpoint()["members/import"] == 1  # never sent again
    assert client.run_figures()["bulk_rows_confirmed"] == 30
    assert len(hl.member_imports) == 1


def test_the_read_back_overrides_row_numbers_that_disagree(sandbox, hl, caplog):
    client = make_client(sandbox, threshold=10)
    list(client.iter_members(None))
    hl.number_import_rows_from(2)  # the vendor counts the header line
    batch = creates(30, postalcode="5000")
    batch[3] = MemberChange(
        "m3@x.dk", "create", {**batch[3].values, "postalcode": "abc"}
    )  # refused by the list; the answer names row 5 (m4)
    with caplog.at_level(logging.WARNING):
        acks = acks_of(client, batch)
    assert acks["m4@x.dk"].outcome == "created"  # the list holds it: the list's word
    assert acks["m3@x.dk"].outcome == "error"  # not held: sent again next run
    assert Counter(a.outcome for a in acks.values()) == {"created": 29, "error": 1}
    assert "named 1 rows failed that the list holds" in caplog.text


def test_absent_values_and_dropped_fields_are_left_alone_as_by_the_single_way(sandbox, hl):
    client = make_client(sandbox, threshold=10)
    list(client.iter_members(None))
    acks_of(client, creates(30, sex="Kvinde"))
    changes = [
        MemberChange(
            f"m{i}@x.dk",
            "update",
            {
                "email": f"m{i}@x.dk",
                "firstname": "G",
                "city": None,
                "sex": "Alien" if i < 5 else None,
            },
        )
        for i in range(30)
    ]
    acks = acks_of(client, changes)
    assert Counter(a.outcome for a in acks.values()) == {"updated": 30}
    assert acks["m1@x.dk"].dropped and acks["m1@x.dk"].dropped[0][0] == "sex"
    for i in (1, 20):
        fields = hl.member_by_email(LIST, f"m{i}@x.dk")["fields"]
        assert fields["firstname"] == "G" and fields["city"] == "Odense" and fields["sex"] == "2"
    assert hl.member_imports[-1]["columns"] == ["email", "firstname"]
    assert client.calls.by_endpoint()["members/import"] == 2
    assert "members/upsert" not in client.calls.by_endpoint()

    # 25 rows with one set of fields, 5 with another: one import each (a set of fewer than 20
    # went the single way before, at about a call per member), no cell for an absent value
    mixed = updates(25, firstname="H") + updates(5, start=25, city="Vejle")
    mixed[25:] = [replace(c, values={"email": c.match_key, "city": "Vejle"}) for c in mixed[25:]]
    acks = acks_of(client, mixed)
    assert Counter(a.outcome for a in acks.values()) == {"updated": 30}
    assert client.calls.by_endpoint()["members/import"] == 4
    assert "members/upsert" not in client.calls.by_endpoint()
    assert hl.member_imports[-1]["columns"] == ["email", "city"]
    assert hl.member_by_email(LIST, "m26@x.dk")["fields"]["firstname"] == "G"
    assert hl.member_by_email(LIST, "m26@x.dk")["fields"]["city"] == "Vejle"


def test_a_failed_guard_read_gives_error_acks_for_the_creates_not_sent(sandbox, hl):
    client = make_client(sandbox, threshold=10_000)  # on, but above this batch: single way
    list(client.iter_members(None))
    acks = client.write_members(creates(500), POLICY)
    got = [next(acks) for _ in range(200)]  # the first chunk of 200
    sandbox.faults.add("/members", 500, times=5)  # every try of the guard read before chunk 2
    got += list(acks)
    assert len(got) == 500
    assert Counter(a.outcome for a in got) == {"created": 200, "error": 300}
    assert len(hl.members(LIST)) == 200


def test_a_datetime_in_a_date_field_goes_as_the_files_date_format(sandbox, hl):
    client = make_client(sandbox, threshold=10)
    list(client.iter_members(None))
    born = datetime(1990, 5, 17, 23, 30, tzinfo=UTC)
    acks = acks_of(client, creates(30, birthdate=born))
    assert Counter(a.outcome for a in acks.values()) == {"created": 30}
    assert hl.member_by_email(LIST, "m3@x.dk")["fields"]["birthdate"] == "1990-05-17"


def test_rows_sharing_a_key_one_in_the_file_the_rest_single_one_ack_each(sandbox, hl):
    client = make_client(sandbox, threshold=10)
    list(client.iter_members(None))
    batch = [*creates(30), *updates(1, start=3, city="Vejle")]
    acks = list(client.write_members(batch, POLICY))
    assert len(acks) == 31
    assert Counter(a.outcome for a in acks) == {"created": 30, "updated": 1}
    assert hl.member_imports[-1]["rows"] == 30
    assert hl.member_by_email(LIST, "m3@x.dk")["fields"]["city"] == "Vejle"  # the later wins
