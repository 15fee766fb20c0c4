"""Staging: landing files -> staged DuckDB tables + quarantine, incremental and replayable.

The landing files are written by `landing.land_pages` through a hand-written stand-in for a
source client: these tests are about the DuckDB logic, not about any vendor's API.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import duckdb
import pytest

from memberflow import landing, staging
from memberflow.mapping import load_mapping
from memberflow.warehouse import warehouse_config
from resources.base import RecordMeta

FLEXPOS_FORMAT = "%Y-%m-%dT%H:%M:%S"


class FakeSource:
    """Just enough of a SourceClient for `land_pages`: id, modified and business date."""

    def __init__(self, id_field: str, modified: str = "Modified", day: str | None = None):
        self.id_field, self.modified, self.day = id_field, modified, day

    def record_meta(self, entity: str, record: dict[str, Any]) -> RecordMeta:
        modified = datetime.fromisoformat(record[self.modified]).replace(tzinfo=UTC)
        business = date.fromisoformat(record[self.day][:10]) if self.day else None
        return RecordMeta(str(record[self.id_field]), modified, business)

    def tombstone_meta(self, entity: str, record: dict[str, Any], deleted_at: datetime):
        """A deleted record: its id, and the fetch time as its modified time."""
        return RecordMeta(str(record[self.id_field]), deleted_at, None)


CUSTOMERS = FakeSource("CustomerId")
JOURNALS = FakeSource("JournalId", day="Date")


@pytest.fixture()
def conn(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    database = tmp_path / "w.duckdb"  # bounded and unordered, as every warehouse
    connection = duckdb.connect(str(database), config=warehouse_config(database))
    yield connection
    connection.close()


def settings(match_on: str = "email", separator: str = ",") -> staging.StageSettings:
    return staging.StageSettings(
        integration="fp",
        separator=separator,
        date_format=FLEXPOS_FORMAT,
        phone_region="DK",
        match_on=match_on,
        run_id="run-1",
    )


def customer(cid: int, modified: str = "2025-01-01T10:00:00", **fields: Any) -> dict[str, Any]:
    record = {
        "CustomerId": cid,
        "CustomerNo": f"K{cid:07d}",
        "FirstName": f"First{cid}",
        "LastName": f"Last{cid}",
        "Email": f"c{cid}@example.dk",
        "Mobile": None,
        "BirthDate": None,
        "Gender": "F",
        "cards": [],
        "Modified": modified,
    }
    record.update(fields)
    return record


def journal(jid: str, customer_id: int | None, lines: list[dict], **fields: Any) -> dict:
    record = {
        "JournalId": jid,
        "CustomerId": customer_id,
        "Date": "2025-03-01T12:30:00",
        "Currency": "DKK",
        "StoreName": "Aarhus",
        "Lines": lines,
        "Modified": "2025-03-01T12:31:00",
    }
    record.update(fields)
    return record


def line(product: str, amount: Any = "10.00") -> dict[str, Any]:
    return {"ProductId": product, "ProductName": f"Product {product}", "Amount": amount}


def land(source: FakeSource, entity: str, *records: dict[str, Any]) -> landing.LandingStats:
    return landing.land_pages(source, "fp", entity, [list(records)])


def rows(conn, sql: str) -> list[tuple]:
    return conn.execute(sql).fetchall()


def staged(conn, column: str = "first_name") -> dict[str, Any]:
    return dict(rows(conn, f'SELECT record_id, "{column}" FROM stg_fp_customers'))


def quarantined(conn, entity: str = "customers") -> dict[str, str]:
    return dict(rows(conn, f"SELECT record_id, reason FROM quarantine WHERE entity = '{entity}'"))


# --- members ----------------------------------------------------------------------------------


def test_landing_writes_parquet_by_day_and_the_cursor_round_trips(conn, tmp_path):
    stats = land(JOURNALS, "journals", journal("J1", 1, [line("P1")]))
    assert stats.records == 1 and stats.pages == 1 and stats.days == {date(2025, 3, 1)}
    assert landing.day_files("fp", "journals", [date(2025, 3, 1)]) == stats.files
    assert stats.files[0].startswith(str(tmp_path / "data" / "landing" / "fp" / "journals"))
    assert stats.high_water_mark == datetime(2025, 3, 1, 12, 31, tzinfo=UTC)
    assert landing.read_cursor("fp", "journals") is None
    landing.write_cursor("fp", "journals", stats.high_water_mark)
    assert landing.read_cursor("fp", "journals") == stats.high_water_mark


def test_a_bad_match_key_withholds_the_row_and_a_bad_optional_field_only_drops_the_field(conn):
    mapping = load_mapping("flexpos", "customers")
    land(
        CUSTOMERS,
        "customers",
        customer(1, Email="Anna@Example.DK", Mobile="12 34 56 78", BirthDate="1990-12-31T00:00:00"),
        customer(2, Email="not-an-email"),
        customer(3, Mobile="1234"),
        customer(4, Email=None),
        customer(5, BirthDate="31/12/1990"),
        customer(6, Gender="X"),
        customer(7, cards=[{"Cardnumber": 40000001}, {"Cardnumber": 40000002}]),
    )
    result = staging.stage_members(conn, mapping, settings())

    assert (result.staged, result.quarantined, result.files_read) == (5, 2, 1)
    assert result.fields_dropped == 3
    assert result.full_rebuild
    assert rows(
        conn,
        "SELECT record_id, email, mobile, birthday, gender, match_key, cardnumber "
        "FROM stg_fp_customers ORDER BY record_id",
    ) == [
        ("1", "anna@example.dk", "+4512345678", "1990-12-31", "f", "anna@example.dk", None),
        ("3", "c3@example.dk", None, None, "f", "c3@example.dk", None),
        ("5", "c5@example.dk", None, None, "f", "c5@example.dk", None),
        ("6", "c6@example.dk", None, None, None, "c6@example.dk", None),
        ("7", "c7@example.dk", None, None, "f", "c7@example.dk", "40000001,40000002"),
    ]
    reasons = {
        rid: (field, action, reason)
        for rid, field, action, reason in rows(
            conn, "SELECT record_id, field, action, reason FROM quarantine"
        )
    }
    assert reasons["2"][:2] == ("email", "row withheld")
    assert reasons["2"][2].startswith("email: invalid email 'n***'")  # masked, never the address
    assert reasons["4"] == ("email", "row withheld", "email: missing (the match key)")
    assert reasons["3"][:2] == ("mobile", "field dropped")
    assert reasons["3"][2] == "mobile: invalid mobile '**34': not a possible number in DK"
    assert reasons["5"][:2] == ("birthday", "field dropped")
    assert reasons["5"][2].startswith("birthday: unreadable date '31/12/1990'")
    assert reasons["6"][:2] == ("gender", "field dropped")
    assert reasons["6"][2].startswith("gender: no option for 'X'")
    assert result.reasons == {"email: invalid email": 1, "email: missing": 1}
    assert result.drop_reasons == {
        "mobile: invalid mobile": 1,
        "birthday: unreadable date": 1,
        "gender: no option for": 1,
    }
    payload, run_id = rows(conn, "SELECT payload, run_id FROM quarantine WHERE record_id = '2'")[0]
    assert '"Email":"not-an-email"' in payload and run_id == "run-1"


def test_a_required_field_withholds_the_row(conn):
    mapping = load_mapping(
        "flexpos", "customers", {"first_name": {"path": "FirstName", "required": True}}
    )
    land(CUSTOMERS, "customers", customer(1, FirstName="x" * 300), customer(2))
    result = staging.stage_members(conn, mapping, settings())
    assert (result.staged, result.quarantined, result.fields_dropped) == (1, 1, 0)
    ((field, action, reason),) = rows(conn, "SELECT field, action, reason FROM quarantine")
    assert (field, action) == ("first_name", "row withheld")
    assert reason.startswith("first_name: longer than 255 characters (300)") and len(reason) < 120


def test_match_on_mobile_uses_the_canonical_mobile(conn):
    mapping = load_mapping("flexpos", "customers")
    land(
        CUSTOMERS,
        "customers",
        customer(1, Mobile="0045 12345678"),
        customer(2, Mobile=None),
    )
    result = staging.stage_members(conn, mapping, settings(match_on="mobile"))
    assert staged(conn, "match_key") == {"1": "+4512345678"}
    assert quarantined(conn) == {"2": "mobile: missing (the match key)"}
    assert result.staged == 1


def test_external_id_is_computed_from_the_source_kind_and_can_be_the_match_key(conn):
    land(CUSTOMERS, "customers", customer(1), customer(2, Email=None))
    kind_settings = staging.StageSettings(
        "fp", ",", FLEXPOS_FORMAT, "DK", "external_id", "run-1", source_kind="flexpos"
    )
    result = staging.stage_members(conn, load_mapping("flexpos", "customers"), kind_settings)
    assert result.staged == 2  # no email is no problem when the key is the record itself
    assert rows(
        conn, "SELECT record_id, external_id, match_key FROM stg_fp_customers ORDER BY 1"
    ) == [("1", "flexpos:1", "flexpos:1"), ("2", "flexpos:2", "flexpos:2")]


def tombstone(cid: int, **fields: Any) -> dict[str, Any]:
    return {
        "CustomerId": cid,
        "Modified": "2025-01-01T10:00:00",
        "_memberflow_deleted": True,
        **fields,
    }


def test_a_tombstone_stages_the_last_live_version_as_withdrawn(conn):
    mapping = load_mapping("flexpos", "customers")
    land(CUSTOMERS, "customers", customer(1, FirstName="Anna"), customer(2))
    staging.stage_members(conn, mapping, settings())
    land(CUSTOMERS, "customers", tombstone(1))  # fetched later: the record is gone
    result = staging.stage_members(conn, mapping, settings())
    assert result.staged == 1 and result.quarantined == 0
    assert rows(
        conn,
        "SELECT record_id, first_name, match_key, consent, ever_consented, deleted "
        "FROM stg_fp_customers ORDER BY 1",
    ) == [
        ("1", "Anna", "c1@example.dk", False, True, True),
        ("2", "First2", "c2@example.dk", None, False, False),
    ]


def test_a_record_seen_again_after_its_tombstone_is_live_again(conn):
    mapping = load_mapping("flexpos", "customers")
    land(CUSTOMERS, "customers", customer(1))
    land(CUSTOMERS, "customers", tombstone(1))
    land(CUSTOMERS, "customers", customer(1, "2025-02-01T10:00:00", FirstName="Back"))
    staging.stage_members(conn, mapping, settings())
    assert rows(conn, "SELECT first_name, consent, deleted FROM stg_fp_customers") == [
        ("Back", None, False)
    ]


def test_a_tombstone_of_a_record_never_seen_is_skipped(conn):
    mapping = load_mapping("flexpos", "customers")
    land(CUSTOMERS, "customers", tombstone(9, Email="c9@example.dk"))
    result = staging.stage_members(conn, mapping, settings())
    assert (result.staged, result.quarantined, result.skipped) == (0, 0, 1)


def test_incremental_staging_restages_only_touched_records_and_latest_modified_wins(conn):
    mapping = load_mapping("flexpos", "customers")
    land(CUSTOMERS, "customers", customer(1), customer(2), customer(3, "2025-01-05T10:00:00"))
    first = staging.stage_members(conn, mapping, settings())
    assert (first.staged, first.full_rebuild) == (3, True)

    land(
        CUSTOMERS,
        "customers",
        customer(2, "2025-01-02T10:00:00", FirstName="Bo"),
        customer(3, "2025-01-03T10:00:00", FirstName="Older"),  # landed later, modified earlier
        customer(4),
    )
    second = staging.stage_members(conn, mapping, settings())
    assert (second.files_read, second.full_rebuild) == (1, False)
    assert second.staged == 3  # records 2, 3 and 4; record 1 is not touched
    assert staged(conn) == {"1": "First1", "2": "Bo", "3": "First3", "4": "First4"}

    nothing = staging.stage_members(conn, mapping, settings())
    assert (nothing.files_read, nothing.staged, nothing.full_rebuild) == (0, 0, False)
    assert len(staged(conn)) == 4


def test_a_fixed_record_leaves_quarantine_and_a_broken_one_leaves_the_staged_table(conn):
    mapping = load_mapping("flexpos", "customers")
    land(CUSTOMERS, "customers", customer(1, Email="broken"), customer(2))
    staging.stage_members(conn, mapping, settings())
    assert set(quarantined(conn)) == {"1"} and set(staged(conn)) == {"2"}

    land(
        CUSTOMERS,
        "customers",
        customer(1, "2025-01-02T10:00:00"),
        customer(2, "2025-01-02T10:00:00", Email="broken"),
    )
    staging.stage_members(conn, mapping, settings())
    assert set(quarantined(conn)) == {"2"} and set(staged(conn)) == {"1"}


def test_a_mapping_change_replays_history_without_new_landing_files(conn):
    land(
        CUSTOMERS,
        "customers",
        customer(1, BirthDate="1990-12-31T00:00:00", StoreId="S1"),
        customer(2, BirthDate="garbage", StoreId="S2"),
    )
    land(CUSTOMERS, "customers", customer(3, StoreId="S3"))
    before = staging.stage_members(conn, load_mapping("flexpos", "customers"), settings())
    assert (before.staged, before.quarantined, before.fields_dropped) == (3, 0, 1)
    files = landing.day_files("fp", "customers")

    changed = load_mapping("flexpos", "customers", {"birthday": None, "store": "StoreId"})
    after = staging.stage_members(conn, changed, settings())

    assert landing.day_files("fp", "customers") == files  # nothing fetched or landed
    assert after.full_rebuild and after.files_read == 2
    assert (after.staged, after.quarantined) == (3, 0)
    assert staged(conn, "store") == {"1": "S1", "2": "S2", "3": "S3"}
    columns = [r[0] for r in rows(conn, "DESCRIBE stg_fp_customers")]
    assert "store" in columns and "birthday" not in columns
    assert quarantined(conn) == {}
    fingerprints = rows(conn, "SELECT DISTINCT fingerprint FROM staged_files")
    assert fingerprints == [(staging.staged_fingerprint(changed, settings()),)]

    again = staging.stage_members(conn, changed, settings())
    assert (again.full_rebuild, again.files_read) == (False, 0)


def test_never_consented_customers_are_skipped_not_quarantined(conn):
    mapping = load_mapping("ticketmaster", "customers")
    source = FakeSource("customerId", modified="modifiedDate")

    def tm(cid: str, consent: bool, modified: str, email: str | None = None) -> dict:
        return {
            "customerId": cid,
            "email": email if email is not None else f"{cid}@example.dk",
            "marketingConsent": consent,
            "modifiedDate": modified,
        }

    landing.land_pages(
        source,
        "fp",
        "customers",
        [
            [
                tm("never", False, "2025-01-01T10:00:00"),
                tm("never-bad", False, "2025-01-01T10:00:00", email="broken"),
                tm("withdrew", True, "2025-01-01T10:00:00"),
                tm("withdrew", False, "2025-01-02T10:00:00"),
                tm("yes", True, "2025-01-01T10:00:00"),
            ]
        ],
    )
    result = staging.stage_members(
        conn,
        mapping,
        staging.StageSettings("fp", ",", "%Y-%m-%dT%H:%M:%SZ", "DK", "email"),
    )
    assert result.skipped == 2 and result.quarantined == 0
    state = rows(
        conn,
        "SELECT record_id, consent, ever_consented FROM stg_fp_customers "
        "WHERE record_id IN ('withdrew', 'yes') ORDER BY record_id",
    )
    assert state == [("withdrew", False, True), ("yes", True, True)]


def test_a_mapping_change_after_an_empty_first_run_rebuilds_the_table(conn):
    first = staging.stage_members(conn, load_mapping("flexpos", "customers"), settings())
    assert first.full_rebuild and first.staged == 0
    land(CUSTOMERS, "customers", customer(1, StoreId="S1"))
    changed = load_mapping("flexpos", "customers", {"store": "StoreId"})
    result = staging.stage_members(conn, changed, settings())
    assert result.full_rebuild
    assert staged(conn, "store") == {"1": "S1"}


# --- events -----------------------------------------------------------------------------------


def events(conn) -> list[tuple]:
    return rows(
        conn,
        "SELECT event_id, customer_id, business_date, product_id, amount, currency, date "
        "FROM stg_fp_journals ORDER BY event_id",
    )


def test_events_are_exploded_per_line_with_ids_and_anonymous_sales_skipped(conn):
    mapping = load_mapping("flexpos", "journals")
    land(
        JOURNALS,
        "journals",
        journal("J1", 1001, [line("P1", 12.5), line("P2", "7,00")]),
        journal("J2", None, [line("P3")]),
        journal("J3", 1002, [line("P4", "lots")]),
        journal("J4", 1003, []),
    )
    result = staging.stage_events(conn, mapping, settings())

    march = date(2025, 3, 1)
    assert events(conn) == [
        ("fp:journals:J1:1", "1001", march, "P1", "12.5", "DKK", "2025-03-01 12:30:00"),
        ("fp:journals:J1:2", "1001", march, "P2", "7", "DKK", "2025-03-01 12:30:00"),
        ("fp:journals:J3:1", "1002", march, "P4", None, "DKK", "2025-03-01 12:30:00"),
    ]
    # skipped: J2 (anonymous sale, FP-A5) and J4 (no lines): counted, not lost; J3's amount is
    # optional, so the line is staged without it and the drop reported
    assert (result.staged, result.skipped, result.quarantined, result.fields_dropped) == (
        3, 2, 0, 1)  # fmt: skip
    assert quarantined(conn, "journals") == {"J3": "amount: not a number: 'lots' (line 1)"}
    (payload,) = conn.execute("SELECT payload FROM quarantine WHERE record_id = 'J3'").fetchall()[0]
    assert '"lots"' in payload  # the raw record is kept beside the reason, for the user


def test_a_required_event_date_that_is_unreadable_quarantines_the_event(conn):
    mapping = load_mapping("flexpos", "journals")
    land(JOURNALS, "journals", journal("J1", 1001, [line("P1")], Date="2025-03-01T25:99:00"))
    result = staging.stage_events(conn, mapping, settings())
    assert result.quarantined == 1 and events(conn) == []
    assert quarantined(conn, "journals")["J1"].startswith("date: unreadable date")


def test_a_changed_sale_replaces_its_lines_and_other_days_are_not_reread(conn):
    mapping = load_mapping("flexpos", "journals")
    land(
        JOURNALS,
        "journals",
        journal("J1", 1001, [line("P1"), line("P2")]),
        journal("J9", 1009, [line("P9")], Date="2025-02-01T09:00:00"),
    )
    staging.stage_events(conn, mapping, settings())
    assert len(events(conn)) == 3

    land(
        JOURNALS,
        "journals",
        journal("J1", 1001, [line("P1", "20")], Modified="2025-03-02T08:00:00"),
    )
    result = staging.stage_events(conn, mapping, settings())
    assert (result.full_rebuild, result.files_read) == (False, 2)  # both files of 2025-03-01
    assert [(e[0], e[3], e[4]) for e in events(conn)] == [
        ("fp:journals:J1:1", "P1", "20"),
        ("fp:journals:J9:1", "P9", "10"),
    ]


def test_an_event_mapping_change_replays_every_day(conn):
    land(
        JOURNALS,
        "journals",
        journal("J1", 1001, [line("P1")]),
        journal("J9", 1009, [line("P9")], Date="2025-02-01T09:00:00"),
    )
    staging.stage_events(conn, load_mapping("flexpos", "journals"), settings())
    changed = load_mapping("flexpos", "journals", {"store": None, "name": "line.ProductName"})
    result = staging.stage_events(conn, changed, settings())
    assert result.full_rebuild and result.staged == 2
    assert rows(conn, "SELECT name FROM stg_fp_journals ORDER BY name") == [
        ("Product P1",),
        ("Product P9",),
    ]


def test_a_sale_moved_to_another_day_stays_moved_when_its_old_day_is_restaged(conn):
    mapping = load_mapping("flexpos", "journals")
    land(JOURNALS, "journals", journal("J1", 1001, [line("OLD")]))
    staging.stage_events(conn, mapping, settings())
    moved = journal(
        "J1", 1001, [line("NEW")], Date="2025-03-02T10:00:00", Modified="2025-03-05T10:00:00"
    )
    land(JOURNALS, "journals", moved)
    staging.stage_events(conn, mapping, settings())
    land(JOURNALS, "journals", journal("J2", 1002, [line("P2")], Modified="2025-03-06T10:00:00"))
    staging.stage_events(conn, mapping, settings())
    assert [(e[0], e[2], e[3]) for e in events(conn)] == [
        ("fp:journals:J1:1", date(2025, 3, 2), "NEW"),
        ("fp:journals:J2:1", date(2025, 3, 1), "P2"),
    ]


# --- unreadable and ambiguous records (nothing lost, nothing collapsed) -----------------------


class StrictSource(FakeSource):
    """Like a real client: a record whose id or Modified cannot be read raises a ValueError."""

    def record_meta(self, entity: str, record: dict[str, Any]) -> RecordMeta:
        if record.get(self.id_field) in (None, ""):
            raise ValueError(f"{self.id_field}: {record.get(self.id_field)!r} is not a record id")
        try:
            return super().record_meta(entity, record)
        except (TypeError, ValueError):
            raise ValueError(f"Modified: {record.get('Modified')!r} is not a date") from None


def test_an_unreadable_record_is_landed_apart_quarantined_once_and_does_not_block_the_cursor(
    conn,
):
    source = StrictSource("JournalId", day="Date")
    mapping = load_mapping("flexpos", "journals")
    page = [
        journal("J1", 1, [line("P1")]),
        journal("J2", 1, [line("P2")], Modified="yesterday"),
        journal("J3", 1, [line("P3")], Modified=None),
        journal("J4", 1, [line("P4")], Modified="2025-13-01T10:00:00"),
        journal(None, 1, [line("P5")]),
    ]
    stats = landing.land_pages(source, "fp", "journals", [page])
    assert (stats.records, stats.unreadable) == (1, 4)
    assert stats.high_water_mark == datetime(2025, 3, 1, 12, 31, tzinfo=UTC)  # J1 moves it
    assert len(landing.unreadable_files("fp", "journals")) == 1

    result = staging.stage_events(conn, mapping, settings())
    assert (result.staged, result.unreadable, result.quarantined) == (1, 4, 4)
    land_rows = rows(
        conn,
        "SELECT record_id, field, action, reason FROM quarantine WHERE stage = 'land' "
        "ORDER BY record_id NULLS FIRST",
    )
    assert [(r[0], r[1], r[2]) for r in land_rows] == [
        (None, "JournalId", "row withheld"),
        ("J2", "Modified", "row withheld"),
        ("J3", "Modified", "row withheld"),
        ("J4", "Modified", "row withheld"),
    ]
    assert land_rows[1][3] == "unreadable record: Modified: 'yesterday' is not a date"

    # served again by the source: landed again, but quarantined once
    landing.land_pages(source, "fp", "journals", [page[1:]])
    again = staging.stage_events(conn, mapping, settings())
    assert again.unreadable == 0
    assert rows(conn, "SELECT count(*) FROM quarantine WHERE stage = 'land'") == [(4,)]


def test_one_id_twice_in_one_batch_with_different_content_is_withheld_not_collapsed(conn):
    mapping = load_mapping("flexpos", "customers")
    land(
        CUSTOMERS,
        "customers",
        customer(1, Email="anna@example.dk"),
        customer(1, Email="bo@example.dk"),  # same id, same Modified, other person
        customer(2),
        customer(2),  # an identical duplicate is just a duplicate
    )
    result = staging.stage_members(conn, mapping, settings())
    assert (result.staged, result.quarantined) == (1, 1)
    assert set(staged(conn)) == {"2"}
    ((reason, action),) = rows(conn, "SELECT reason, action FROM quarantine")
    assert reason.startswith("record_id: arrived more than once") and action == "row withheld"


def test_ambiguous_journal_lines_are_withheld_with_their_record(conn):
    mapping = load_mapping("flexpos", "journals")
    land(
        JOURNALS,
        "journals",
        journal("J1", 1, [line("P1"), line("P2")]),
        journal("J1", 1, [line("P9")]),
    )
    result = staging.stage_events(conn, mapping, settings())
    assert result.staged == 0 and result.quarantined in (1, 2)
    assert {r[0] for r in rows(conn, "SELECT record_id FROM quarantine")} == {"J1"}


def test_every_line_of_a_long_journal_is_staged_once_with_its_line_number(conn):
    mapping = load_mapping("flexpos", "journals")
    lines = [line(f"P{n}", n) for n in range(1, 2001)]
    land(JOURNALS, "journals", journal("J1", 1, lines), journal("J2", 2, lines[:3]))
    result = staging.stage_events(conn, mapping, settings())
    assert result.staged == 2003
    staged_lines = rows(
        conn,
        "SELECT record_id, line_no, product_id, amount, currency FROM stg_fp_journals "
        "ORDER BY record_id, line_no",
    )
    assert [(r, n) for r, n, *_ in staged_lines] == [("J1", n) for n in range(1, 2001)] + [
        ("J2", 1),
        ("J2", 2),
        ("J2", 3),
    ]
    assert all(p == f"P{n}" and a == str(n) and c == "DKK" for _, n, p, a, c in staged_lines)
    assert result.rows_by_day == {date(2025, 3, 1): 2003}


def test_an_existing_quarantine_table_gets_the_field_and_action_columns(conn):
    conn.execute(
        """CREATE TABLE quarantine (
            integration VARCHAR, entity VARCHAR, stage VARCHAR, record_id VARCHAR,
            match_key VARCHAR, reason VARCHAR, payload VARCHAR,
            quarantined_at TIMESTAMPTZ DEFAULT current_timestamp, run_id VARCHAR)"""
    )
    conn.execute("INSERT INTO quarantine (record_id, reason) VALUES ('old', 'kept')")
    staging.ensure_bookkeeping(conn)
    assert rows(conn, "SELECT record_id, field, action FROM quarantine") == [("old", None, None)]


def test_a_new_match_key_restages_every_record_from_raw(conn):
    """Merge by phone on or off re-keys the staged records without fetching anything."""
    mapping = load_mapping("flexpos", "customers")
    land(CUSTOMERS, "customers", customer(1, Mobile="12345678"))
    staging.stage_members(conn, mapping, settings())
    assert staged(conn, "match_key") == {"1": "c1@example.dk"}
    result = staging.stage_members(conn, mapping, settings(match_on="mobile"))
    assert result.full_rebuild and staged(conn, "match_key") == {"1": "+4512345678"}


# --- events with several customers, a cancelled flag, deletions ----------------------------------

REGISTRATIONS = FakeSource("RegistrationId", modified="DateCreated", day="DateCreatedLocal")


def registration(rid: str, **extra: Any) -> dict[str, Any]:
    return {
        "RegistrationId": rid,
        "DateCreated": "2026-03-01T10:00:00",
        "DateCreatedLocal": "2026-03-01",
        "Person": {"Id": 7},
        "AccountOwnerId": 1,
        "IsCancelled": False,
        "Program": {"Name": "Natation"},
        **extra,
    }


def registrations(conn) -> list[tuple]:
    return rows(
        conn,
        "SELECT record_id, customer_id, list_sort(customer_ids), live "
        "FROM stg_fp_registrations ORDER BY record_id",
    )


def test_an_event_names_every_customer_and_a_cancelled_one_is_kept_but_not_live(conn):
    mapping = load_mapping("amilia", "registrations")
    land(REGISTRATIONS, "registrations", registration("AC-1"))
    land(REGISTRATIONS, "registrations", registration("AC-2", IsCancelled=True))
    staging.stage_events(conn, mapping, settings())
    assert registrations(conn) == [
        ("AC-1", "7", ["1", "7"], True),
        ("AC-2", "7", ["1", "7"], False),
    ]


def test_a_deleted_event_leaves_the_table_and_comes_back_if_seen_again(conn):
    mapping = load_mapping("amilia", "registrations")
    land(REGISTRATIONS, "registrations", registration("AC-1"), registration("AC-2"))
    staging.stage_events(conn, mapping, settings())
    land(REGISTRATIONS, "registrations", {"RegistrationId": "AC-1", "_memberflow_deleted": True})
    result = staging.stage_events(conn, mapping, settings())
    assert [r[0] for r in registrations(conn)] == ["AC-2"] and result.deleted == 1
    # a later read finds it again (a scan that missed it): the record wins over the tombstone,
    # though its own modified time is older than the tombstone's
    land(REGISTRATIONS, "registrations", registration("AC-1"))
    staging.stage_events(conn, mapping, settings())
    assert [r[0] for r in registrations(conn)] == ["AC-1", "AC-2"]


def test_staging_under_a_small_memory_cap_spills_instead_of_failing(tmp_path, monkeypatch):
    """A 64 MB warehouse (DuckDB's buffer manager) stages thousands of customers and journal
    lines in batches (here of 1,000 records; 10,000 by default, for the default 512 MB): what
    does not fit goes to the spill directory, nothing fails with Out of Memory. Staging all
    6,000 in one statement, as before, needed more than 96 MB."""
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setattr(staging, "BATCH_ROWS", 1_000)
    monkeypatch.setenv("MEMBERFLOW_WAREHOUSE_MEMORY", "64MB")
    database = tmp_path / "small.duckdb"
    filler = "x" * 200
    n = 6_000
    land(CUSTOMERS, "customers", *(customer(c, Note=filler) for c in range(n)))
    journals = (
        journal(f"J{j}", j % n, [line(f"P{k}") for k in range(4)], Note=filler) for j in range(n)
    )
    land(JOURNALS, "journals", *journals)
    with duckdb.connect(str(database), config=warehouse_config(database)) as small:
        assert small.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "61.0 MiB"
        members = staging.stage_members(small, load_mapping("flexpos", "customers"), settings())
        lines = staging.stage_events(small, load_mapping("flexpos", "journals"), settings())
        assert (members.staged, members.quarantined) == (n, 0)
        assert (lines.staged, lines.quarantined) == (4 * n, 0)
        assert small.execute(
            "SELECT count(DISTINCT record_id) FROM stg_fp_customers"
        ).fetchone() == (n,)


def test_batches_of_one_record_stage_what_one_batch_stages(tmp_path, monkeypatch):
    """Batching changes how much is read at once, never the outcome: first and incremental
    runs (new versions, a tombstone, an ambiguous record, bad fields, a re-dated sale) give the
    same tables, quarantine, counts and change log in batches of 1 as in one batch."""
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    customers, journals = load_mapping("flexpos", "customers"), load_mapping("flexpos", "journals")
    outcomes: dict[int, list] = {1: [], 10_000: []}

    def stage_both() -> None:
        for batch, seen in outcomes.items():
            monkeypatch.setattr(staging, "BATCH_ROWS", batch)
            database = tmp_path / f"batch{batch}.duckdb"
            with duckdb.connect(str(database), config=warehouse_config(database)) as conn:
                for result in (
                    staging.stage_members(conn, customers, settings()),
                    staging.stage_events(conn, journals, settings()),
                ):
                    seen.append((result.staged, result.quarantined, result.skipped, result.deleted))
                for sql in (
                    "SELECT * EXCLUDE (modified) FROM stg_fp_customers ORDER BY record_id",
                    "SELECT * EXCLUDE (modified) FROM stg_fp_journals ORDER BY event_id",
                    "SELECT record_id, reason, action FROM quarantine ORDER BY ALL",
                    'SELECT DISTINCT seq, tbl, "full", record_id, match_key, business_date FROM '
                    "stage_changes ORDER BY ALL",
                ):
                    seen.append(rows(conn, sql))

    land(
        CUSTOMERS,
        "customers",
        *(customer(c) for c in range(1, 6)),
        customer(6, Email="not an address"),
        customer(7, Email="anna@example.dk"),
        customer(7, Email="bo@example.dk"),  # same id and time, other content: withheld
    )
    land(
        JOURNALS,
        "journals",
        journal("J1", 1, [line("P1"), line("P2", "lots")]),
        journal("J2", None, [line("P3")]),
        journal("J3", 2, []),
        journal("J4", 3, [line("P4")], Date="2025-03-02T10:00:00"),
    )
    stage_both()
    land(CUSTOMERS, "customers", customer(2, "2025-02-01T10:00:00", FirstName="New"))
    land(CUSTOMERS, "customers", tombstone(3))
    land(
        JOURNALS,
        "journals",
        journal("J4", 3, [line("P5")], Date="2025-03-01T11:00:00", Modified="2025-03-05T10:00:00"),
    )
    stage_both()
    assert outcomes[1] == outcomes[10_000]
    assert outcomes[1][0][:2] == (5, 2)  # the first run's customers: 5 staged, 6 and 7 withheld
