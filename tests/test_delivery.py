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
    import duckdb

    from memberflow import reconcile
    from memberflow.delivery import ensure_state
    from resources.base import RemoteMember

    class ShortListing:
        def member_count(self):
            return 3

        def iter_members(self, since):
            yield RemoteMember("m1", "a@x.dk", None, "active", "active", None, None)

    conn = duckdb.connect()
    ensure_state(conn)
    conn.execute(
        "INSERT INTO sync_state VALUES ('a@x.dk', 'm1', 'h', 'create', now(), false), "
        "('b@x.dk', 'm2', 'h', 'create', now(), false), "
        "('c@x.dk', 'm3', 'h', 'create', now(), false)"
    )
    found = reconcile.reconcile(conn, ShortListing(), "email")
    assert found.missing == frozenset() and "not acted on" in found.full_listing
    assert conn.execute("SELECT count(*) FROM sync_state").fetchall()[0][0] == 3
