"""Issue 10, "bulk: <= k/1000 + 2 calls for k changed members": the calls the Heyloyalty bulk
path spends on k changed members, by purpose, over real HTTP to the sandbox emulator, and that
the reads it saves never let an import reactivate an unsubscribed member.

A complete changed-since read begun at most `fresh_read_seconds` ago (1 s) stands for the read
right before an import (the core's pull or refresh, or a read before an earlier file). These tests
set that bound far above any machine's slowness, or to 0, so the calls they count do not depend on
how loaded the machine is.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from resources.target import MemberChange
from tests.test_heyloyalty_import_client import LIST, acks_of, make_client

FRESH = 3600.0  # every read of the test counts as fresh, however slow the machine


@pytest.fixture
def hl(sandbox):
    return sandbox.heyloyalty


def seed(hl, n: int, **values) -> list[str]:
    emails = [f"k{i:04d}@bulk.dk" for i in range(n)]
    for email in emails:
        hl.add_member(LIST, {"email": email, "city": "Odense", **values})
    return emails


def updates(emails: list[str], **values) -> list[MemberChange]:
    long_ago = datetime.now(UTC) - timedelta(days=30)  # before any unsubscribe: never let back
    return [MemberChange(e, "update", {"email": e, **values}, modified=long_ago) for e in emails]


def spent(client, before: dict[str, int]) -> dict[str, int]:
    after = client.calls.by_purpose()
    return {k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}


def test_k_changed_members_of_one_set_of_fields_cost_an_import_and_its_read_back(sandbox, hl):
    emails = seed(hl, 1500)
    client = make_client(sandbox, threshold=10, fresh=FRESH)
    client.target_fields()
    list(client.iter_members(None))  # the core's pull, moments before
    before = client.calls.by_purpose()

    acks = acks_of(client, updates(emails, city="Vejle"))

    assert Counter(a.outcome for a in acks.values()) == {"updated": 1500}
    calls = spent(client, before)
    assert calls == {"import": 1, "read-back": 1}  # was 3: a guard read before the import
    assert sum(calls.values()) <= len(emails) / 1000 + 2
    assert client.run_figures()["bulk_guard_reads_saved"] == 1
    assert hl.member_by_email(LIST, emails[1499])["fields"]["city"] == "Vejle"


def test_each_set_of_fields_is_a_file_and_one_read_back_settles_them_all(sandbox, hl):
    emails = seed(hl, 260)
    client = make_client(sandbox, threshold=10, fresh=FRESH)
    client.target_fields()
    list(client.iter_members(None))
    before = client.calls.by_purpose()
    batch = [
        *updates(emails[:200], city="Vejle"),
        *updates(emails[200:250], city="Vejle", firstname="Kim"),
        *updates(emails[250:252], lastname="Holm"),  # a set of two: still a file (was single)
        *updates(emails[252:253], postalcode="5000"),  # a set of one: the single way
    ]

    acks = acks_of(client, batch)

    assert Counter(a.outcome for a in acks.values()) == {"updated": 253}
    # The list holds each member's email and city only. The 250 carrying the city share a file
    # with columns for all five fields (an empty cell where the list holds nothing changes
    # nothing); the three without the city cannot go in it (their empty city cell would empty
    # the list's), so they share a second file without a city column. Both sent within the bound
    # of the pull, one read-back for the two (was three files, a read and an upsert).
    assert spent(client, before) == {"import": 2, "read-back": 1}
    assert client.run_figures()["bulk_guard_reads_saved"] == 2
    assert [i["rows"] for i in hl.member_imports] == [250, 3]
    assert hl.member_by_email(LIST, emails[251])["fields"]["lastname"] == "Holm"
    assert hl.member_by_email(LIST, emails[251])["fields"]["city"] == "Odense"  # not emptied
    assert hl.member_by_email(LIST, emails[252])["fields"]["postalcode"] == "5000"
    assert hl.member_by_email(LIST, emails[252])["fields"]["city"] == "Odense"
    assert not hl.member_by_email(LIST, emails[0])["fields"].get("firstname")


def test_k_new_members_carrying_different_fields_cost_one_file_and_its_read_back(sandbox, hl):
    """A member no read showed holds nothing on the list: creates carrying any mix of fields
    share one file (issue 10: <= k/1000 + 2 calls however the fields fall)."""
    client = make_client(sandbox, threshold=10, fresh=FRESH)
    every_field = frozenset(client.target_fields())  # the core's word after a complete pull
    list(client.iter_members(None))  # the core's pull: an empty list
    before = client.calls.by_purpose()
    extras = [
        {},
        {"firstname": "Kim"},
        {"lastname": "Holm"},
        {"postalcode": "5000"},
        {"firstname": "Ida", "city": "Vejle"},
        {"sex": "2"},
    ]
    batch = [
        MemberChange(
            f"n{i:04d}@bulk.dk",
            "create",
            {"email": f"n{i:04d}@bulk.dk", **extras[i % 6]},
            remote_blank=every_field,
        )
        for i in range(1500)
    ]

    acks = acks_of(client, batch)

    assert Counter(a.outcome for a in acks.values()) == {"created": 1500}
    calls = spent(client, before)
    assert calls == {"import": 1, "read-back": 1}  # was one file per set of fields (6) + a read
    assert sum(calls.values()) <= len(batch) / 1000 + 2
    assert [i["rows"] for i in hl.member_imports] == [1500]
    for i in range(6):  # each member holds its own fields, nothing of the others'
        held = hl.member_by_email(LIST, f"n{i:04d}@bulk.dk")["fields"]
        assert {k for k, v in held.items() if v not in (None, "")} == {"email", *extras[i]}


def test_creates_the_core_cannot_vouch_for_keep_files_of_their_own_fields(sandbox, hl):
    """A planned create may be a member the list holds under another key (the core's replica
    not yet keyed by the current match_on): without the core's word (`remote_blank`) and with
    no read showing it, nothing is known empty, so each set of fields keeps its own file."""
    hl.add_member(LIST, {"email": "n0001@bulk.dk", "city": "Odense"})
    client = make_client(sandbox, threshold=10, fresh=FRESH)
    client.target_fields()
    list(client.iter_members(datetime.now(UTC) + timedelta(hours=1)))  # a read showing nobody
    batch = [
        MemberChange(f"n{i:04d}@bulk.dk", "create", {"email": f"n{i:04d}@bulk.dk", **extra})
        for i, extra in enumerate([{"firstname": "Kim"}] * 5 + [{"lastname": "Holm"}] * 5)
    ]

    acks_of(client, batch)

    assert sorted(i["columns"] for i in hl.member_imports) == [
        ["email", "firstname"],
        ["email", "lastname"],
    ]
    assert hl.member_by_email(LIST, "n0001@bulk.dk")["fields"]["city"] == "Odense"


def test_an_update_keeps_a_field_the_core_last_saw_filled_that_it_does_not_carry(sandbox, hl):
    """Members no read of this run showed: the core's last read of them (`remote_blank`) says
    what the list shows empty. One whose list holds a first name it does not carry gets a file
    of its own fields, so its first name is not emptied; one nobody knows about likewise."""
    hl.add_member(LIST, {"email": "sofie@bulk.dk", "city": "Odense", "firstname": "Sofie"})
    emails = ["sofie@bulk.dk", *seed(hl, 39)]
    client = make_client(sandbox, threshold=10, fresh=FRESH)
    client.target_fields()
    time.sleep(1.1)  # the list's clock counts whole seconds: past the second of the seeding
    list(client.iter_members(datetime.now(UTC)))  # a pull that shows nobody
    assert not client.seen("email", emails[0])
    before = client.calls.by_purpose()
    blank = frozenset({"firstname", "lastname", "sex", "postalcode"})
    batch = [
        replace(change, remote_blank=blank)
        for change in updates(emails[1:30], city="Vejle", firstname="Kim")
    ]
    batch += [replace(c, remote_blank=blank) for c in updates(emails[30:38], city="Vejle")]
    batch += [replace(updates(emails[:1], city="Vejle")[0], remote_blank=blank - {"firstname"})]
    batch += updates(emails[38:40], city="Vejle")  # remote_blank unknown: own fields only

    acks = acks_of(client, batch)

    assert Counter(a.outcome for a in acks.values()) == {"updated": 40}
    assert sorted(i["rows"] for i in hl.member_imports) == [3, 37]
    assert hl.member_by_email(LIST, emails[0])["fields"]["firstname"] == "Sofie"
    assert hl.member_by_email(LIST, emails[0])["fields"]["city"] == "Vejle"
    assert hl.member_by_email(LIST, emails[1])["fields"]["firstname"] == "Kim"
    assert not hl.member_by_email(LIST, emails[31])["fields"].get("firstname")
    assert spent(client, before) == {"import": 2, "read-back": 1}


def test_a_value_typed_in_on_the_list_after_the_plan_is_not_emptied_by_the_file(sandbox, hl):
    """The plan put a member in a file with a first-name column it carries no value for (the
    pull showed her first name empty); then a first name is typed in for her on the list. The
    read right before the file shows it, so she leaves the file for her own upsert, and her
    first name stays."""
    emails = seed(hl, 31)
    client = make_client(sandbox, threshold=10, fresh=0.0)  # a read right before every file
    client.target_fields()
    list(client.iter_members(None))
    time.sleep(1.1)  # her change must be newer than the pull on the list's whole-second clock
    hl.edit_member(LIST, emails[30], {"firstname": "Sofie"})
    batch = [
        *updates(emails[:30], city="Vejle", firstname="Kim"),
        *updates(emails[30:], city="Vejle"),
    ]

    acks = acks_of(client, batch)

    assert Counter(a.outcome for a in acks.values()) == {"updated": 31}
    assert [i["rows"] for i in hl.member_imports] == [30]
    sofie = hl.member_by_email(LIST, emails[30])["fields"]
    assert (sofie["firstname"], sofie["city"]) == ("Sofie", "Vejle")
    assert client.run_figures()["bulk_rows_diverted"] == 1


def test_a_row_refused_for_an_empty_cell_is_sent_again_on_its_own(sandbox, hl):
    """A list may refuse an empty cell in a number column: the member refused in the shared
    file for it is sent by its own upsert, which carries no such cell."""
    emails = seed(hl, 30)
    hl.refuse_empty_import_cells("postalcode")
    client = make_client(sandbox, threshold=10, fresh=FRESH)
    client.target_fields()
    list(client.iter_members(None))
    time.sleep(1.1)  # the read-back tells the import's writes by whole-second stamps
    batch = [
        *updates(emails[:29], city="Vejle", postalcode="5000"),
        *updates(emails[29:], city="Vejle"),
    ]

    acks = acks_of(client, batch)

    assert Counter(a.outcome for a in acks.values()) == {"updated": 30}
    assert hl.member_by_email(LIST, emails[29])["fields"]["city"] == "Vejle"
    assert client.run_figures()["bulk_refused_with_empty_cells"] == 1
    assert client.calls.by_purpose()["members/upsert"] == 1


def test_an_unsubscribe_during_one_file_is_seen_by_the_read_before_the_next(sandbox, hl):
    """With no read fresh enough (bound 0), a read precedes every file; the one before the second
    file is the first file's read-back too (it reads everything changed since before that file)
    and keeps out the member who unsubscribed while the first file was on its way."""
    emails = seed(hl, 40)
    emails += [f"o{i:04d}@bulk.dk" for i in range(20)]
    for email in emails[40:]:
        hl.add_member(LIST, {"email": email, "city": "Odense", "firstname": "Ole"})
    client = make_client(sandbox, threshold=10, fresh=0.0)
    client.target_fields()
    list(client.iter_members(None))
    send = client.import_members
    target = emails[55]  # in the second file

    def import_members(*args, **kwargs):
        if not hl.member_imports:
            hl.unsubscribe(LIST, email=target)  # while the first file is on its way
        return send(*args, **kwargs)

    client.import_members = import_members  # type: ignore[method-assign]
    before = client.calls.by_purpose()
    # two files: the last 20 lack the first name the list holds for them, so they cannot share
    # the file of the 40 that carry one
    batch = [
        *updates(emails[:40], city="Vejle", firstname="Kim"),
        *updates(emails[40:], city="Vejle", sex="1"),
    ]

    acks = acks_of(client, batch)

    assert acks[target].outcome == "unsubscribed"
    member = hl.member_by_email(LIST, target)
    assert member["status"] == "unsubscribed" and member["fields"]["city"] == "Odense"
    assert Counter(a.outcome for a in acks.values()) == {"updated": 59, "unsubscribed": 1}
    assert [i["rows"] for i in hl.member_imports] == [40, 19]
    # was a guard read, an import and a read-back per file (6)
    assert spent(client, before) == {"guard read (import)": 1, "import": 2, "read-back": 2}
    assert client.run_figures()["bulk_unsubscribed_kept_out"] == 1


def test_a_read_older_than_the_bound_is_made_again_right_before_the_import(sandbox, hl):
    """An unsubscribe after the last read: with that read too old to stand (bound 0 here), the
    list's changes are read right before the import and the member stays out of the file."""
    emails = seed(hl, 30)
    client = make_client(sandbox, threshold=10, fresh=0.0)
    client.target_fields()
    list(client.iter_members(None))
    hl.unsubscribe(LIST, email=emails[7])
    before = client.calls.by_purpose()

    acks = acks_of(client, updates(emails, city="Vejle"))

    assert acks[emails[7]].outcome == "unsubscribed"
    assert hl.member_by_email(LIST, emails[7])["status"] == "unsubscribed"
    assert hl.member_by_email(LIST, emails[7])["fields"]["city"] == "Odense"
    assert spent(client, before) == {"guard read (import)": 1, "import": 1, "read-back": 1}
    assert client.run_figures()["bulk_guard_reads_saved"] == 0


def test_without_any_listing_read_nothing_goes_as_a_file(sandbox, hl):
    """No read of this client to stand for the guard (none made): the single way, as before."""
    emails = seed(hl, 20)
    client = make_client(sandbox, threshold=10, fresh=FRESH)
    acks = acks_of(client, updates(emails, city="Vejle"))
    assert Counter(a.outcome for a in acks.values()) == {"updated": 20}
    assert "import" not in client.calls.by_purpose()


def test_a_change_on_a_page_already_read_is_in_the_next_changed_since_read(sandbox, hl):
    """The listing is paged: a member on a page already read may change while later pages are
    read, and a later page may show a member changed after that. The next changed-since read
    starts no later than this read began (on the list's clock), not at the newest change it
    saw, so the first member's change is read; an unsubscribe there is never missed."""
    first, second = seed(hl, 2)
    client = make_client(sandbox, threshold=10, fresh=FRESH)
    client._per_page = 1  # one member a page: `first` on page 1, `second` on page 2
    pages = client._members_page

    def members_page(since, page, perpage):
        answer = pages(since, page, perpage)
        if page == 1 and since is None:
            hl.unsubscribe(LIST, email=first)  # on a page already read
            hl.set_clock_ahead(3)  # `second` changes later still (its stamp 3 s on)
            hl.edit_member(LIST, second, {"firstname": "Kim"})
            hl.set_clock_ahead(0)
        return answer

    client._members_page = members_page  # type: ignore[method-assign]
    list(client.iter_members(None))
    assert client.listed("email", first) is None  # that read showed her active

    changed = {member.email for member, _ in client.changes_since_last_read() or []}

    assert first in changed
    assert client.listed("email", first).status == "unsubscribed"


def test_the_next_read_starts_where_the_last_began_not_at_its_newest_change(sandbox, hl):
    """Members written a minute ago (a file of an earlier batch, say) are read once: the next
    changed-since read starts where the last one began on the list's clock (its `Date`), less a
    second, not at the newest change it saw, so it does not take them in again; a change after
    that read is in it."""
    emails = seed(hl, 30)
    for email in emails:
        hl.backdate(LIST, email, 60)
    client = make_client(sandbox, threshold=10, fresh=FRESH)
    assert len(client.read_changes(None)) == 30

    assert client.changes_since_last_read() == []
    hl.unsubscribe(LIST, email=emails[3])
    changed = client.changes_since_last_read() or []

    assert [member.email for member, _ in changed] == [emails[3]]
    assert client.listed("email", emails[3]).status == "unsubscribed"
