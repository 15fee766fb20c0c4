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

from memberflow import landing, model, staging
from memberflow.mapping import load_mapping
from resources.base import RecordMeta

FP_SETTINGS = staging.StageSettings("fp", ",", "%Y-%m-%dT%H:%M:%S", "DK", "email")
TM_SETTINGS = staging.StageSettings("tm", ",", "%Y-%m-%dT%H:%M:%SZ", "DK", "email")
FP_CUSTOMERS = load_mapping("flexpos", "customers")
FP_JOURNALS = load_mapping("flexpos", "journals")
TM_CUSTOMERS = load_mapping("ticketmaster", "customers")
FEEDS = [
    model.Feed("fp", FP_CUSTOMERS, (FP_JOURNALS,)),
    model.Feed("tm", TM_CUSTOMERS, ()),
]


class FakeSource:
    """Just enough of a SourceClient for `land_pages`: id, modified and business date."""

    def __init__(self, id_field: str, modified: str, day: str | None = None):
        self.id_field, self.modified, self.day = id_field, modified, day

    def record_meta(self, entity: str, record: dict[str, Any]) -> RecordMeta:
        modified = datetime.fromisoformat(record[self.modified]).astimezone(UTC)
        business = date.fromisoformat(record[self.day][:10]) if self.day else None
        return RecordMeta(str(record[self.id_field]), modified, business)


@pytest.fixture()
def conn(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    connection = duckdb.connect(str(tmp_path / "w.duckdb"))
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
    assert fields[: len(FP_CUSTOMERS.fields)] == [r.target for r in FP_CUSTOMERS.fields]
    assert "language" in fields and len(fields) == len(set(fields))
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
    feeds = [model.Feed("fp", FP_CUSTOMERS, ()), model.Feed("tm", TM_CUSTOMERS, (tm_orders,))]
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
