"""The generator is deterministic, fast, dirty in the intended ways, and overlaps on purpose."""

from __future__ import annotations

import re
from collections import Counter
from datetime import date

import pytest

from sandbox.generator import generate

TODAY = date(2025, 3, 15)
LOCAL = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}$")
UTC_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
VALID_EMAIL = re.compile(r"^[^@\s()]+@[^@\s()]+\.[a-z]{2,}$", re.IGNORECASE)
CUSTOMER_KEYS = {
    "CustomerId",
    "CustomerNo",
    "FirstName",
    "LastName",
    "Email",
    "Mobile",
    "Address",
    "ZipCode",
    "City",
    "Country",
    "BirthDate",
    "Gender",
    "IsActive",
    "IsClubMember",
    "GetsNewsletter",
    "StoreId",
    "Created",
    "Modified",
    "cards",
}


@pytest.fixture(scope="module")
def data():
    return generate(seed=11, customers=2000, days=400, today=TODAY)


def test_same_seed_same_data_and_other_seed_differs():
    first = generate(seed=5, customers=150, today=TODAY)
    assert first == generate(seed=5, customers=150, today=TODAY)
    assert first.flexpos_customers != generate(seed=6, customers=150, today=TODAY).flexpos_customers


def test_customer_fields_follow_fp_a4(data):
    for customer in data.flexpos_customers:
        assert set(customer) == CUSTOMER_KEYS
        assert isinstance(customer["CustomerId"], int)
        assert isinstance(customer["IsActive"], bool)
        assert customer["IsClubMember"] in (0, 1) and customer["GetsNewsletter"] in (0, 1)
        assert LOCAL.match(customer["Created"]) and LOCAL.match(customer["Modified"])
        assert customer["Created"] <= customer["Modified"] < TODAY.isoformat()
        assert customer["Gender"] in ("M", "F", None)
        assert 0 <= len(customer["cards"]) <= 2
        for card in customer["cards"]:
            assert isinstance(card["Cardnumber"], int) and isinstance(card["Cardname"], str)
    ids = [c["CustomerId"] for c in data.flexpos_customers]
    assert len(set(ids)) == len(ids)


def test_customers_are_dirty_as_intended(data):
    customers = data.flexpos_customers
    n = len(customers)
    emails = [c["Email"] for c in customers]
    missing = sum(e is None for e in emails)
    bad = [e for e in emails if e is not None and not VALID_EMAIL.match(e)]
    lowered = Counter(e.lower() for e in emails if e)
    duplicated = sum(count for count in lowered.values() if count > 1)
    assert 0.03 * n < missing < 0.08 * n
    assert 0.01 * n < len(bad) < 0.04 * n
    assert any("@@" in e or "(at)" in e or e.endswith("@") for e in bad)
    assert duplicated > 0.01 * n
    mobiles = [c["Mobile"] for c in customers if c["Mobile"]]
    assert any(m.startswith("+45 ") for m in mobiles) and any(m.startswith("0045") for m in mobiles)
    assert any(re.fullmatch(r"\d{8}", m) for m in mobiles)
    assert any(re.fullmatch(r"\d\d \d\d \d\d \d\d", m) for m in mobiles)
    assert any(not re.sub(r"\D", "", m) or len(re.sub(r"\D", "", m)) < 8 for m in mobiles)
    assert any(c["BirthDate"] is None for c in customers)
    assert any(c["Gender"] is None for c in customers)
    text = " ".join(
        f"{c['FirstName']} {c['LastName']} {c['Address']} {c['City']}" for c in customers
    )
    assert all(ch in text for ch in "æøå")
    assert {"Århus N", "Køge", "Næstved"} & {c["City"] for c in customers}


def test_journals_tickets_memberships(data):
    journals = data.journals
    assert len(journals) == 3 * len(data.flexpos_customers)
    anonymous = sum(j["CustomerId"] is None for j in journals)
    assert 0.01 * len(journals) < anonymous < 0.06 * len(journals)
    assert any(j["TotalAmount"] < 0 for j in journals)
    for journal in journals:
        assert 1 <= len(journal["Lines"]) <= 4
        assert journal["Date"] <= journal["Modified"] < TODAY.isoformat()
        assert LOCAL.match(journal["Date"])
    assert min(j["Date"] for j in journals) >= "2024-02-09"
    assert {t["Channel"] for t in data.tickets} == {"Online", "POS"}
    assert {t["Status"] for t in data.tickets} == {"Sold", "Refunded"}
    assert all(t["CustomerId"] is not None and t["Zone"] for t in data.tickets)
    assert data.memberships and all(
        m["Status"] in ("Active", "Expired", "Cancelled") for m in data.memberships
    )


def test_ticketmaster_overlaps_flexpos_people(data):
    tm = data.tm_customers
    assert len(tm) == len(data.flexpos_customers) // 2
    fp_by_email = {c["Email"].lower(): c for c in data.flexpos_customers if c["Email"]}
    shared = [c for c in tm if c["email"] and c["email"].lower() in fp_by_email]
    assert 0.5 * len(tm) < len(shared) < 0.7 * len(tm)
    assert any(c["email"] != fp_by_email[c["email"].lower()]["Email"] for c in shared)
    same_mobile = 0
    for customer in shared:
        fp_mobile = re.sub(r"\D", "", fp_by_email[customer["email"].lower()]["Mobile"] or "")
        if customer["mobile"]:
            assert re.fullmatch(r"\+45\d{8}", customer["mobile"])
            same_mobile += fp_mobile.endswith(customer["mobile"][3:])
    assert same_mobile > 0.8 * len(shared)
    consent = sum(c["marketingConsent"] for c in tm) / len(tm)
    assert 0.7 < consent < 0.9
    assert all(UTC_Z.match(c["modifiedDate"]) for c in tm)


def test_ticketmaster_orders_follow_tm_a4(data):
    customer_ids = {c["customerId"] for c in data.tm_customers}
    venues = set()
    for order in data.tm_orders:
        assert order["customerId"] in customer_ids
        assert UTC_Z.match(order["orderDate"]) and order["orderDate"] <= order["modifiedDate"]
        assert order["channel"] in ("web", "mobile", "box_office", "call_center")
        assert order["status"] in ("completed", "refunded", "partially_refunded")
        assert 1 <= len(order["tickets"]) <= 4
        for ticket in order["tickets"]:
            assert ticket["status"] in ("sold", "refunded") and ticket["venueName"]
            venues.add(ticket["venueName"])
    assert "Royal Arena" in venues
