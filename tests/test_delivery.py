"""Wire values of one member: choice fields by option id, and a value the list cannot take costs
only its field (issue 6, items 1 and 2)."""

from __future__ import annotations

import pytest

from resources.base import ListField
from resources.heyloyalty_members import choice_option_id, wire_fields

SEX = ListField("sex", "choice", {"1": "Mand", "2": "Kvinde"})
FIELDS = {
    "email": ListField("email", "text"),
    "mobile": ListField("mobile", "number"),
    "sex": SEX,
}


@pytest.mark.parametrize("value", ["2", " 2 ", "Kvinde", "kvinde"])
def test_a_choice_is_sent_by_its_option_id_given_the_id_or_the_label(value):
    assert choice_option_id("sex", SEX, value) == "2"


def test_a_choice_with_no_such_option_is_dropped_and_reported_not_the_member():
    row = {"email": "a@example.dk", "mobile": "+4512345678", "sex": "Female"}
    values, dropped = wire_fields(row, FIELDS)
    assert values == {"email": "a@example.dk", "mobile": "4512345678"}
    ((field, reason),) = dropped
    assert field == "sex" and "'Female'" in reason and "1=Mand" in reason


def test_only_a_judging_4xx_is_a_refusal_not_one_asking_to_wait():
    from resources.base import VendorError
    from resources.target import is_refusal

    assert is_refusal(VendorError("heyloyalty", 400, "Unknown field: shoe_size"))
    assert not is_refusal(VendorError("heyloyalty", 429, "Too Many Requests"))
    assert not is_refusal(VendorError("heyloyalty", 408, "Request Timeout"))
    assert not is_refusal(VendorError("heyloyalty", 0, "could not reach api: read timeout"))


def test_a_listing_shorter_than_the_lists_own_count_forgets_nobody():
    """Page-number listings skip members when others are deleted meanwhile: acting on one that
    doesn't add up to the list's count would recreate members and resend their events."""
    from resources.base import RemoteMember

    class ShortListing:
        def member_count(self):
            return 3

        def iter_members(self, since):
            yield RemoteMember("m1", "a@x.dk", None, "active", "active", None, None)

    conn, found = _reconciled_with_three_acknowledged(ShortListing())
    assert found.missing == frozenset() and "not acted on" in found.full_listing
    assert conn.execute("SELECT count(*) FROM sync_state").fetchall()[0][0] == 3


def _reconciled_with_three_acknowledged(listing):
    """A warehouse that acknowledged a@, b@ and c@x.dk (m1..m3), reconciled against `listing`
    (which counts 3 members); the connection and the reconciliation."""
    import duckdb

    from memberflow import reconcile
    from memberflow.delivery import ensure_state

    conn = duckdb.connect()
    ensure_state(conn)
    conn.execute(
        "INSERT INTO sync_state (match_key, member_id, fields_hash, action, acked_at, removed) "
        "VALUES ('a@x.dk', 'm1', 'h', 'create', now(), false), "
        "('b@x.dk', 'm2', 'h', 'create', now(), false), "
        "('c@x.dk', 'm3', 'h', 'create', now(), false)"
    )
    return conn, reconcile.reconcile(conn, listing, "email")


class _Listing:
    """A target that counts and lists these members (the core's side of a listing)."""

    def __init__(self, members):
        self.members = members
        self.sinces = []

    def member_count(self):
        return len(self.members)

    def iter_members(self, since):
        self.sinces.append(since)
        yield from self.members

    def clock_ahead(self):
        return None


def _remote(i: int, status: str = "active"):
    from datetime import UTC, datetime

    from resources.base import RemoteMember

    moment = datetime(2026, 1, 1, 0, 0, i, tzinfo=UTC)
    return RemoteMember(f"m{i}", f"u{i}@x.dk", None, status, "active", None, moment, {"n": i})


def test_a_full_listing_read_chunk_by_chunk_forgets_and_stores_as_one_read(monkeypatch):
    """The listing of a million members is read into the warehouse a chunk at a time (issue
    10): members missing from every chunk are forgotten, every listed one is stored, and the
    ones nobody acknowledged come back as only_on_target however the chunks fall."""
    import duckdb

    from memberflow import delivery, reconcile
    from memberflow.delivery import ensure_state

    monkeypatch.setattr(delivery, "READ_ROWS", 2)
    conn = duckdb.connect()
    ensure_state(conn)
    acked = [f"('u{i}@x.dk', 'm{i}', 'h', 'create', now(), false)" for i in range(6)]
    conn.execute(
        "INSERT INTO sync_state (match_key, member_id, fields_hash, action, acked_at, removed) "
        f"VALUES {', '.join(acked)}"
    )
    # u1 and u4 lost; u7 and u8 added on the list, u9 added and unsubscribed there
    listed = [_remote(i) for i in (0, 2, 3, 5, 7, 8)] + [_remote(9, "unsubscribed")]
    found = reconcile.reconcile(conn, _Listing(listed), "email", notice_additions=True)
    assert found.missing == frozenset({"u1@x.dk", "u4@x.dk"})
    assert [f.email for f in found.only_on_list] == ["u7@x.dk", "u8@x.dk"]
    assert found.only_on_list[0].values == {"n": 7}
    assert conn.execute("SELECT count(*) FROM remote_members").fetchall()[0][0] == 7
    kept = conn.execute("SELECT match_key FROM sync_state ORDER BY 1").fetchall()
    assert [k for (k,) in kept] == ["u0@x.dk", "u2@x.dk", "u3@x.dk", "u5@x.dk"]
    assert (
        conn.execute(
            "SELECT count(*) FROM information_schema.tables WHERE table_name = ?",
            [reconcile.LISTED],
        ).fetchall()[0][0]
        == 0
    )  # the listing's table is dropped


def test_a_pull_read_chunk_by_chunk_stores_every_member_and_counts_them(monkeypatch):
    import duckdb

    from memberflow import delivery

    monkeypatch.setattr(delivery, "READ_ROWS", 2)
    conn = duckdb.connect()
    members = [_remote(i) for i in range(4)] + [_remote(4, "unsubscribed")]
    figures = delivery.pull_feedback(conn, _Listing(members), "email")
    assert figures == {"pulled": 5, "unsubscribed": 1, "bounced": 0}
    assert conn.execute("SELECT count(*) FROM remote_members").fetchall()[0][0] == 5
    cursor = delivery.refresh_feedback(conn, _Listing(members), "email", None)
    # the newest change seen (member 4, 00:00:04) less the overlap, not past the read's start
    assert cursor == members[4].updated_at - delivery.REFRESH_OVERLAP


# --- delivery against a target described by its capabilities (issue 7) ------------------------


def _warehouse(members: list[dict], groups: bool = False):
    """A warehouse whose `members` table holds `members` (mobile, external_id, first_name)."""
    import duckdb
    import pandas as pd

    conn = duckdb.connect()
    frame = pd.DataFrame(members)
    frame["fields_hash"] = frame["first_name"] + "|" + frame["mobile"]
    frame["withdrawn"] = False
    frame["modified"] = pd.Timestamp("2025-01-01", tz="UTC")
    conn.register("frame", frame)
    extra = ", groups::VARCHAR[] AS groups" if groups else ""
    conn.execute(f"CREATE TABLE members AS SELECT * EXCLUDE (groups){extra} FROM frame")
    conn.unregister("frame")
    return conn


def _set_members(conn, members: list[dict], groups: bool = False) -> None:
    import pandas as pd

    frame = pd.DataFrame(members)
    frame["fields_hash"] = frame["first_name"] + "|" + frame["mobile"]
    frame["withdrawn"] = False
    frame["modified"] = pd.Timestamp("2025-01-02", tz="UTC")
    conn.register("frame", frame)
    extra = ", groups::VARCHAR[] AS groups" if groups else ""
    conn.execute(f"CREATE OR REPLACE TABLE members AS SELECT * EXCLUDE (groups){extra} FROM frame")
    conn.unregister("frame")


def _settings(match_on: str):
    from memberflow.delivery import DeliverySettings
    from resources.base import UpsertFlags

    return DeliverySettings(
        match_on=match_on,
        import_type="create_and_update",
        reimport_unsubscribed=False,
        flags=UpsertFlags(),
        run_id="r",
    )


MAPPED = ["mobile", "external_id", "first_name"]
CARDS = [  # two cards share a phone: merge_by_phone makes them one member
    {"external_id": "teyca:1", "mobile": "+79001112233", "first_name": "Анна", "groups": ["a"]},
    {"external_id": "teyca:2", "mobile": "+79001112233", "first_name": "Анна", "groups": ["a"]},
    {"external_id": "teyca:3", "mobile": "+79114445566", "first_name": "Борис", "groups": []},
]


def _keyed(by: str, rows: list[dict]) -> list[dict]:
    """Members keyed by `by`; with mobile, cards sharing a phone become one (the first wins)."""
    out: dict[str, dict] = {}
    for row in rows:
        out.setdefault(row[by], {**row, "match_key": row[by]})
    return list(out.values())


def test_switching_merge_by_phone_rekeys_without_duplicates():
    from memberflow.delivery import deliver_members, list_state
    from tests.fake_target import FakeTarget

    target = FakeTarget()
    conn = _warehouse(_keyed("external_id", CARDS))
    first = deliver_members(conn, target, _settings("external_id"), MAPPED)
    assert first.created == 3 and len(target.members) == 3
    assert list_state(conn, "match_on") == "external_id"

    _set_members(conn, _keyed("mobile", CARDS))  # merge_by_phone switched on
    second = deliver_members(conn, target, _settings("mobile"), MAPPED)
    # the target recognised both phones (its word: updated); teyca:2's member is a duplicate now
    assert (second.created, second.updated) == (0, 2)
    assert (second.rekeyed_forgotten, second.rekeyed_removed) == (2, 1)
    assert len(target.members) == 2
    assert sorted(k for (k,) in conn.execute("SELECT match_key FROM sync_state").fetchall()) == [
        "+79001112233",
        "+79114445566",
        "teyca:2",
    ]
    assert conn.execute("SELECT removed FROM sync_state WHERE match_key = 'teyca:2'").fetchall()[0][
        0
    ]
    assert list_state(conn, "match_on") == "mobile"

    written = len(target.written)
    third = deliver_members(conn, target, _settings("mobile"), MAPPED)
    assert third.unchanged == 2 and len(target.written) == written
    assert (third.rekeyed_forgotten, third.rekeyed_removed) == (0, 0)


def test_switching_from_email_to_mobile_never_deletes_a_member_without_a_mobile():
    from memberflow.delivery import deliver_members
    from tests.fake_target import FakeTarget

    people = [
        {"email": "anna@example.dk", "mobile": "+4512345678", "first_name": "Anna", "groups": []},
        {"email": "bo@example.dk", "mobile": None, "first_name": "Bo", "groups": []},
    ]
    target = FakeTarget()
    conn = _warehouse(_keyed("email", people))
    fields = ["email", "mobile", "first_name"]
    assert deliver_members(conn, target, _settings("email"), fields).created == 2
    _set_members(conn, [{**p, "match_key": p["mobile"]} for p in people if p["mobile"]])
    switched = deliver_members(conn, target, _settings("mobile"), fields)
    # Bo has no mobile: no longer tracked, but still on the list (a setting changed, not Bo)
    assert (switched.rekeyed_forgotten, switched.rekeyed_removed) == (2, 0)
    assert len(target.members) == 2


def test_a_member_whose_groups_changed_is_an_update_with_only_the_difference():
    from memberflow.delivery import deliver_members
    from tests.fake_target import FakeTarget

    target = FakeTarget()
    conn = _warehouse(_keyed("external_id", CARDS), groups=True)
    first = deliver_members(conn, target, _settings("external_id"), MAPPED)
    assert first.created == 3
    assert target.written[0].groups == ("a",) and target.written[0].groups_added == ("a",)
    acked = dict(conn.execute("SELECT match_key, groups FROM sync_state").fetchall())
    assert acked == {"teyca:1": ["a"], "teyca:2": ["a"], "teyca:3": []}

    moved = [{**c, "groups": ["b"]} if c["external_id"] == "teyca:1" else c for c in CARDS]
    _set_members(conn, _keyed("external_id", moved), groups=True)
    target.written.clear()
    second = deliver_members(conn, target, _settings("external_id"), MAPPED)
    assert (second.updated, second.unchanged) == (1, 2)
    (change,) = target.written
    assert (change.match_key, change.action) == ("teyca:1", "update")
    assert (change.groups, change.groups_added, change.groups_removed) == (("b",), ("b",), ("a",))


def test_members_with_groups_fail_before_any_send_on_a_target_without_groups():
    from dataclasses import replace

    from memberflow.delivery import TargetCannotError, deliver_members
    from tests.fake_target import FakeTarget

    class NoGroups(FakeTarget):
        capabilities = replace(FakeTarget.capabilities, groups=False)

    target = NoGroups()
    conn = _warehouse(_keyed("external_id", CARDS), groups=True)
    with pytest.raises(TargetCannotError, match="keeps no groups"):
        deliver_members(conn, target, _settings("external_id"), MAPPED)
    assert target.written == []


def test_planned_actions_count_the_group_changes_a_budget_must_cover():
    """AF8: a target paying a call per group joined or left learns how many before sending."""
    from memberflow.delivery import deliver_members, planned_actions
    from tests.fake_target import FakeTarget

    rows = _keyed("external_id", CARDS)
    conn = _warehouse(rows, groups=True)
    assert planned_actions(conn, _settings("external_id")) == {"create": 3, "group_changes": 2}
    deliver_members(conn, FakeTarget(), _settings("external_id"), MAPPED)
    rows[2]["groups"] = ["a", "b"]  # Борис joins two groups
    rows[0]["groups"] = []  # the first card leaves one
    _replace_members(conn, _warehouse(rows, groups=True))
    assert planned_actions(conn, _settings("external_id")) == {"update": 2, "group_changes": 3}


def _replace_members(conn, other) -> None:
    frame = other.execute("SELECT * FROM members").df()
    conn.register("frame", frame)
    conn.execute("CREATE OR REPLACE TABLE members AS SELECT * FROM frame")
    conn.unregister("frame")


def test_the_fields_a_pull_showed_empty_reach_the_next_update_of_that_member():
    """A bulk write may send an empty value only for a field the target shows empty: the core
    keeps which fields the target's reads showed empty per member (`remote_members.blank`) and
    hands them over with each change; a field not shown at all is unknown, not empty (issue
    10, k/1000 + 2 calls)."""
    from datetime import UTC, datetime

    from memberflow.delivery import deliver_members, pull_feedback
    from resources.base import RemoteMember
    from tests.fake_target import FakeTarget

    people = [
        {"mobile": "+4511111111", "external_id": "a", "first_name": "Anna", "groups": []},
        {"mobile": "+4522222222", "external_id": "b", "first_name": "Bo", "groups": []},
    ]
    from dataclasses import replace

    class Listing(FakeTarget):  # its changed-since listing shows every change (a full copy)
        capabilities = replace(FakeTarget.capabilities, lists_changes=True)

    target = Listing()
    conn = _warehouse(_keyed("mobile", people))
    assert deliver_members(conn, target, _settings("mobile"), MAPPED).created == 2
    # no pull: the core cannot vouch that the target holds no such member
    assert all(change.remote_blank is None for change in target.written)
    seen = datetime(2026, 1, 1, tzinfo=UTC)
    shown = {"mobile": "4511111111", "first_name": "Anna", "city": "Odense", "zip": " ", "x": None}
    ((anna_id,),) = conn.execute(
        "SELECT member_id FROM sync_state WHERE match_key = '+4511111111'"
    ).fetchall()
    ((bo_id,),) = conn.execute(
        "SELECT member_id FROM sync_state WHERE match_key = '+4522222222'"
    ).fetchall()
    listed = [
        RemoteMember(anna_id, None, "4511111111", "active", None, None, seen, shown),
        RemoteMember(bo_id, None, "4522222222", "active", None, None, seen, {}),
    ]
    pull_feedback(conn, _Listing(listed), "mobile")
    changed = [{**p, "first_name": p["first_name"] + "!"} for p in people]
    changed.append({"mobile": "+4533333333", "external_id": "c", "first_name": "Cy", "groups": []})
    _set_members(conn, _keyed("mobile", changed))
    target.written.clear()
    report = deliver_members(conn, target, _settings("mobile"), MAPPED)
    assert (report.updated, report.created) == (2, 1)
    blank = {change.match_key: change.remote_blank for change in target.written}
    # blank and null values are empty; a member shown without fields has none known empty; a
    # create after a complete pull holds nothing: every mapped field is empty there
    assert blank == {
        "+4511111111": frozenset({"zip", "x"}),
        "+4522222222": frozenset(),
        "+4533333333": frozenset(MAPPED),
    }
    # a target whose changed-since listing shows only feedback keeps no full copy: no vouching
    conn.execute("DELETE FROM sync_state WHERE match_key = '+4533333333'")
    plain = FakeTarget()
    deliver_members(conn, plain, _settings("mobile"), MAPPED)
    assert [(c.match_key, c.remote_blank) for c in plain.written] == [("+4533333333", None)]


def test_a_full_pull_that_fails_halfway_vouches_for_no_key(monkeypatch):
    """After a switch of match_on the pull reads the whole list again, re-keying member by
    member; one that fails halfway leaves a copy keyed half one way, half the other: no key is
    vouched for, and the next pull (under either key) reads the whole list again."""
    import duckdb

    from memberflow import delivery
    from memberflow.delivery import pull_feedback, vouched_absent
    from resources.base import VendorError

    class Failing(_Listing):
        def iter_members(self, since):
            self.sinces.append(since)
            yield self.members[0]
            raise VendorError("heyloyalty", 503, "members page 2: unavailable")

    monkeypatch.setattr(delivery, "READ_ROWS", 1)
    conn = duckdb.connect()
    pull_feedback(conn, _Listing([_remote(1), _remote(2)]), "email")
    assert vouched_absent(conn, "email")
    failing = Failing([_remote(1), _remote(2)])
    with pytest.raises(VendorError):
        pull_feedback(conn, failing, "mobile")
    assert not vouched_absent(conn, "mobile") and not vouched_absent(conn, "email")
    again = _Listing([_remote(1), _remote(2)])
    pull_feedback(conn, again, "email")
    assert again.sinces == [None] and vouched_absent(conn, "email")


def test_a_pull_after_match_on_changed_reads_the_whole_list_again():
    """`remote_members` keyed by an earlier match_on would make existing members look absent
    (planned creates whose fields the target holds): the first pull after a switch reads the
    whole list, and only a pull under the current match_on vouches that a key absent from it
    is absent from the target."""
    import duckdb

    from memberflow.delivery import pull_feedback, vouched_absent

    conn = duckdb.connect()
    listing = _Listing([_remote(1), _remote(2)])
    assert not vouched_absent(conn, "email")
    pull_feedback(conn, listing, "email")
    pull_feedback(conn, listing, "email")
    assert vouched_absent(conn, "email") and not vouched_absent(conn, "mobile")
    pull_feedback(conn, listing, "mobile")
    assert listing.sinces[0] is None and listing.sinces[1] is not None
    assert listing.sinces[2] is None  # the whole list again, under the new key
    assert vouched_absent(conn, "mobile")


def test_after_match_on_changed_an_unsubscribe_under_the_old_key_is_still_kept():
    """A member unsubscribed on the target, pulled while members were matched by email: after
    switching to mobile, the whole list is read again, so the member is known unsubscribed
    under its mobile too and is neither created nor updated (never reactivated)."""
    from datetime import UTC, datetime

    from memberflow.delivery import deliver_members, pull_feedback
    from resources.base import RemoteMember
    from tests.fake_target import FakeTarget

    seen = datetime(2026, 1, 1, tzinfo=UTC)
    gone = RemoteMember("m9", "anna@x.dk", "4511111111", "unsubscribed", None, seen, seen, {})
    conn = _warehouse(
        [
            {
                "match_key": "+4522222222",
                "mobile": "+4522222222",
                "external_id": "b",
                "first_name": "Bo",
                "groups": [],
            }
        ]
    )

    class SinceListing(_Listing):  # lists only members changed since (all when None)
        def iter_members(self, since):
            self.sinces.append(since)
            yield from (m for m in self.members if since is None or m.updated_at >= since)

    listing = SinceListing([gone])
    pull_feedback(conn, listing, "email")  # keyed by email: anna@x.dk
    people = [
        {"mobile": "+4511111111", "external_id": "a", "first_name": "Anna", "groups": []},
        {"mobile": "+4522222222", "external_id": "b", "first_name": "Bo", "groups": []},
    ]
    _set_members(conn, _keyed("mobile", people))
    pull_feedback(conn, listing, "mobile")
    target = FakeTarget()
    report = deliver_members(conn, target, _settings("mobile"), MAPPED)
    assert (report.skipped_unsubscribed, report.created) == (1, 1)
    assert [change.match_key for change in target.written] == ["+4522222222"]
    assert listing.sinces == [None, None]  # the whole list again after the switch


def test_a_listing_that_shows_one_member_twice_and_skips_another_forgets_nobody():
    """A page-number listing may show a member twice when another is deleted meanwhile, and
    skip one: as many rows as the list counts, but not as many members. Counted by member, the
    listing does not add up, so nobody is forgotten (and re-created with every field empty)."""

    from resources.base import RemoteMember

    class Doubled:
        def member_count(self):
            return 3

        def iter_members(self, since):
            for member_id, email in (("m1", "a@x.dk"), ("m1", "a@x.dk"), ("m3", "c@x.dk")):
                yield RemoteMember(member_id, email, None, "active", "active", None, None)

    conn, found = _reconciled_with_three_acknowledged(Doubled())
    assert found.missing == frozenset() and "2 of 3" in found.full_listing
    assert conn.execute("SELECT count(*) FROM sync_state").fetchall()[0][0] == 3
