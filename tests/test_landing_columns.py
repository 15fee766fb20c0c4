"""Landing a page column by column (issue 10): FlexPOS's `page_meta` reads a page's ids, modified
times and business dates with Arrow and numpy instead of `record_meta` per record. It must give
exactly what `record_meta` gives, or decline (None) so the page goes record by record; landing
must write the same rows either way.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memberflow import landing
from resources.flexpos import FlexPOSClient
from resources.source import DELETED_FLAG, RecordMeta

PROPERTY = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@functools.cache
def _flexpos() -> FlexPOSClient:
    """A FlexPOS client for its metadata rules only: nothing here calls the API."""
    return FlexPOSClient(pos_base_url="http://127.0.0.1:9", client_id="id", client_secret="s")


class RecordByRecord:
    """The same FlexPOS rules without `page_meta`: landing's record-by-record path."""

    def record_meta(self, entity: str, record: dict[str, Any]) -> RecordMeta:
        return _flexpos().record_meta(entity, record)

    def tombstone_meta(self, entity: str, record: dict[str, Any], at: datetime) -> RecordMeta:
        return _flexpos().tombstone_meta(entity, record, at)


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))


# Wall times around what makes local time hard: both DST switches, the war years' odd ones,
# 1900 (the first year page_meta reads itself), leap days; and texts it must refuse.
SPECIAL_DAYS = [
    datetime(2026, 3, 29),
    datetime(2026, 10, 25),
    datetime(1940, 5, 14),
    datetime(1942, 11, 2),
    datetime(1945, 8, 15),
    datetime(1900, 1, 1),
    datetime(2024, 2, 29),
    datetime(1980, 4, 6),
]
wall_time = st.one_of(
    st.datetimes(min_value=datetime(1899, 12, 31), max_value=datetime(2101, 1, 1)),
    st.builds(
        lambda day, minutes: day + timedelta(minutes=minutes),
        st.sampled_from(SPECIAL_DAYS),
        st.integers(-60, 25 * 60),
    ),
).map(lambda moment: moment.replace(microsecond=0).isoformat())
odd_text = st.sampled_from(
    [
        "2025-02-30T10:00:00",
        "2025-02-29T10:00:00",
        "2025-03-01T24:00:00",
        "2025-03-01T10:00:60",
        "2025-13-01T00:00:00",
        "0000-01-01T00:00:00",
        "0001-01-01T00:00:00",
        "9999-12-31T23:59:59",
        "1894-01-01T00:05:00",
        "2025-03-01 10:00:00",
        "2025-03-01T10:00:00Z",
        "2025-03-01T10:00:00+05:00",
        "2025-03-01T10:00:00.5",
        "2025-03-01",
        "2025-3-1T1:2:3",
        "\uff12025-03-01T10:00:00",
        "yesterday",
        "",
        "\ud800",
    ]
)
modified_value = st.one_of(wall_time, wall_time, wall_time, odd_text, st.none(), st.integers())
id_value = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.integers(-(2**70), 2**70),
    st.text(max_size=6),
    st.sampled_from(["  ", "\u2003", "a\ud800", True, 1.0, None, [1], {"a": 1}]),
)


def _page(ids: list[Any], modified: list[Any], dates: list[Any]) -> list[dict[str, Any]]:
    return [
        {"JournalId": i, "CustomerId": i, "Date": d, "Modified": m}
        for i, m, d in zip(ids, modified, dates, strict=False)
    ]


def _expected(entity: str, page: list[dict[str, Any]]) -> list[RecordMeta] | None:
    try:
        return [_flexpos().record_meta(entity, record) for record in page]
    except ValueError:
        return None


def _as_metas(meta) -> list[RecordMeta]:
    dates = meta.business_date.to_pylist() if meta.business_date is not None else None
    return [
        RecordMeta(rid, modified, None if dates is None else dates[i])
        for i, (rid, modified) in enumerate(
            zip(meta.record_id.to_pylist(), meta.modified.to_pylist(), strict=True)
        )
    ]


@given(
    ids=st.one_of(
        st.lists(st.integers(0, 10**9), min_size=1, max_size=8),
        st.lists(id_value, min_size=1, max_size=8),
    ),
    modified=st.lists(modified_value, min_size=8, max_size=8),
    dates=st.lists(modified_value, min_size=8, max_size=8),
)
@PROPERTY
def test_page_meta_is_record_meta_of_each_record_or_declines(ids, modified, dates):
    for entity in ("customers", "journals"):
        page = _page(ids, modified, dates)
        meta = _flexpos().page_meta(entity, page)
        expected = _expected(entity, page)
        if meta is None:
            continue  # declining is always allowed: landing goes record by record
        assert expected is not None, "page_meta answered for a page record_meta refuses"
        got = _as_metas(meta)
        assert [m.record_id for m in got] == [m.record_id for m in expected]
        assert [m.modified for m in got] == [m.modified for m in expected]
        assert [m.business_date for m in got] == [m.business_date for m in expected]
        assert all(m.modified.utcoffset() == timedelta(0) for m in got)


def test_page_meta_answers_for_ordinary_pages_even_across_a_dst_switch():
    """Declining everything would pass the property above: ordinary pages must be answered."""
    start = datetime(2026, 3, 28, 12, 0)
    times = [(start + timedelta(minutes=17 * i)).isoformat() for i in range(500)]
    page = _page(list(range(500)), times, times)
    assert _flexpos().page_meta("customers", page) is not None
    assert _flexpos().page_meta("journals", page) is not None
    text_ids = _page([f"K{i}" for i in range(500)], times, times)
    assert _flexpos().page_meta("customers", text_ids) is not None
    # the spring gap's 02:30 is read as record_meta reads it (01:30 UTC)
    got = _as_metas(_flexpos().page_meta("customers", _page([1], ["2026-03-29T02:30:00"], [None])))
    assert got[0].modified == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)


# --- landing: the column-by-column path writes what the record-by-record path writes ----------


def customer(n: int, modified: str, **extra: Any) -> dict[str, Any]:
    return {
        "CustomerId": n,
        "Email": f"c{n}@example.com",
        "City": "Århus",
        "Modified": modified,
        **extra,
    }


def journal(n: int, sold: str, modified: str) -> dict[str, Any]:
    return {"JournalId": n, "Date": sold, "Modified": modified, "Lines": [{"Amount": 0.1}]}


def _landed(stats: landing.LandingStats) -> list[dict[str, Any]]:
    rows = []
    for path in stats.files:
        table = pq.read_table(path)
        assert table.schema.equals(landing.SCHEMA, check_metadata=False)
        assert len(set(table.column("fetched_at").to_pylist())) == 1  # one per land_pages
        for row in table.drop_columns(["batch_id"]).to_pylist():
            if row["modified"] == row["fetched_at"]:  # a tombstone's: its own run's fetch time
                row["modified"] = "fetched_at"
            del row["fetched_at"]
            rows.append({**row, "folder": path.split("/")[-2]})
    return rows


def _land_both_ways(entity: str, pages: list[list[dict[str, Any]]]):
    fast = landing.land_pages(_flexpos(), "fast", entity, pages)
    slow = landing.land_pages(RecordByRecord(), "slow", entity, pages)
    return fast, slow


def _same(fast: landing.LandingStats, slow: landing.LandingStats) -> None:
    assert _landed(fast) == _landed(slow)
    assert fast.high_water_mark == slow.high_water_mark
    assert fast.high_water_mark.tzinfo is UTC
    assert (fast.records, fast.records_by_day, fast.days) == (
        slow.records,
        slow.records_by_day,
        slow.days,
    )
    assert (fast.unreadable, fast.unreadable_reasons, fast.tombstones) == (
        slow.unreadable,
        slow.unreadable_reasons,
        slow.tombstones,
    )


def test_customers_land_the_same_rows_column_by_column(monkeypatch):
    start = datetime(2026, 10, 24, 20, 0)  # through the autumn switch
    pages = [
        [
            customer(p * 100 + i, (start + timedelta(minutes=7 * (p * 100 + i))).isoformat())
            for i in range(100)
        ]
        for p in range(3)
    ]
    calls = []
    by_day = landing._by_day
    monkeypatch.setattr(landing, "_by_day", lambda *a: calls.append(a[0]) or by_day(*a))
    fast, slow = _land_both_ways("customers", pages)
    assert [type(c) for c in calls] == [RecordByRecord] * 3  # the fast one never went slow
    _same(fast, slow)


def test_journals_land_the_same_rows_in_the_same_day_folders(monkeypatch):
    start = datetime(2026, 3, 27, 22, 0)  # days either side of the spring switch
    pages = [
        [
            journal(
                p * 50 + i,
                (start + timedelta(minutes=41 * (p * 50 + i))).isoformat(),
                "2026-04-01T09:00:00",
            )
            for i in range(50)
        ]
        for p in range(4)
    ]
    monkeypatch.setattr(landing, "ROWS_PER_FILE", 120)  # writes in the middle, too
    fast, slow = _land_both_ways("journals", pages)
    assert len(fast.days) >= 4 and len(fast.files) == len(slow.files)
    _same(fast, slow)


@pytest.mark.parametrize(
    "odd",
    [
        {"CustomerId": 7, DELETED_FLAG: True},  # a tombstone
        customer(7, "yesterday"),  # unreadable: quarantined
        customer(7, "2026-01-01T10:00:00", Big=2**70),  # orjson cannot write it
        customer(7, "2026-01-01T10:00:00", Name="\ud800"),  # not Unicode
        customer(7, "2026-01-01T10:00:00.250000"),  # another format, still a date
        customer(True, "2026-01-01T10:00:00"),  # a bool is not an id
    ],
)
def test_a_page_with_anything_unusual_goes_record_by_record(odd, monkeypatch):
    page = [customer(1, "2026-01-01T10:00:00"), odd, customer(2, "2026-01-02T10:00:00")]
    calls = []
    by_day = landing._by_day
    monkeypatch.setattr(landing, "_by_day", lambda *a: calls.append(a[0]) or by_day(*a))
    fast, slow = _land_both_ways("customers", [page])
    assert calls[0] is _flexpos()  # the FlexPOS client's page went the record-by-record way
    _same(fast, slow)
    assert fast.records + fast.unreadable == 3


def test_a_backfill_of_days_lands_column_by_column_too():
    old = landing.land_pages(
        _flexpos(), "fp", "journals", [[journal(1, "2025-03-01T10:00:00", "2025-03-01T10:00:00")]]
    )
    assert old.records == 1
    new = [journal(2, "2025-03-01T11:00:00", "2025-03-02T10:00:00")]
    stats = landing.land_pages(
        _flexpos(), "fp", "journals", [new], replace_days=[date(2025, 3, 1), date(2025, 3, 2)]
    )
    assert landing.day_files("fp", "journals") == stats.files
    assert [row["record_id"] for row in _landed(stats)] == ["2"]
