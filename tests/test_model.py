"""The list model: members merged across integrations by match key, and their tracking events.

Two integrations feed one list: `fp` (FlexPOS customers + journals, no consent field) and `tm`
(Ticketmaster customers with marketing consent). Landing files are written through a
hand-written stand-in for the source clients; the tests are about the DuckDB logic.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import duckdb
import pytest

from memberflow import landing, model, segments, staging, target_mapping
from memberflow.mapping import load_mapping
from memberflow.target_mapping import load_target_mapping
from memberflow.warehouse import warehouse_config
from resources.base import RecordMeta

FP_SETTINGS = staging.StageSettings("fp", ",", "%Y-%m-%dT%H:%M:%S", "DK", "email")
TM_SETTINGS = staging.StageSettings("tm", ",", "%Y-%m-%dT%H:%M:%SZ", "DK", "email")
FP_CUSTOMERS = load_mapping("flexpos", "customers")
FP_JOURNALS = load_mapping("flexpos", "journals")
TM_CUSTOMERS = load_mapping("ticketmaster", "customers")
HEYLOYALTY = load_target_mapping("heyloyalty")
FEEDS = [
    model.Feed("fp", FP_CUSTOMERS, (FP_JOURNALS,), HEYLOYALTY),
    model.Feed("tm", TM_CUSTOMERS, (), HEYLOYALTY),
]


class FakeSource:
    """Just enough of a SourceClient for `land_pages`: id, modified and business date."""

    def __init__(self, id_field: str, modified: str, day: str | None = None):
        self.id_field, self.modified, self.day = id_field, modified, day

    def record_meta(self, entity: str, record: dict[str, Any]) -> RecordMeta:
        modified = datetime.fromisoformat(record[self.modified]).astimezone(UTC)
        business = date.fromisoformat(record[self.day][:10]) if self.day else None
        return RecordMeta(str(record[self.id_field]), modified, business)

    def tombstone_meta(self, entity: str, record: dict[str, Any], deleted_at: datetime):
        """A deleted record: its id, and the fetch time as its modified time."""
        return RecordMeta(str(record[self.id_field]), deleted_at, None)


@pytest.fixture()
def conn(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    database = tmp_path / "w.duckdb"  # bounded and unordered, as every warehouse
    connection = duckdb.connect(str(database), config=warehouse_config(database))
    yield connection
    connection.close()


def fp_customer(cid: int, modified: str, **fields: Any) -> dict[str, Any]:
    return {
        "CustomerId": cid,
        "Email": f"fp{cid}@example.dk",
        "FirstName": f"Fp{cid}",
        "Modified": modified,
        **fields,
    }


def tm_customer(cid: str, modified: str, consent: bool = True, **fields: Any) -> dict[str, Any]:
    return {
        "customerId": cid,
        "email": f"{cid}@example.dk",
        "firstName": f"Tm {cid}",
        "marketingConsent": consent,
        "modifiedDate": modified,
        **fields,
    }


def journal(jid: str, customer_id: int | None, products: list[str]) -> dict[str, Any]:
    return {
        "JournalId": jid,
        "CustomerId": customer_id,
        "Date": "2025-03-01T12:30:00",
        "Lines": [{"ProductId": p, "Amount": "10"} for p in products],
        "Modified": "2025-03-01T12:31:00",
    }


def feed_fp(*records: dict[str, Any]) -> None:
    source = FakeSource("CustomerId", "Modified")
    landing.land_pages(source, "fp", "customers", [list(records)])


def feed_tm(*records: dict[str, Any]) -> None:
    source = FakeSource("customerId", "modifiedDate")
    landing.land_pages(source, "tm", "customers", [list(records)])


def feed_journals(*records: dict[str, Any]) -> None:
    source = FakeSource("JournalId", "Modified", day="Date")
    landing.land_pages(source, "fp", "journals", [list(records)])


def build(conn) -> dict[str, int]:
    staging.stage_members(conn, FP_CUSTOMERS, FP_SETTINGS)
    staging.stage_members(conn, TM_CUSTOMERS, TM_SETTINGS)
    staging.stage_events(conn, FP_JOURNALS, FP_SETTINGS)
    return model.build_members(conn, FEEDS)


def members(conn, *columns: str) -> dict[str, tuple]:
    names = ", ".join(f'"{c}"' for c in columns)
    found = conn.execute(f"SELECT match_key, {names} FROM members ORDER BY match_key").fetchall()
    return {row[0]: row[1:] for row in found}


def test_member_fields_and_event_columns_are_the_union_of_the_feeds():
    fields = model.member_fields(FEEDS)
    assert fields == [
        *("email", "mobile", "firstname", "lastname", "birthdate", "sex", "address"),
        *("postalcode", "city", "cardnumber", "customer_no", "language"),
    ]  # the list's names, in the source mappings' order; custom fields under their own name
    assert model.event_columns(FEEDS) == [r.target for r in FP_JOURNALS.fields]


def test_the_same_email_in_two_integrations_is_one_member(conn):
    feed_fp(fp_customer(1, "2025-01-01T10:00:00", Email="Anna.Berg@Example.DK"))
    feed_tm(tm_customer("t1", "2025-01-01T10:00:00Z", email="anna.berg@example.dk"))
    counts = build(conn)
    assert counts == {
        "members": 1,
        "merged_across_sources": 1,
        "withdrawn": 0,
        "source_records": 2,
    }
    assert members(conn, "sources", "source_records") == {"anna.berg@example.dk": (["fp", "tm"], 2)}


def test_the_latest_non_empty_value_of_each_field_wins(conn):
    feed_fp(
        fp_customer(1, "2025-01-01T10:00:00", Email="a@example.dk", City="Aarhus"),
        fp_customer(2, "2025-03-01T10:00:00", Email="b@example.dk", FirstName="Bo"),
    )
    feed_tm(
        tm_customer("t1", "2025-02-01T10:00:00Z", email="A@example.dk", firstName="Anne"),
        tm_customer("t2", "2025-02-01T10:00:00Z", email="b@example.dk", firstName="Bob"),
    )
    build(conn)
    assert members(conn, "firstname", "city", "language") == {
        "a@example.dk": ("Anne", "Aarhus", None),  # tm is newer; only fp knows the city
        "b@example.dk": ("Bo", None, None),  # fp is newer
    }
    modified = conn.execute("SELECT modified FROM members WHERE match_key = 'a@example.dk'")
    assert modified.fetchone()[0] == datetime(2025, 2, 1, 10, tzinfo=UTC)


def test_a_tie_goes_to_the_integration_that_sorts_first(conn):
    feed_fp(fp_customer(1, "2025-01-01T10:00:00", Email="a@example.dk", FirstName="From fp"))
    feed_tm(tm_customer("t1", "2025-01-01T10:00:00Z", email="a@example.dk", firstName="From tm"))
    build(conn)
    assert members(conn, "firstname") == {"a@example.dk": ("From fp",)}


def test_fields_hash_changes_only_when_a_mapped_value_does(conn, tmp_path):
    feed_fp(fp_customer(1, "2025-01-01T10:00:00", Email="a@example.dk"))
    build(conn)
    before = conn.execute("SELECT fields_hash FROM members").fetchone()[0]
    feed_fp(fp_customer(1, "2025-01-02T10:00:00", Email="a@example.dk"))  # same values
    build(conn)
    assert conn.execute("SELECT fields_hash FROM members").fetchone()[0] == before
    feed_fp(fp_customer(1, "2025-01-03T10:00:00", Email="a@example.dk", FirstName="New"))
    build(conn)
    assert conn.execute("SELECT fields_hash FROM members").fetchone()[0] != before


def test_consent_withdrawn_after_it_was_given_withdraws_the_member(conn):
    feed_tm(tm_customer("t1", "2025-01-01T10:00:00Z", consent=True))
    build(conn)
    assert members(conn, "withdrawn") == {"t1@example.dk": (False,)}

    feed_tm(tm_customer("t1", "2025-02-01T10:00:00Z", consent=False))
    counts = build(conn)
    assert counts["withdrawn"] == 1
    assert members(conn, "withdrawn") == {"t1@example.dk": (True,)}


def test_never_consented_customers_are_not_members(conn):
    feed_tm(
        tm_customer("never", "2025-01-01T10:00:00Z", consent=False),
        tm_customer("yes", "2025-01-01T10:00:00Z", consent=True),
    )
    feed_fp(fp_customer(1, "2025-01-01T10:00:00"))  # FlexPOS has no consent field: a member
    counts = build(conn)
    assert set(members(conn, "withdrawn")) == {"yes@example.dk", "fp1@example.dk"}
    assert counts["withdrawn"] == 0


def test_quarantined_customers_are_not_members(conn):
    feed_fp(
        fp_customer(1, "2025-01-01T10:00:00"),
        fp_customer(2, "2025-01-01T10:00:00", Email="broken"),
    )
    assert build(conn)["members"] == 1


def test_events_join_their_customer_member_and_skip_unknown_and_withdrawn(conn):
    feed_fp(
        fp_customer(1, "2025-01-01T10:00:00", Email="anna@example.dk"),
        fp_customer(2, "2025-01-01T10:00:00", Email="bo@example.dk"),
    )
    feed_tm(
        tm_customer("t2", "2025-01-01T10:00:00Z", email="bo@example.dk", consent=True),
        tm_customer("t2", "2025-02-01T10:00:00Z", email="bo@example.dk", consent=False),
    )
    feed_journals(
        journal("J1", 1, ["P1", "P2"]),
        journal("J2", 2, ["P3"]),  # bo withdrew consent at tm
        journal("J3", 99, ["P4"]),  # no such customer
        journal("J4", None, ["P5"]),  # anonymous sale: never staged
    )
    build(conn)
    counts = model.build_tracking_events(conn, FEEDS)

    assert counts == {"events": 2, "without_member": 2, "integrations": 1}
    found = conn.execute(
        "SELECT event_id, integration, entity, business_date, match_key, product_id "
        "FROM tracking_events ORDER BY event_id"
    ).fetchall()
    march = date(2025, 3, 1)
    assert found == [
        ("fp:journals:J1:1", "fp", "journals", march, "anna@example.dk", "P1"),
        ("fp:journals:J1:2", "fp", "journals", march, "anna@example.dk", "P2"),
    ]


def test_an_empty_list_builds_empty_tables(conn):
    assert model.build_members(conn, FEEDS)["members"] == 0
    assert model.build_tracking_events(conn, FEEDS)["events"] == 0
    columns = [r[0] for r in conn.execute("DESCRIBE members").fetchall()]
    assert {"match_key", "sources", "withdrawn", "fields_hash", "email"} <= set(columns)


def test_purchases_of_a_customer_who_never_consented_are_not_sent(conn):
    """TM2: the FlexPOS member anna is on the list, but her Ticketmaster self never consented,
    so her Ticketmaster orders must not reach the activity feed through the FlexPOS member."""
    tm_orders = load_mapping("ticketmaster", "orders")
    feeds = [
        model.Feed("fp", FP_CUSTOMERS, (), HEYLOYALTY),
        model.Feed("tm", TM_CUSTOMERS, (tm_orders,), HEYLOYALTY),
    ]
    feed_fp(fp_customer(1, "2025-01-01T10:00:00", Email="anna@example.dk"))
    feed_tm(tm_customer("t1", "2025-01-01T10:00:00Z", email="anna@example.dk", consent=False))
    order = {
        "orderId": "O1",
        "customerId": "t1",
        "orderDate": "2025-03-01T12:00:00Z",
        "modifiedDate": "2025-03-01T12:00:00Z",
        "tickets": [{"eventId": "E1", "eventName": "Koncert", "price": 300, "status": "sold"}],
    }
    landing.land_pages(
        FakeSource("orderId", "modifiedDate", day="orderDate"), "tm", "orders", [[order]]
    )
    staging.stage_members(conn, FP_CUSTOMERS, FP_SETTINGS)
    staging.stage_members(conn, TM_CUSTOMERS, TM_SETTINGS)
    staging.stage_events(conn, tm_orders, TM_SETTINGS)
    model.build_members(conn, feeds)
    counts = model.build_tracking_events(conn, feeds)
    assert counts["events"] == 0 and counts["without_member"] == 1


# --- canonical profile, target names, merge keys, tombstones, segments ---------------------------


def test_member_profile_keeps_canonical_names_and_members_the_targets(conn):
    feed_fp(fp_customer(1, "2025-01-01T10:00:00", Gender="F", BirthDate="1990-12-31T00:00:00"))
    build(conn)
    profile = conn.execute("SELECT first_name, gender, birthday FROM member_profile").fetchall()
    assert profile == [("Fp1", "f", "1990-12-31")]
    assert members(conn, "firstname", "sex", "birthdate") == {
        "fp1@example.dk": ("Fp1", "2", "1990-12-31")  # the option id the list took before
    }
    columns = [r[0] for r in conn.execute("DESCRIBE members").fetchall()]
    assert "gender" not in columns and "first_name" not in columns and "groups" not in columns


def test_fields_hash_is_the_hash_of_the_target_columns_as_before(conn):
    """Members sent before the split must not all be sent again: same names, same values, same
    hash as the old model computed (md5 of the JSON object of the fields in mapping order)."""
    feed_fp(fp_customer(1, "2025-01-01T10:00:00", Gender="M"))
    build(conn)
    names = model.member_fields(FEEDS)
    pairs = ", ".join(f"'{n}', \"{n}\"" for n in names)
    expected = conn.execute(f"SELECT md5(json_object({pairs})::VARCHAR) FROM members").fetchone()
    assert conn.execute("SELECT fields_hash FROM members").fetchone() == expected


def stage_fp(conn, match_on: str) -> None:
    settings = staging.StageSettings(
        "fp", ",", "%Y-%m-%dT%H:%M:%S", "DK", match_on, source_kind="flexpos"
    )
    staging.stage_members(conn, FP_CUSTOMERS, settings)


def card_feed(target: target_mapping.TargetMapping | None = None) -> list[model.Feed]:
    mapping = load_mapping(
        "flexpos",
        "customers",
        {"card": {"type": "object", "fields": {"number": "cards.Cardnumber"}}},
    )
    return [model.Feed("fp", mapping, (), target)]


CARDS = target_mapping.TargetMapping(
    target="crm",
    fields=(
        target_mapping.TargetField("cards", "card", collect=True),
        target_mapping.TargetField("client_id", "external_id"),
    ),
)


def test_merge_by_phone_makes_one_member_with_every_card_and_a_survivor_per_field(conn):
    feed_fp(
        fp_customer(3, "2025-01-01T10:00:00", Mobile="12345678", cards=[{"Cardnumber": 30}]),
        fp_customer(2, "2025-02-01T10:00:00", Mobile="+45 12 34 56 78", cards=[{"Cardnumber": 20}]),
        fp_customer(1, "2025-02-01T10:00:00", Mobile="12345678", FirstName="Tie"),
        fp_customer(4, "2025-01-01T10:00:00", Mobile="87654321", cards=[{"Cardnumber": 40}]),
    )
    feeds = card_feed(CARDS)
    mapping = feeds[0].members
    settings = staging.StageSettings("fp", ",", "%Y-%m-%dT%H:%M:%S", "DK", "mobile", "", "flexpos")
    staging.stage_members(conn, mapping, settings)
    counts = model.build_members(conn, feeds)
    assert counts["members"] == 2 and counts["source_records"] == 4
    found = conn.execute(
        "SELECT match_key, cards, client_id, first_name, source_records FROM members "
        "ORDER BY match_key"
    ).fetchall()
    assert found == [
        # cards of every merged record, distinct, by record id; on a modified tie the lower
        # record id survives (record 1 over 2, both newest); record 1 has no card
        ("+4512345678", ['{"number":"20"}', '{"number":"30"}'], "flexpos:1", "Tie", 3),
        ("+4587654321", ['{"number":"40"}'], "flexpos:4", "Fp4", 1),
    ]
    assert model.member_fields(feeds)[-2:] == ["cards", "client_id"]
    assert model.match_field(feeds, "external_id") == "client_id"


def test_merge_off_keeps_one_member_per_record_even_with_a_shared_phone(conn):
    feed_fp(
        fp_customer(1, "2025-01-01T10:00:00", Mobile="12345678"),
        fp_customer(2, "2025-01-01T10:00:00", Mobile="12345678"),
    )
    feeds = card_feed(CARDS)
    settings = staging.StageSettings(
        "fp", ",", "%Y-%m-%dT%H:%M:%S", "DK", "external_id", "", "flexpos"
    )
    staging.stage_members(conn, feeds[0].members, settings)
    model.build_members(conn, feeds)
    assert members(conn, "mobile", "client_id") == {
        "flexpos:1": ("+4512345678", "flexpos:1"),
        "flexpos:2": ("+4512345678", "flexpos:2"),
    }


def tombstone(cid: int) -> dict[str, Any]:
    return {"CustomerId": cid, "Modified": "2025-01-01T10:00:00", "_memberflow_deleted": True}


def test_a_deleted_record_withdraws_its_member_only_when_no_live_record_remains(conn):
    feed_fp(
        fp_customer(1, "2025-01-01T10:00:00", Mobile="12345678", City="Aarhus"),
        fp_customer(2, "2025-01-01T10:00:00", Mobile="12345678"),
        fp_customer(3, "2025-01-01T10:00:00", Mobile="87654321"),
    )
    feed_fp(tombstone(1), tombstone(3))
    feeds = [model.Feed("fp", FP_CUSTOMERS, (), HEYLOYALTY)]
    stage_fp(conn, "mobile")
    counts = model.build_members(conn, feeds)
    assert counts["withdrawn"] == 1
    assert members(conn, "withdrawn", "source_records", "city", "email") == {
        "+4512345678": (False, 1, None, "fp2@example.dk"),  # record 1's city went with it
        "+4587654321": (True, 1, None, "fp3@example.dk"),  # all gone: taken off the list
    }


def test_a_deleted_record_in_one_integration_does_not_withdraw_the_others_member(conn):
    feed_fp(fp_customer(1, "2025-01-01T10:00:00", Email="a@example.dk"))
    feed_tm(tm_customer("t1", "2025-01-01T10:00:00Z", email="a@example.dk"))
    feed_fp(tombstone(1))
    counts = build(conn)
    assert counts["withdrawn"] == 0
    assert members(conn, "sources", "withdrawn") == {"a@example.dk": (["tm"], False)}


def test_segments_add_a_sorted_groups_column(conn):
    feed_fp(
        fp_customer(1, "2025-01-01T10:00:00", BirthDate="1990-03-05T00:00:00"),
        fp_customer(2, "2025-01-01T10:00:00", BirthDate="1990-07-05T00:00:00"),
    )
    staging.stage_members(conn, FP_CUSTOMERS, FP_SETTINGS)
    birthday = [
        segments.SegmentSettings.model_validate({"name": name, "rule": rule})
        for name, rule in (
            ("z_birthday_this_month", {"anniversary_of": "birthday", "within": "month"}),
            ("a_birthday_soon", {"anniversary_of": "birthday", "within_days": 7}),
        )
    ]
    counts = model.build_members(conn, FEEDS, birthday, date(2025, 3, 1))
    assert counts["segment_members"] == 2
    assert members(conn, "groups") == {
        "fp1@example.dk": (["a_birthday_soon", "z_birthday_this_month"],),
        "fp2@example.dk": ([],),  # in no group: an empty list, not NULL
    }
    assert "groups" not in model.member_fields(FEEDS)  # groups travel apart from fields


def test_the_segments_day_is_the_runs_setting_then_the_env_then_today_in_the_zone(monkeypatch):
    from zoneinfo import ZoneInfo

    from assets.model import resolve_today

    monkeypatch.setenv("MEMBERFLOW_TODAY", "2025-06-01")
    assert resolve_today("2025-03-01", "UTC") == date(2025, 3, 1)
    assert resolve_today(None, "UTC") == date(2025, 6, 1)
    monkeypatch.delenv("MEMBERFLOW_TODAY")
    # UTC+14: its date is the local one, not the UTC one, for ten hours of every day
    assert (
        resolve_today(None, "Pacific/Kiritimati")
        == datetime.now(ZoneInfo("Pacific/Kiritimati")).date()
    )
