"""The lean FlexPOS sandbox (`memberflow sandbox --lean`): records made on demand answer every
listing exactly as the indexed in-memory collection would over the same records, over HTTP too,
and writes (a customer changed at the till) behave as in the eager sandbox."""

from __future__ import annotations

from datetime import date

import httpx
import pytest

from sandbox.flexpos_lean import LeanFlexposData
from sandbox.lean_store import LeanCollection
from sandbox.server import SandboxServer
from sandbox.store import Collection
from tests.test_sandbox_flexpos import POS, fetch_all, token

TODAY = date(2026, 6, 15)


@pytest.fixture(scope="module")
def lean() -> LeanFlexposData:
    return LeanFlexposData(seed=5, customers=1200, days=120, today=TODAY)


def _eager(collection: LeanCollection) -> Collection:
    """The same records in the indexed in-memory collection (the reference)."""
    records = collection.select(("all",))[:]
    return Collection(records, collection.id_key, collection.modified_key, collection.date_key)


FILTERS = [
    {},
    {"modified_since": "2026-05-01T12:00:00"},
    {"from_date": "2026-03-01", "to_date": "2026-03-31"},
    {"modified_since": "2026-06-01T00:00:00", "from_date": "2026-05-20"},
]


@pytest.mark.parametrize("name", ["customers", "journals", "tickets"])
def test_listings_match_the_in_memory_collection(lean, name):
    collection: LeanCollection = getattr(lean, name)
    eager = _eager(collection)
    ids = [r[collection.id_key] for r in eager.select(("ids",))]
    assert ids == sorted(ids) and len(ids) == len(collection) > 0
    for n, filters in enumerate(FILTERS):
        if name == "customers" and ("from_date" in filters):
            continue
        got = collection.select(("f", n), **filters)
        want = eager.select(("f", n), **filters)
        assert [r[collection.id_key] for r in got[:]] == [r[collection.id_key] for r in want]
        assert 0 < len(want) <= len(ids) or filters


@pytest.mark.parametrize(
    ("name", "where"),
    [
        ("customers", {"IsActive": True}),
        ("customers", {"IsClubMember": 1, "GetsNewsletter": 0}),
        ("journals", {"StoreId": 2}),
        ("journals", {"CustomerId": 1007}),
        ("tickets", {"CustomerId": 1011}),
    ],
)
def test_field_filters_match(lean, name, where):
    collection: LeanCollection = getattr(lean, name)
    eager = _eager(collection)
    got = collection.select(("w", tuple(where.items())), where=where)[:]
    want = eager.select(("w", tuple(where.items())), where=where)
    assert got == want


def test_records_are_deterministic_and_shaped_like_the_eager_ones(lean):
    again = LeanFlexposData(seed=5, customers=1200, days=120, today=TODAY)
    for name in ("customers", "journals", "tickets"):
        first = getattr(lean, name).select(("all",))[:]
        assert first == getattr(again, name).select(("all",))[-len(first) :]
    customers = lean.customers.select(("all",))[:]
    emails = [c["Email"] for c in customers]
    assert sum(e is None for e in emails) > 20  # the generator's dirt is there
    assert len({e.lower() for e in emails if e}) < sum(1 for e in emails if e)  # copied emails
    journal = lean.journals.get(500_000)
    assert journal["Lines"] and journal["TotalAmount"] == round(
        sum(line["Amount"] for line in journal["Lines"]), 2
    )


def test_a_write_replaces_the_generated_record(lean):
    customers = lean.customers
    old = customers.get(1003)
    changed = {**old, "FirstName": "Ændret", "Modified": "2026-06-14T23:59:59"}
    customers.put(changed)
    since = customers.select(("since",), modified_since="2026-06-14T23:59:00")[:]
    assert changed in since and customers.get(1003)["FirstName"] == "Ændret"
    assert [r["CustomerId"] for r in customers.select(("all2",))[:]].count(1003) == 1
    created = {**old, "CustomerId": customers.max_id() + 1}
    customers.put(created)
    assert customers.select(("all3",))[-1] == created and len(customers) == 1201


def test_lean_sandbox_over_http():
    with SandboxServer(seed=9, customers=700, days=60, rate_limits=False, lean=True) as server:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            headers = token(client)
            items, total = fetch_all(client, f"{POS}/api/v1/customers", headers, page_size=97)
            assert total == 700 and [c["CustomerId"] for c in items] == list(range(1000, 1700))
            flexpos = server.emulator("flexpos")
            flexpos.upsert_customer({"CustomerId": 1005, "Email": "ny@example.com"})
            since = items[0]["Modified"][:10] + "T00:00:00"
            changed, _ = fetch_all(
                client, f"{POS}/api/v1/customers", headers, modifiedSince="2099-01-01"
            )
            assert changed == []
            recent, _ = fetch_all(client, f"{POS}/api/v1/customers", headers, modifiedSince=since)
            assert any(c["Email"] == "ny@example.com" for c in recent)
            journals, count = fetch_all(
                client, f"{POS}/api/v1/journals", headers, page_size=500, customerId=1010
            )
            assert count == len(journals) and all(j["CustomerId"] == 1010 for j in journals)
