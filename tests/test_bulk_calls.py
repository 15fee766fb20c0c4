"""Issue 10, "bulk: <= k/1000 + 2 calls for k changed members": the calls the Heyloyalty bulk
path spends on k changed members, by purpose, over real HTTP to the sandbox emulator, and that
the reads it saves never let an import reactivate an unsubscribed member.

A complete changed-since read begun at most `fresh_read_seconds` ago (1 s) stands for the read
right before an import (the core's pull or refresh, or a read before an earlier file). These tests
set that bound far above any machine's slowness, or to 0, so the calls they count do not depend on
how loaded the machine is.
"""

from __future__ import annotations

from collections import Counter
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
    # three files sent within the bound of the pull, one read-back for the three; the member
    # alone: a read of its chunk and its upsert
    assert spent(client, before) == {
        "import": 3,
        "read-back": 1,
        "guard read (updates)": 1,
        "members/upsert": 1,
    }
    assert client.run_figures()["bulk_guard_reads_saved"] == 3
    assert [i["rows"] for i in hl.member_imports] == [200, 50, 2]
    assert hl.member_by_email(LIST, emails[251])["fields"]["lastname"] == "Holm"
    assert hl.member_by_email(LIST, emails[251])["fields"]["city"] == "Odense"  # not emptied
    assert hl.member_by_email(LIST, emails[252])["fields"]["postalcode"] == "5000"


def test_an_unsubscribe_during_one_file_is_seen_by_the_read_before_the_next(sandbox, hl):
    """With no read fresh enough (bound 0), a read precedes every file; the one before the second
    file is the first file's read-back too (it reads everything changed since before that file)
    and keeps out the member who unsubscribed while the first file was on its way."""
    emails = seed(hl, 60)
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
    batch = [*updates(emails[:40], city="Vejle"), *updates(emails[40:], city="Vejle", sex="1")]

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
