"""Issue 10, member delivery calls: what a client's own reads of the list show while it writes
(a read before an import, the import's read-back) reaches the warehouse as the core's own read
would, and the core's next changed-since read (the refresh before the next batch, the next run's
pull) starts where they reached instead of reading those members again. Real HTTP to the
Heyloyalty emulator; the list's clock is moved to tell the cursors apart by a minute, not by how
fast the machine is."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import duckdb
import pandas as pd
import pytest

from memberflow import delivery
from resources.target import KeptReads
from tests.test_delivery import _settings
from tests.test_heyloyalty_import_client import LIST, make_client

FRESH = 3600.0  # every read of the test stands for the read before a file (tests/test_bulk_calls)
FIELDS = ["email", "firstname", "city"]


@pytest.fixture
def hl(sandbox):
    return sandbox.heyloyalty


def warehouse(emails: list[str]) -> duckdb.DuckDBPyConnection:
    """A warehouse whose `members` table holds these members, none of them sent yet."""
    frame = pd.DataFrame({"match_key": emails, "email": emails})
    frame["firstname"] = "Kim"
    frame["city"] = "Odense"
    frame["fields_hash"] = "h"
    frame["withdrawn"] = False
    frame["modified"] = pd.Timestamp("2025-01-01", tz="UTC")
    conn = duckdb.connect()
    conn.register("frame", frame)
    conn.execute("CREATE TABLE members AS SELECT * FROM frame")
    conn.unregister("frame")
    return conn


def test_what_the_read_back_showed_is_stored_and_not_read_again(sandbox, hl):
    hl.add_member(LIST, {"email": "other@x.dk", "city": "Vejle"})  # on the list, not in the run
    emails = [f"m{i}@x.dk" for i in range(30)]
    conn = warehouse(emails)
    client = make_client(sandbox, threshold=10, fresh=FRESH)
    delivery.pull_feedback(conn, client, "email")
    send = client.import_members

    def import_members(*args, **kwargs):
        answer = send(*args, **kwargs)
        hl.unsubscribe(LIST, email="other@x.dk")  # after the file, before its read-back
        hl.set_clock_ahead(60)  # the read-back begins a minute on, on the list's clock
        return answer

    client.import_members = import_members  # type: ignore[method-assign]

    report = delivery.deliver_members(conn, client, _settings("email"), FIELDS)

    assert report.created == 30
    assert client.calls.by_purpose()["read-back"] == 1
    # the read-back's members are in the warehouse as a refresh would have put them: the
    # unsubscribe only it saw too
    status = dict(conn.execute("SELECT match_key, status FROM remote_members").fetchall())
    assert status["other@x.dk"] == "unsubscribed"
    assert all(status[email] == "active" for email in emails)
    # the next pull starts where the read-back reached (the list's clock a minute on, less a
    # second): it reads nothing of what the run wrote, where it read the 31 members again
    again = delivery.pull_feedback(conn, make_client(sandbox), "email")
    assert again["pulled"] == 0
    assert client.take_reads() is None  # kept no longer once delivery is over
    hl.edit_member(LIST, emails[4], {"firstname": "Ole"})
    assert delivery.pull_feedback(conn, make_client(sandbox), "email")["pulled"] == 1


def test_reads_that_do_not_follow_on_vouch_for_nothing(sandbox, hl):
    """A read that starts past where the kept reads reach leaves a gap nobody read: the kept
    members still go to the warehouse, but the core keeps its own cursor."""
    hl.add_member(LIST, {"email": "a@x.dk"})
    client = make_client(sandbox, threshold=10, fresh=FRESH)
    list(client.iter_members(None))
    since = client.listing_cursor
    assert since is not None and client.keep_reads(since)

    client.read_changes(since)
    kept = client.take_reads()
    assert kept is not None and kept.through is not None and kept.through >= since

    client.read_changes(datetime.now(UTC) + timedelta(hours=1))  # a gap before it
    kept = client.take_reads()
    assert kept is not None and kept.through is None


def test_reads_whose_reach_the_lists_clock_does_not_tell_vouch_for_nothing(sandbox, hl):
    """Without a `Date` the client's next read starts at the newest change it saw, which a
    change to a member on an earlier page can predate: fine for its own next read, not as a
    cursor the warehouse keeps for good."""
    hl.add_member(LIST, {"email": "a@x.dk"})
    client = make_client(sandbox, threshold=10, fresh=FRESH)
    list(client.iter_members(None))
    since = client.listing_cursor
    assert since is not None and client.keep_reads(since)
    client._http.server_clock_ahead = lambda: None  # type: ignore[method-assign]  # no Date

    client.read_changes(since)
    kept = client.take_reads()

    assert kept is not None and kept.through is None


def test_a_member_removed_after_a_read_showed_them_stays_removed(sandbox, hl, monkeypatch):
    """A read before the files shows a member the same batch then removes: the read goes into
    the warehouse before the removal's acknowledgement, never over it (every acknowledgement
    written at once here, as 500 of them are in a large batch)."""
    monkeypatch.setattr(delivery, "ACK_BATCH", 1)
    emails = [f"m{i}@x.dk" for i in range(30)]
    gone = "gone@x.dk"
    conn = warehouse([*emails, gone])
    client = make_client(sandbox, threshold=10, fresh=FRESH)
    delivery.pull_feedback(conn, client, "email")
    assert delivery.deliver_members(conn, client, _settings("email"), FIELDS).created == 31
    conn.execute(
        "UPDATE members SET city = 'Vejle', fields_hash = 'h2' WHERE match_key <> ?", [gone]
    )
    conn.execute("UPDATE members SET withdrawn = true WHERE match_key = ?", [gone])
    client = make_client(sandbox, threshold=10, fresh=FRESH)
    delivery.pull_feedback(conn, client, "email")
    (gone_id,) = conn.execute(
        "SELECT member_id FROM remote_members WHERE match_key = ?", [gone]
    ).fetchone()
    hl.edit_member(LIST, gone, {"firstname": "Ole"})  # so the read-back shows them too

    report = delivery.deliver_members(conn, client, _settings("email"), FIELDS)

    assert (report.updated, report.removed) == (30, 1)
    assert client.calls.by_purpose()["read-back"] == 1
    assert hl.member_by_email(LIST, gone) is None
    held = conn.execute("SELECT count(*) FROM remote_members WHERE member_id = ?", [gone_id])
    assert held.fetchone() == (0,)


class _Keeping:
    """A client whose kept reads are given: what the core does with them."""

    def __init__(self, kept: KeptReads) -> None:
        self.kept = kept

    def take_reads(self) -> KeptReads:
        return self.kept


def test_the_core_keeps_its_own_cursor_when_the_reads_vouch_for_nothing():
    from tests.test_delivery import _remote

    conn = duckdb.connect()
    delivery.ensure_state(conn)
    ours = datetime(2026, 1, 1, tzinfo=UTC)
    later = ours + timedelta(minutes=1)

    cursor = delivery.store_kept_reads(conn, _Keeping(KeptReads([_remote(1)], None)), "email", ours)
    assert cursor == ours
    assert conn.execute("SELECT count(*) FROM remote_members").fetchone() == (1,)
    assert delivery.store_kept_reads(conn, _Keeping(KeptReads([], later)), "email", ours) == later
    # never back: an earlier reach leaves the later cursor
    assert delivery.store_kept_reads(conn, _Keeping(KeptReads([], ours)), "email", later) == later


def test_a_member_read_twice_keeps_the_later_state_and_never_an_older_one():
    from tests.test_delivery import _remote

    conn = duckdb.connect()
    delivery.ensure_state(conn)
    first, later = _remote(1), _remote(2, "unsubscribed")
    later = replace(later, member_id=first.member_id, email=first.email)
    kept = KeptReads([first, later], None)

    delivery.store_kept_reads(conn, _Keeping(kept), "email", None)
    status = "SELECT status FROM remote_members"
    assert conn.execute(status).fetchall() == [("unsubscribed",)]
    # a kept read older than what the warehouse holds does not replace it
    delivery.store_kept_reads(conn, _Keeping(KeptReads([first], None)), "email", None)
    assert conn.execute(status).fetchall() == [("unsubscribed",)]


def _outcomes(conn):
    delivery.ensure_state(conn)
    return delivery._Outcomes(conn, delivery.MemberReport(), frozenset(), groups=False)


def test_an_acknowledged_unsubscribe_replaces_a_row_from_another_feed_when_nothing_is_kept():
    """Without kept reads an acknowledgement's state replaces the stored row whatever its stamp:
    a target may stamp its unsubscribed list and its listing apart (a bounce read later made
    the row active with a newer stamp), and the unsubscribe must stay in the warehouse."""
    from tests.test_delivery import _remote

    conn = duckdb.connect()
    outcomes = _outcomes(conn)
    delivery.store_remote(conn, delivery.member_rows([_remote(9)], "email"))
    unsubscribed = replace(_remote(9, "unsubscribed"), updated_at=datetime(2025, 1, 1, tzinfo=UTC))
    outcomes.take(
        [{"match_key": "u9@x.dk"}],
        [delivery.MemberAck("u9@x.dk", "unsubscribed", remote=unsubscribed)],
    )
    outcomes.flush()

    assert conn.execute("SELECT status FROM remote_members").fetchall() == [("unsubscribed",)]


def test_acknowledgements_are_recorded_when_storing_the_kept_reads_fails():
    conn = duckdb.connect()
    outcomes = _outcomes(conn)

    def failing() -> None:
        raise RuntimeError("the warehouse said no")

    outcomes.before_flush = failing
    outcomes.take(
        [{"match_key": "k@x.dk", "fields_hash": "h"}],
        [delivery.MemberAck("k@x.dk", "created", member_id="7")],
    )

    with pytest.raises(RuntimeError):
        outcomes.flush()
    assert conn.execute("SELECT match_key, member_id FROM sync_state").fetchall() == [
        ("k@x.dk", "7")
    ]
