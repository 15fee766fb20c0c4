"""A FlexPOS page landed as it came (issue 10): for a compact body with nothing unusual on it, the
client hands landing a `RawPage` (each record's JSON text as sent, the metadata read without a
Python object per record) instead of a list of dicts. It must land exactly what the list of
dicts lands (the same rows, payload text, day folders, statistics and quarantine), or decline
(None) so the body is read as before; records parsed on demand are the ones `loads` gives.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import orjson
import pyarrow.parquet as pq
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from memberflow import landing
from resources import flexpos
from resources.auth import forget_shared_tokens
from resources.source import DELETED_FLAG, RawPage
from tests.test_landing_columns import (
    PROPERTY,
    _flexpos,
    _landed,
    customer,
    id_value,
    journal,
    modified_value,
    wall_time,
)


@pytest.fixture(autouse=True)
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))


def _body(items: list[Any], style: str = "orjson") -> bytes:
    envelope = {"Items": items, "Page": 1, "PageSize": 500, "TotalCount": len(items)}
    if style == "orjson":
        return orjson.dumps(envelope)
    if style == "compact":  # the standard library's compact text, Unicode unescaped
        return json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
    if style == "ascii":  # compact, every non-ASCII letter escaped
        return json.dumps(envelope, separators=(",", ":")).encode()
    return json.dumps(envelope, indent=1 if style == "indented" else None).encode()


def _raw(body: bytes, entity: str) -> RawPage | None:
    envelope = flexpos._raw_envelope(body, flexpos._ENTITIES[entity])
    return None if envelope is None else envelope["Items"]


def _land(pages: list[Any], entity: str, integration: str) -> tuple[landing.LandingStats, list]:
    stats = landing.land_pages(_flexpos(), integration, entity, pages)
    unreadable = [
        (row["reason"], row["payload"])
        for path in landing.unreadable_files(integration, entity)
        for row in pq.read_table(path).drop_columns(["batch_id", "fetched_at"]).to_pylist()
    ]
    return stats, unreadable


def _assert_lands_as_dicts(body: bytes, entity: str, same_text: bool) -> RawPage | None:
    """The body's RawPage (if the client makes one) lands what its dicts land."""
    page = _raw(body, entity)
    dicts = flexpos.loads(body)["Items"]
    if page is None:
        return None
    assert page.records() == dicts and page == dicts and len(page) == len(dicts)
    run = uuid.uuid4().hex[:8]  # a property test's examples share one data dir
    raw, raw_bad = _land([page], entity, f"raw-{run}")
    old, old_bad = _land([dicts], entity, f"dicts-{run}")
    got, want = _landed(raw), _landed(old)
    if not same_text:  # numbers as the source wrote them: the same values
        for rows in (got, want):
            for row in rows:
                row["payload"] = orjson.loads(row["payload"])
    assert got == want
    assert (raw_bad, raw.unreadable, raw.tombstones) == (old_bad, 0, 0) == ([], 0, 0)
    assert raw.high_water_mark == old.high_water_mark
    assert (raw.records, raw.records_by_day, raw.days) == (
        old.records,
        old.records_by_day,
        old.days,
    )
    return page


extra_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**70), 2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=12),
        st.text(st.characters(codec="utf-8", min_codepoint=32), max_size=12),
        st.sampled_from(["Århus", 'a, "b": c', ' "x" ', "C:\\temp\\u", "1e400", "\u2028"]),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=4,
)
# mostly ordinary, so that many pages are raw (every record must be for its page to be)
usual_time = st.one_of(wall_time, wall_time, wall_time, wall_time, wall_time, modified_value)


@given(
    ids=st.one_of(
        st.lists(st.integers(0, 10**9), min_size=1, max_size=6),
        st.lists(st.integers(0, 10**9), min_size=1, max_size=6),
        st.lists(id_value, min_size=1, max_size=6),
    ),
    modified=st.lists(usual_time, min_size=6, max_size=6),
    dates=st.lists(usual_time, min_size=6, max_size=6),
    extra=st.lists(extra_value, min_size=6, max_size=6),
    flags=st.lists(st.sampled_from([None] * 12 + [True, False, 1, "yes"]), min_size=6),
    style=st.sampled_from(["orjson", "orjson", "compact", "ascii", "spaced", "indented"]),
)
@settings(PROPERTY, max_examples=120)
def test_a_raw_page_lands_what_its_records_land_or_declines(
    ids, modified, dates, extra, flags, style
):
    items = []
    for i, record_id in enumerate(ids):
        record = {"CustomerId": record_id, "JournalId": record_id, "Modified": modified[i]}
        record |= {"Date": dates[i], "Extra": extra[i]}
        if flags[i] is not None:
            record[DELETED_FLAG] = flags[i]
        items.append(record)
    try:
        body = _body(items, style)
    except (TypeError, UnicodeEncodeError):  # orjson beyond 64 bits, a lone surrogate
        body = _body(items, "ascii")
    for entity in ("customers", "journals"):
        page = _assert_lands_as_dicts(body, entity, same_text=style == "orjson")
        event(f"{entity}: {'raw' if page is not None else 'declined'}")
        if page is not None:  # what a RawPage never holds (an ASCII-only text with nothing
            # to escape is the compact text itself)
            assert style in ("orjson", "compact") or (style == "ascii" and b"\\u" not in body)
            assert not any(record.get(DELETED_FLAG) for record in items)


def test_ordinary_pages_are_raw_and_land_the_same_byte_for_byte():
    """Declining everything would pass the property above: ordinary pages must be raw."""
    start = datetime(2026, 10, 24, 20, 0)  # through the autumn switch
    customers = [
        customer(i, (start + timedelta(minutes=7 * i)).isoformat(), cards=[{"No": i, "x": 0.1}])
        for i in range(300)
    ]
    journals = [
        journal(i, (start + timedelta(minutes=41 * i)).isoformat(), "2026-11-01T09:00:00")
        for i in range(300)
    ]
    for entity, items in (("customers", customers), ("journals", journals)):
        for style in ("orjson", "compact"):
            page = _assert_lands_as_dicts(_body(items, style), entity, same_text=True)
            assert isinstance(page, RawPage), (entity, style)


@pytest.mark.parametrize(
    ("why", "body"),
    [
        ("spaced", _body([customer(1, "2026-01-01T10:00:00")], "spaced")),
        ("indented", _body([customer(1, "2026-01-01T10:00:00")], "indented")),
        ("escaped letters", _body([customer(1, "2026-01-01T10:00:00")], "ascii")),
        (
            "escaped slash",
            _body([customer(1, "2026-01-01T10:00:00", Url="a/b")]).replace(b"/", b"\\/"),
        ),
        ("lone surrogate", _body([customer(1, "2026-01-01T10:00:00", Name="\ud800")], "ascii")),
        (
            "not UTF-8",
            _body([customer(1, "2026-01-01T10:00:00", Name="x")]).replace(b'"x"', b'"\xff"'),
        ),
        ("tombstone", _body([{"CustomerId": 1, DELETED_FLAG: True}])),
        ("unreadable Modified", _body([customer(1, "yesterday")])),
        ("no id", _body([{"Modified": "2026-01-01T10:00:00"}])),
        ("boolean id", _body([customer(True, "2026-01-01T10:00:00")])),
        (
            "id beyond 64 bits",
            orjson.dumps({"Items": []}).replace(
                b"[]", b'[{"CustomerId":%d,"Modified":"2026-01-01T10:00:00"}]' % 2**70
            ),
        ),
        ("empty page", _body([])),
        ("not an object", _body([1, 2])),
        ("NaN", b'{"Items":[{"CustomerId":1,"Modified":"2026-01-01T10:00:00","x":NaN}]}'),
        ("cut off", _body([customer(1, "2026-01-01T10:00:00")])[:-5]),
    ],
)
def test_anything_unusual_declines_and_the_body_is_read_as_before(why, body):
    assert _raw(body, "customers") is None, why


def test_the_client_pages_raw_and_reads_odd_pages_as_before():
    """Over HTTP: ordinary pages come as RawPage, a page with a tombstone or an unreadable
    record as the list of dicts; either reads as its records."""
    pages = {
        1: [customer(1, "2026-01-01T10:00:00"), customer(2, "2026-01-02T10:00:00")],
        2: [customer(3, "yesterday"), customer(4, "2026-01-02T10:00:00")],
        3: [{"CustomerId": 5, DELETED_FLAG: True}, customer(6, "2026-01-03T10:00:00")],
    }

    def api(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth/token"):
            return httpx.Response(200, json={"access_token": "tok", "expires_in": 3600})
        number = int(request.url.params["page"])
        body = {"Items": pages[number], "Page": number, "PageSize": 2, "TotalCount": 6}
        return httpx.Response(200, content=orjson.dumps(body))

    forget_shared_tokens()
    client = flexpos.FlexPOSClient(
        pos_base_url="http://flexpos.test/pos",
        client_id="raw-pages",
        client_secret="s",
        page_size=2,
        transport=httpx.MockTransport(api),
        requests_per_second=0,
    )
    got = list(client.iter_changed("customers", None))
    forget_shared_tokens()
    assert [type(page) for page in got] == [RawPage, list, list]
    assert got == [pages[1], pages[2], pages[3]]
    stats = landing.land_pages(client, "fp", "customers", iter(got))
    assert (stats.records, stats.unreadable, stats.tombstones) == (5, 1, 1)
