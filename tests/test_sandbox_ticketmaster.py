"""Ticketmaster emulator over real sockets: TM-A1 auth order, HAL paging, dates, quota."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from sandbox.credentials import SANDBOX_ENV
from sandbox.server import SandboxServer
from sandbox.ticketmaster import TM_MARKET

BASE = f"/ticketmaster/client-data/v1/{TM_MARKET}"
KEY = {"apikey": SANDBOX_ENV["TICKETMASTER_APIKEY"]}
LOGIN = (SANDBOX_ENV["TICKETMASTER_USERNAME"], SANDBOX_ENV["TICKETMASTER_PASSWORD"])


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer(seed=9, customers=60, rate_limits=False) as server:
        yield server


@pytest.fixture(scope="module")
def client(sandbox):
    with httpx.Client(base_url=sandbox.url, auth=LOGIN, timeout=10) as http:
        yield http


def follow(client, path, collection, **params):
    """Follow `_links.next` until it is absent, as the contract tells clients to."""
    response = client.get(path, params={**KEY, **params})
    items = []
    while True:
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["_embedded"][collection]
        if "next" not in body["_links"]:
            return items, body
        response = client.get(body["_links"]["next"]["href"])


def test_auth_errors_follow_tm_a1(sandbox, client):
    bad_key = client.get(f"{BASE}/customers", params={"apikey": "nope"})
    assert bad_key.status_code == 401
    assert bad_key.json()["fault"]["detail"]["errorcode"] == "oauth.v2.InvalidApiKey"
    assert client.get(f"{BASE}/customers").status_code == 401
    with httpx.Client(base_url=sandbox.url, auth=(LOGIN[0], "wrong")) as http:
        bad_login = http.get(f"{BASE}/customers", params=KEY)
    assert bad_login.status_code == 401
    assert bad_login.json() == {
        "errors": [{"code": "UNAUTHORIZED", "detail": "Invalid credentials", "status": "401"}]
    }
    market = client.get("/ticketmaster/client-data/v1/TM_SE/customers", params=KEY)
    assert market.status_code == 403 and market.json()["errors"][0]["code"] == "FORBIDDEN"
    assert client.get(f"{BASE}/customers", params={**KEY, "size": 1}).status_code == 200


def test_paging_follows_next_until_absent(sandbox, client):
    items, last = follow(client, f"{BASE}/customers", "customers", size=7)
    ids = [c["customerId"] for c in items]
    assert len(ids) == len(set(ids)) == len(sandbox.data.tm_customers) == 30
    assert ids == sorted(ids)
    assert last["page"] == {"size": 7, "totalElements": 30, "totalPages": 5, "number": 4}
    assert client.get(f"{BASE}/customers", params={**KEY, "size": 501}).status_code == 400


def test_consent_filter(sandbox, client):
    items, _ = follow(client, f"{BASE}/customers", "customers", consent="true", size=500)
    expected = [c for c in sandbox.data.tm_customers if c["marketingConsent"]]
    assert len(items) == len(expected) and all(c["marketingConsent"] for c in items)


def test_email_filter_ignores_case(sandbox, client):
    target = sandbox.data.tm_customers[3]
    items, _ = follow(client, f"{BASE}/customers", "customers", email=target["email"].upper())
    assert [c["customerId"] for c in items] == [target["customerId"]]


def test_date_range_rules(sandbox, client):
    refused_body = {
        "errors": [
            {
                "code": "INVALID_DATE_RANGE",
                "detail": "Date range must not exceed one year",
                "status": "400",
            }
        ]
    }
    too_long = client.get(
        f"{BASE}/orders", params={**KEY, "fromDate": "2024-01-01", "toDate": "2025-01-02"}
    )
    assert too_long.status_code == 400 and too_long.json() == refused_body
    backwards = client.get(
        f"{BASE}/orders", params={**KEY, "fromDate": "2024-02-01", "toDate": "2024-01-01"}
    )
    assert backwards.json() == refused_body
    orders = sandbox.data.tm_orders
    start, end = orders[5]["orderDate"][:10], orders[30]["orderDate"][:10]
    items, _ = follow(client, f"{BASE}/orders", "orders", fromDate=start, toDate=end)
    assert len(items) == sum(start <= o["orderDate"][:10] <= end for o in orders)


def test_modified_since_catches_upserts_and_consent_withdrawal(sandbox, client):
    cursor = (datetime.now(UTC) - timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    items, _ = follow(client, f"{BASE}/customers", "customers", modifiedSince=cursor)
    assert items == []
    consenting = next(c for c in sandbox.data.tm_customers if c["marketingConsent"])
    response = client.post(
        "/_sandbox/ticketmaster/withdraw-consent", json={"customer_id": consenting["customerId"]}
    )
    assert response.status_code == 200
    new = sandbox.emulator("ticketmaster").upsert_customer(
        {"email": "ny@mail.dk", "marketingConsent": True}
    )
    order = sandbox.emulator("ticketmaster").add_order(
        {"customerId": new["customerId"], "tickets": [{"ticketId": "T1", "price": 495.0}]}
    )
    changed, _ = follow(client, f"{BASE}/customers", "customers", modifiedSince=cursor)
    by_id = {c["customerId"]: c for c in changed}
    assert set(by_id) == {consenting["customerId"], new["customerId"]}
    withdrawn = by_id[consenting["customerId"]]
    assert withdrawn["marketingConsent"] is False
    assert withdrawn["marketingConsentDate"] == withdrawn["modifiedDate"] >= cursor
    consented, _ = follow(
        client, f"{BASE}/customers", "customers", modifiedSince=cursor, consent="true"
    )
    assert [c["customerId"] for c in consented] == [new["customerId"]]
    orders, _ = follow(client, f"{BASE}/orders", "orders", customerId=new["customerId"])
    assert orders == [order] and order["email"] == "ny@mail.dk" and order["totalAmount"] == 495.0
    naive = client.get(f"{BASE}/customers", params={**KEY, "modifiedSince": cursor[:-1]})
    assert naive.status_code == 400


def test_customer_by_id(sandbox, client):
    known = sandbox.data.tm_customers[-1]["customerId"]
    shown = client.get(f"{BASE}/customers/{known}", params=KEY).json()
    assert shown == sandbox.emulator("ticketmaster").customer(known)
    missing = client.get(f"{BASE}/customers/TMC0", params=KEY)
    assert missing.status_code == 404 and missing.json()["errors"][0]["code"] == "NOT_FOUND"


def test_rate_limit_and_daily_quota():
    with SandboxServer(customers=4, rate_limits=True) as server:
        with httpx.Client(base_url=server.url, auth=LOGIN) as http:
            first = http.get(f"{BASE}/customers", params=KEY)
            assert first.headers["rate-limit"] == "5000"
            assert first.headers["rate-limit-available"] == "4999"
            responses = [http.get(f"{BASE}/customers", params=KEY) for _ in range(8)]
            limited = [r for r in responses if r.status_code == 429]
            assert limited
            assert limited[0].json()["fault"]["detail"]["errorcode"] == (
                "policies.ratelimit.QuotaViolation"
            )
            reset_ms = int(limited[0].headers["rate-limit-reset"])
            assert reset_ms >= int(time.time() * 1000) - 50
            assert int(limited[0].headers["retry-after"]) >= 1
            time.sleep(1.05)
            server.emulator("ticketmaster").quota.limit = 5  # 5 calls counted so far
            over = http.get(f"{BASE}/customers", params=KEY)
            assert over.status_code == 429 and over.headers["rate-limit-available"] == "0"


def test_fault_injection(sandbox, client):
    sandbox.faults.add("/orders", 503, times=1, body={"errors": [{"code": "UNAVAILABLE"}]})
    failed = client.get(f"{BASE}/orders", params=KEY)
    assert failed.status_code == 503 and failed.json()["errors"][0]["code"] == "UNAVAILABLE"
    assert client.get(f"{BASE}/orders", params=KEY).status_code == 200
