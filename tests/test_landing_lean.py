"""The lean extract (issue 10): what the faster paths must keep exactly as the slow ones had it.

- landing writes payloads with orjson, and falls back to json.dumps where orjson cannot write
  a record exactly; several pages go into one file per day, never more than ROWS_PER_FILE held;
- FlexPOS bodies are parsed with orjson unless that could lose digits or refuses the body;
- FlexPOS local times are converted with a per-hour offset: the same instants as the zone's;
- paging reads one page ahead without changing which pages are asked for, or when errors show.
"""

from __future__ import annotations

import json
import threading
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pyarrow.parquet as pq
import pytest

from memberflow import landing
from resources import paging
from resources.flexpos import FlexPOSClient, _utc_from_local, loads, parse_local
from resources.source import DELETED_FLAG


@pytest.fixture
def client() -> FlexPOSClient:
    """A FlexPOS client for its record_meta only: nothing here calls the API."""
    made = FlexPOSClient(pos_base_url="http://127.0.0.1:9", client_id="id", client_secret="s")
    yield made
    made.close()


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))


def customer(n: int, **extra: Any) -> dict[str, Any]:
    modified = "2026-03-29T02:30:00"  # in the spring gap: no such wall time in Copenhagen
    return {"CustomerId": n, "Email": f"c{n}@example.com", "Modified": modified, **extra}


def journal(n: int, day: int) -> dict[str, Any]:
    sold = f"2025-03-{day:02d}T10:00:00"
    return {"JournalId": n, "Date": sold, "Modified": "2025-03-31T10:00:00"}


def payloads(files: list[str]) -> list[str]:
    return [p for f in files for p in pq.read_table(f).column("payload").to_pylist()]


def test_payload_is_the_compact_json_record_json_dumps_would_write(client):
    odd = {
        "City": "Århus",
        "Note": 'tab\there \x1f \u2028 \x7f "quoted" \\',
        "Amount": 0.1,
        "Big": 1e16,
        "cards": [{"Cardnumber": 1234, "Cardname": "Pension"}],
        "Nothing": None,
    }
    stats = landing.land_pages(client, "fp", "customers", [[customer(1, **odd)]])
    expected = json.dumps(customer(1, **odd), ensure_ascii=False, separators=(",", ":"))
    assert payloads(stats.files) == [expected]


def test_integers_beyond_64_bits_are_landed_with_every_digit(client):
    wide = customer(1, CardNumber=123456789012345678901234567890, Small=-(2**63) - 1)
    stats = landing.land_pages(client, "fp", "customers", [[wide]])
    (payload,) = payloads(stats.files)
    assert json.loads(payload) == wide
    assert "123456789012345678901234567890" in payload


def test_a_lone_surrogate_is_still_filed_unreadable_with_its_text_escaped(client):
    page = [customer(1), customer(2, Name="\ud800")]
    stats = landing.land_pages(client, "fp", "customers", [page])
    assert stats.records == 1 and stats.unreadable == 1
    (bad,) = payloads(landing.unreadable_files("fp", "customers"))
    assert "\\ud800" in bad and json.loads(bad)["CustomerId"] == 2


def test_tombstones_and_unreadable_meta_keep_their_paths(client):
    page = [customer(1), {"CustomerId": 2, DELETED_FLAG: True}, customer(3, Modified="yesterday")]
    stats = landing.land_pages(client, "fp", "customers", [page])
    assert stats.records == 2 and stats.tombstones == 1 and stats.unreadable == 1
    assert stats.unreadable_reasons == {"unreadable record": 1}
    assert f'"{DELETED_FLAG}":true' in payloads(stats.files)[1]
    assert landing.live_ids("fp", "customers") == {"1"}


def test_pages_share_one_file_per_day_and_a_write_once_enough_rows_wait(client, monkeypatch):
    pages = [[journal(i * 10 + j, day=1 + j % 2) for j in range(4)] for i in range(3)]
    stats = landing.land_pages(client, "fp", "journals", pages)
    assert stats.pages == 3 and stats.records == 12
    assert len(stats.files) == 2  # two days, one file each, for three pages
    assert stats.records_by_day == {date(2025, 3, 1): 6, date(2025, 3, 2): 6}
    assert landing.count_records("fp", "journals") == 12

    monkeypatch.setattr(landing, "ROWS_PER_FILE", 5)
    pages = [[customer(i * 10 + j) for j in range(4)] for i in range(3)]
    stats = landing.land_pages(client, "fp", "customers", pages)
    assert [pq.ParquetFile(f).metadata.num_rows for f in stats.files] == [8, 4]
    assert landing.count_records("fp", "customers") == 12


def test_a_backfill_swaps_in_buffered_days(client):
    landing.land_pages(client, "fp", "journals", [[journal(1, day=1)]])
    stats = landing.land_pages(
        client,
        "fp",
        "journals",
        [[journal(2, day=1)], [journal(3, day=1)]],
        replace_days=[date(2025, 3, 1), date(2025, 3, 2)],
    )
    assert landing.day_files("fp", "journals") == stats.files
    assert sorted(json.loads(p)["JournalId"] for p in payloads(stats.files)) == [2, 3]


# --- parsing FlexPOS bodies -------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"Items": [{"CustomerId": 1, "City": "\\u00c5rhus", "x": 0.1}], "TotalCount": 1}',
        b'{"a": 123456789012345678901234567890}',  # orjson would read a float
        b'{"a": -9223372036854775809}',  # 19 digits, beyond int64
        b'{"a": NaN, "b": Infinity, "c": 1e400}',  # not JSON; the standard library reads them
        b'{"a": "\\ud800"}',  # a lone surrogate escape
        b'{"a": 1, "a": 2}',
        '{"City": "Århus"}'.encode("utf-16"),
    ],
)
def test_loads_reads_every_body_as_the_standard_library_does(body):
    got, expected = loads(body), json.loads(body)
    assert json.dumps(got) == json.dumps(expected)
    assert repr(got) == repr(expected)


def test_loads_refuses_what_is_not_json():
    with pytest.raises(ValueError):
        loads(b'{"Items": [')
    with pytest.raises(ValueError):
        loads(b"<html>502 Bad Gateway</html>")


# --- local times ------------------------------------------------------------------------------


def test_local_times_convert_to_the_zones_instant_across_every_kind_of_hour():
    texts = [
        "2026-03-29T01:59:59",  # before the spring gap
        "2026-03-29T02:30:00",  # inside the gap (no such wall time)
        "2026-03-29T03:00:00",
        "2026-10-25T02:30:00",  # the autumn hour that happens twice (fold 0: the first)
        "2026-10-25T03:00:00",
        "1894-01-01T00:05:00",  # the switch from local mean time, inside an hour
        "1894-01-01T00:30:00",
        "1940-05-14T23:59:59",
        "2026-07-01T12:00:00.123456",
        "2026-07-01T12:00:00+05:00",  # an offset given is kept
        "2026-07-01",
    ]
    start = datetime(2024, 1, 1)
    texts += [(start + timedelta(minutes=37 * i)).isoformat() for i in range(40_000)]
    war = datetime(1939, 12, 31, 0, 30)  # years of unusual switches (wartime summer time)
    texts += [(war + timedelta(hours=i)).isoformat() for i in range(24 * 365 * 10)]
    for text in texts:
        expected = parse_local(text).astimezone(UTC)
        got = _utc_from_local(text)
        assert got == expected and got.utcoffset() == timedelta(0), text


# --- paging one page ahead --------------------------------------------------------------------


def walk(read_ahead: bool, pages: int, total: int, fail_at: int | None = None):
    asked: list[tuple[int, str]] = []

    def fetch(page: int) -> dict[str, Any]:
        asked.append((page, threading.current_thread().name))
        if page == fail_at:
            raise RuntimeError(f"page {page} failed")
        rows = [{"n": (page - 1) * 2 + i} for i in range(2)] if page <= pages else []
        return {"Items": rows, "Page": page, "PageSize": 2, "TotalCount": total}

    iterator = paging.page_numbers(
        fetch,
        lambda body: body["Items"],
        page_size=2,
        total=lambda body: body["TotalCount"],
        covered=lambda body, page: body["Page"] * body["PageSize"],
        read_ahead=read_ahead,
    )
    return iterator, asked


@pytest.mark.parametrize("pages,total", [(3, 6), (3, 100), (0, 0), (2, 3)])
def test_read_ahead_asks_for_the_same_pages_and_yields_the_same_rows(pages, total):
    plain, plain_asked = walk(False, pages, total)
    ahead, ahead_asked = walk(True, pages, total)
    assert list(ahead) == list(plain)
    assert [p for p, _ in ahead_asked] == [p for p, _ in plain_asked]
    assert any(name.startswith("read-ahead") for _, name in ahead_asked[1:]) or pages <= 1


def test_read_ahead_raises_a_failed_page_where_it_would_have_been_fetched():
    iterator, _ = walk(True, pages=5, total=10, fail_at=3)
    assert next(iterator) == [{"n": 0}, {"n": 1}]
    assert next(iterator) == [{"n": 2}, {"n": 3}]
    with pytest.raises(RuntimeError, match="page 3 failed"):
        next(iterator)


def test_a_caller_that_stops_early_leaves_no_fetch_running():
    iterator, asked = walk(True, pages=50, total=100)
    next(iterator)
    iterator.close()
    assert [p for p, _ in asked] == [1, 2]
    assert not any(t.name.startswith("read-ahead") for t in threading.enumerate())
