"""Property-based: hostile source records never fail staging and never lose a row silently.

Any junk in optional fields (text of any Unicode, control and bidi characters, 300-character
strings, JSON objects and arrays, huge numbers, impossible dates) must leave every customer with a
valid match key staged, with each bad field set to NULL and reported in quarantine; journal lines
with junk in optional fields are all staged; counts add up: staged + withheld + skipped = records
(lines for events). Records whose id or Modified cannot be read are quarantined, not fatal.
"""

from __future__ import annotations

import functools
import json
import re
import tempfile
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memberflow import landing, staging
from memberflow.mapping import load_mapping
from resources.base import RecordMeta
from resources.flexpos import FlexPOSClient

FORMAT = "%Y-%m-%dT%H:%M:%S"
CUSTOMER_FIELDS = {  # source field -> canonical field; top-level paths only, so raw is easy to read
    "FirstName": "first_name",
    "LastName": "last_name",
    "Mobile": "mobile",
    "BirthDate": "birthday",
    "Gender": "gender",
    "Address": "address",
    "ZipCode": "postal_code",
    "City": "city",
    "CustomerNo": "customer_no",
}
FORBIDDEN = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
PROPERTY = settings(
    max_examples=40,
    deadline=None,
    # monkeypatch is set afresh inside each example (a new data dir each time)
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)

hostile_text = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.characters(codec="utf-8"), min_size=256, max_size=320),
    st.sampled_from(
        [
            "Anna\u202eevil",
            "\u2066x\u2069",
            "tab\there",
            "new\nline",
            "nul\x00",
            "\x85",
            "\u200f",
            "0001-01-01",
            "0001-01-01T00:00:00",
            "2025-13-01",
            "yesterday",
            "NaN",
            "Infinity",
            "1e400",
            "123",
            "not-an-email",
            "{}",
            "[1, 2]",
            '{"a": 1}',
            " ",
            "",
        ]
    ),
)
hostile_value = st.one_of(
    st.none(),
    hostile_text,
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
    st.lists(st.integers(), max_size=3),
)


@functools.cache
def _flexpos() -> FlexPOSClient:
    """A real FlexPOS client for its record_meta rules; it never connects to anything here."""
    return FlexPOSClient(pos_base_url="http://127.0.0.1:9", client_id="id", client_secret="s")


class Source:
    """The pipeline's view of a record: its id, Modified and business date (FlexPOS rules)."""

    def __init__(self, entity: str) -> None:
        self.entity = entity

    def record_meta(self, entity: str, record: dict[str, Any]) -> RecordMeta:
        return _flexpos().record_meta(entity, record)


@contextmanager
def warehouse(monkeypatch: pytest.MonkeyPatch):
    with tempfile.TemporaryDirectory() as tmp:
        monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(Path(tmp) / "data"))
        conn = duckdb.connect(str(Path(tmp) / "w.duckdb"))
        try:
            yield conn
        finally:
            conn.close()


def stage_settings() -> staging.StageSettings:
    return staging.StageSettings("fp", ",", FORMAT, "DK", "email", run_id="run-h")


def raw_text(value: Any) -> str | None:
    """What the mapping reads from a raw JSON value (json_extract_string), trimmed; None if
    there is nothing to send."""
    if value is None:
        return None
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value)
    else:
        text = str(value)
    return text.strip() or None


@given(
    customers=st.lists(
        st.fixed_dictionaries({f: hostile_value for f in CUSTOMER_FIELDS}), min_size=1, max_size=6
    )
)
@PROPERTY
def test_junk_in_optional_customer_fields_never_costs_the_customer(customers, monkeypatch):
    records = [
        {
            "CustomerId": 1000 + n,
            "Email": f"person{n}@example.dk",
            "Modified": "2025-01-01T10:00:00",
            "cards": [],
            **fields,
        }
        for n, fields in enumerate(customers)
    ]
    with warehouse(monkeypatch) as conn:
        landing.land_pages(Source("customers"), "fp", "customers", [records])
        result = staging.stage_members(conn, load_mapping("flexpos", "customers"), stage_settings())

        assert result.staged == len(records) and result.quarantined == 0  # nothing withheld
        assert result.skipped == 0 and result.fields_dropped >= 0
        targets = list(CUSTOMER_FIELDS.values())
        cols = ", ".join(f'"{t}"' for t in targets)
        staged = {
            rid: dict(zip(targets, values, strict=True))
            for rid, *values in conn.execute(
                f"SELECT record_id, {cols} FROM stg_fp_customers"
            ).fetchall()
        }
        dropped = {
            (rid, field): reason
            for rid, field, reason in conn.execute(
                "SELECT record_id, field, reason FROM quarantine WHERE action = 'field dropped'"
            ).fetchall()
        }
        assert result.fields_dropped == len(dropped)
        for record in records:
            row = staged[str(record["CustomerId"])]
            for source, target in CUSTOMER_FIELDS.items():
                value, raw = row[target], raw_text(record[source])
                if value is not None:  # what is staged is what the target takes
                    assert len(value) <= 255 and not FORBIDDEN.search(value)
                    assert (str(record["CustomerId"]), target) not in dropped
                elif raw is not None:
                    # a value that was there and is gone: reported, with field and reason
                    reason = dropped.get((str(record["CustomerId"]), target))
                    assert not (target == "gender" and raw in ("M", "F")), "a valid code dropped"
                    assert reason and reason.startswith(f"{target}: "), (target, raw)
                    assert len(reason) < 200  # never a whole 300-character value


@given(
    lines=st.lists(
        st.fixed_dictionaries(
            {"ProductId": hostile_value, "ProductName": hostile_value, "Amount": hostile_value}
        ),
        max_size=6,
    ),
    store=hostile_value,
    currency=hostile_value,
    customer=st.one_of(st.none(), st.just(1001)),
)
@PROPERTY
def test_junk_in_optional_line_fields_never_costs_the_line(
    lines, store, currency, customer, monkeypatch
):
    journal = {
        "JournalId": 500001,
        "CustomerId": customer,
        "Date": "2025-03-01T12:30:00",
        "Modified": "2025-03-01T12:31:00",
        "StoreName": store,
        "Currency": currency,
        "Lines": lines,
    }
    with warehouse(monkeypatch) as conn:
        landing.land_pages(Source("journals"), "fp", "journals", [[journal]])
        result = staging.stage_events(conn, load_mapping("flexpos", "journals"), stage_settings())
        (staged,) = conn.execute("SELECT count(*) FROM stg_fp_journals").fetchall()[0]
        line_nos = [n for (n,) in conn.execute("SELECT line_no FROM stg_fp_journals").fetchall()]

    assert result.quarantined == 0
    if customer is None or not lines:  # an anonymous sale, or a journal without lines: skipped
        assert staged == 0 and result.skipped == max(len(lines), 1)
    else:
        assert staged == result.staged == len(lines)
        assert sorted(line_nos) == list(range(1, len(lines) + 1))
    assert result.staged + result.quarantined + result.skipped == max(len(lines), 1)


@given(
    modified=st.one_of(
        st.none(),
        hostile_value,
        st.sampled_from(["2025-13-01T10:00:00", "yesterday", "", "2025-02-30T00:00:00"]),
    ),
    journal_id=st.one_of(st.none(), st.just(""), st.just([1]), st.integers(1, 9)),
)
@PROPERTY
def test_a_record_whose_id_or_modified_cannot_be_read_is_quarantined_not_fatal(
    modified, journal_id, monkeypatch
):
    good = {
        "JournalId": 777,
        "CustomerId": 1001,
        "Date": "2025-03-01T12:30:00",
        "Modified": "2025-03-01T12:31:00",
        "Lines": [{"ProductId": 1, "Amount": 10}],
    }
    hostile = {**good, "JournalId": journal_id, "Modified": modified}
    try:
        Source("journals").record_meta("journals", hostile)
        readable = True
    except ValueError:
        readable = False
    with warehouse(monkeypatch) as conn:
        stats = landing.land_pages(Source("journals"), "fp", "journals", [[good, hostile]])
        result = staging.stage_events(conn, load_mapping("flexpos", "journals"), stage_settings())
        land = conn.execute("SELECT reason FROM quarantine WHERE stage = 'land'").fetchall()

    assert stats.records + stats.unreadable == 2
    assert stats.high_water_mark is not None  # the good record still moves the cursor
    if readable:
        assert stats.unreadable == 0 and land == []
    else:
        assert stats.unreadable == 1 and result.unreadable == 1
        ((reason,),) = land
        assert reason.startswith("unreadable record: ") and len(reason) < 200
    assert result.staged >= 1


def test_a_record_with_text_that_is_not_unicode_is_quarantined_not_fatal(monkeypatch):
    good = {"CustomerId": 1, "Email": "a@example.dk", "Modified": "2025-01-01T10:00:00"}
    broken = {**good, "CustomerId": 2, "FirstName": "\ud800"}
    with warehouse(monkeypatch) as conn:
        stats = landing.land_pages(Source("customers"), "fp", "customers", [[good, broken]])
        result = staging.stage_members(conn, load_mapping("flexpos", "customers"), stage_settings())
        (reason,) = conn.execute("SELECT reason FROM quarantine").fetchall()[0]
    assert (stats.records, stats.unreadable) == (1, 1)
    assert (result.staged, result.unreadable) == (1, 1)
    assert "not valid Unicode" in reason


def test_record_meta_names_the_field_it_cannot_read():
    meta = Source("journals").record_meta
    base = {"JournalId": 1, "Date": "2025-03-01T12:30:00", "Modified": "2025-03-01T12:31:00"}
    for change, message in (
        ({"Modified": "yesterday"}, "Modified: 'yesterday' is not a date"),
        ({"Modified": None}, "Modified: None is not a date"),
        ({"Modified": "2025-13-01T10:00:00"}, "Modified: '2025-13-01T10:00:00' is not a date"),
        ({"Date": 20250301}, "Date: 20250301 is not a date"),
        ({"JournalId": None}, "JournalId: None is not a record id"),
        ({"JournalId": "  "}, "JournalId: '  ' is not a record id"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            meta("journals", {**base, **change})
    ok = meta("journals", base)
    assert ok.record_id == "1" and ok.business_date == date(2025, 3, 1)
    assert ok.modified == datetime(2025, 3, 1, 11, 31, tzinfo=UTC)  # Copenhagen local (FP-A3)
