"""FlexPOS emulator over real sockets: tokens, paging, filters, errors, limits and faults."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import httpx
import pytest

from sandbox.credentials import SANDBOX_ENV
from sandbox.server import SandboxServer

POS = "/flexpos/pos"
ATTR = "/flexpos/attractions"
POS_FORM = {
    "grant_type": "client_credentials",
    "client_id": SANDBOX_ENV["FLEXPOS_CLIENT_ID"],
    "client_secret": SANDBOX_ENV["FLEXPOS_CLIENT_SECRET"],
}
ATTR_FORM = {
    "grant_type": "client_credentials",
    "client_id": SANDBOX_ENV["FLEXPOS_ATTRACTIONS_CLIENT_ID"],
    "client_secret": SANDBOX_ENV["FLEXPOS_ATTRACTIONS_CLIENT_SECRET"],
}


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer(seed=3, customers=50, rate_limits=False) as server:
        yield server


@pytest.fixture(scope="module")
def client(sandbox):
    with httpx.Client(base_url=sandbox.url, timeout=10) as http:
        yield http


def token(client: httpx.Client, base: str = POS, form: dict | None = None) -> dict[str, str]:
    response = client.post(f"{base}/oauth/token", data=form or POS_FORM)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def fetch_all(client, path, headers, page_size=7, **params):
    items, page = [], 1
    while True:
        body = client.get(
            path, headers=headers, params={**params, "page": page, "pageSize": page_size}
        ).json()
        items += body["Items"]
        assert body["Page"] == page and body["PageSize"] == page_size
        if body["Page"] * body["PageSize"] >= body["TotalCount"]:
            return items, body["TotalCount"]
        page += 1


def test_token_by_form_and_by_basic(client):
    body = client.post(f"{POS}/oauth/token", data=POS_FORM).json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600
    basic = (POS_FORM["client_id"], POS_FORM["client_secret"])
    response = client.post(
        f"{POS}/oauth/token", data={"grant_type": "client_credentials"}, auth=basic
    )
    assert response.status_code == 200


def test_token_errors(client):
    wrong = {**POS_FORM, "client_secret": "nope"}
    assert client.post(f"{POS}/oauth/token", data=wrong).json() == {"error": "invalid_client"}
    assert client.post(f"{ATTR}/oauth/token", data=POS_FORM).status_code == 401
    grant = client.post(f"{POS}/oauth/token", data={**POS_FORM, "grant_type": "password"})
    assert grant.status_code == 400 and grant.json() == {"error": "unsupported_grant_type"}
    as_json = client.post(f"{POS}/oauth/token", json=POS_FORM)
    assert as_json.status_code == 400 and as_json.json() == {"error": "invalid_request"}


def test_api_needs_a_token_of_the_same_api(client):
    missing = client.get(f"{POS}/api/v1/customers")
    assert missing.status_code == 401 and missing.json()["status"] == 401
    assert "traceId" in missing.json()
    attr_token = token(client, ATTR, ATTR_FORM)
    assert client.get(f"{POS}/api/v1/customers", headers=attr_token).status_code == 401
    assert client.get(f"{ATTR}/api/v1/tickets", headers=attr_token).status_code == 200


def test_attractions_endpoints_on_pos_base_are_forbidden(client):
    response = client.get(f"{POS}/api/v1/tickets", headers=token(client))
    assert response.status_code == 403
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["title"] == "Forbidden"


def test_paging_returns_every_customer_once_in_id_order(client, sandbox):
    items, total = fetch_all(client, f"{POS}/api/v1/customers", token(client))
    ids = [c["CustomerId"] for c in items]
    assert total == len(sandbox.data.flexpos_customers) == len(ids)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    beyond = client.get(f"{POS}/api/v1/customers", headers=token(client), params={"page": 99})
    assert beyond.json()["Items"] == [] and beyond.json()["TotalCount"] == total


def test_page_size_and_bad_parameters_are_problem_details(client):
    headers = token(client)
    big = client.get(f"{POS}/api/v1/customers", headers=headers, params={"pageSize": 501})
    assert big.status_code == 400 and "pageSize" in big.json()["errors"]
    assert (
        client.get(f"{POS}/api/v1/customers", headers=headers, params={"pageSize": 500}).status_code
        == 200
    )
    flag = client.get(f"{POS}/api/v1/customers", headers=headers, params={"isClubMember": "true"})
    assert flag.status_code == 400 and "isClubMember" in flag.json()["errors"]


def test_customer_switches_combine_with_and(client, sandbox):
    params = {"isActive": "true", "isClubMember": 1, "getsNewsletter": 1}
    items, total = fetch_all(client, f"{POS}/api/v1/customers", token(client), **params)
    expected = [
        c
        for c in sandbox.data.flexpos_customers
        if c["IsActive"] and c["IsClubMember"] == 1 and c["GetsNewsletter"] == 1
    ]
    assert total == len(expected) and {c["CustomerId"] for c in items} == {
        c["CustomerId"] for c in expected
    }


def test_customer_by_id(client, sandbox):
    first = sandbox.data.flexpos_customers[0]
    headers = token(client)
    assert (
        client.get(f"{POS}/api/v1/customers/{first['CustomerId']}", headers=headers).json() == first
    )
    assert client.get(f"{POS}/api/v1/customers/999999", headers=headers).status_code == 404


def test_journal_date_range_is_inclusive_and_capped(client, sandbox):
    journals = sandbox.data.journals
    start, end = journals[10]["Date"][:10], journals[60]["Date"][:10]
    items, total = fetch_all(
        client, f"{POS}/api/v1/journals", token(client), page_size=500, fromDate=start, toDate=end
    )
    expected = [j for j in journals if start <= j["Date"][:10] <= end]
    assert total == len(expected) and items == sorted(expected, key=lambda j: j["JournalId"])
    too_long = {"fromDate": "2024-01-01", "toDate": "2025-01-02"}
    refused = client.get(f"{POS}/api/v1/journals", headers=token(client), params=too_long)
    assert refused.status_code == 400 and "toDate" in refused.json()["errors"]
    one_year = {"fromDate": "2024-01-01", "toDate": "2025-01-01"}
    assert (
        client.get(f"{POS}/api/v1/journals", headers=token(client), params=one_year).status_code
        == 200
    )
    backwards = {"fromDate": "2024-05-02", "toDate": "2024-05-01"}
    assert (
        client.get(f"{POS}/api/v1/journals", headers=token(client), params=backwards).status_code
        == 400
    )


def test_journal_customer_filter(client, sandbox):
    customer_id = next(j["CustomerId"] for j in sandbox.data.journals if j["CustomerId"])
    items, _ = fetch_all(client, f"{POS}/api/v1/journals", token(client), customerId=customer_id)
    assert items and all(j["CustomerId"] == customer_id for j in items)


def test_modified_since_sees_upserts_and_new_journals(client, sandbox):
    now = datetime.now(ZoneInfo("Europe/Copenhagen")).replace(microsecond=0, tzinfo=None)
    cursor = (now - timedelta(seconds=2)).isoformat()
    headers = token(client)
    before = client.get(
        f"{POS}/api/v1/customers", headers=headers, params={"modifiedSince": cursor}
    ).json()
    assert before["TotalCount"] == 0
    sandbox.emulator("flexpos").upsert_customer({"CustomerId": 1003, "Email": "ny.adresse@mail.dk"})
    created = sandbox.emulator("flexpos").upsert_customer(
        {"FirstName": "Ærlig", "Email": "aerlig@mail.dk"}
    )
    journal = sandbox.emulator("flexpos").add_journal({"CustomerId": created["CustomerId"]})
    after = client.get(
        f"{POS}/api/v1/customers", headers=headers, params={"modifiedSince": cursor}
    ).json()
    assert {c["CustomerId"] for c in after["Items"]} == {1003, created["CustomerId"]}
    assert after["Items"][0]["Email"] == "ny.adresse@mail.dk"
    assert after["Items"][0]["Modified"] >= cursor
    journals = client.get(
        f"{POS}/api/v1/journals", headers=headers, params={"modifiedSince": cursor}
    ).json()
    assert [j["JournalId"] for j in journals["Items"]] == [journal["JournalId"]]


def test_control_route_upserts_a_customer(client, sandbox):
    response = client.post("/_sandbox/flexpos/customers", json={"CustomerId": 1004, "City": "Køge"})
    assert (
        response.status_code == 200 and sandbox.emulator("flexpos").customer(1004)["City"] == "Køge"
    )


def test_attractions_tickets_and_memberships(client, sandbox):
    headers = token(client, ATTR, ATTR_FORM)
    tickets, total = fetch_all(client, f"{ATTR}/api/v1/tickets", headers)
    assert total == len(sandbox.data.tickets) and tickets[0]["Zone"]
    memberships, _ = fetch_all(client, f"{ATTR}/api/v1/memberships", headers)
    assert len(memberships) == len(sandbox.data.memberships)
    assert client.get(f"{ATTR}/api/v1/customers", headers=headers).status_code == 403


def test_expired_token_is_refused_then_refreshed():
    with SandboxServer(customers=5, rate_limits=False, token_lifetime=1) as server:
        with httpx.Client(base_url=server.url) as http:
            headers = token(http)
            assert http.get(f"{POS}/api/v1/customers", headers=headers).status_code == 200
            time.sleep(1.1)
            expired = http.get(f"{POS}/api/v1/customers", headers=headers)
            assert expired.status_code == 401 and "expired" in expired.json()["detail"]
            assert "invalid_token" in expired.headers["www-authenticate"]
            assert http.get(f"{POS}/api/v1/customers", headers=token(http)).status_code == 200
            assert server.emulator("flexpos").tokens_issued["pos"] == 2


def test_rate_limit_answers_429_with_retry_after():
    with SandboxServer(customers=5, rate_limits=True) as server:
        with httpx.Client(base_url=server.url) as http:
            headers = token(http)
            codes = [http.get(f"{POS}/api/v1/customers", headers=headers) for _ in range(15)]
            limited = [r for r in codes if r.status_code == 429]
            assert limited and int(limited[0].headers["retry-after"]) >= 1
            assert limited[0].json()["status"] == 429
            time.sleep(float(limited[0].headers["retry-after"]))
            assert http.get(f"{POS}/api/v1/customers", headers=headers).status_code == 200


def test_fault_injection(client, sandbox):
    sandbox.faults.add("/api/v1/journals", 503, times=2, retry_after=2)
    headers = token(client)
    first = client.get(f"{POS}/api/v1/journals", headers=headers)
    second = client.get(f"{POS}/api/v1/journals", headers=headers)
    assert first.status_code == second.status_code == 503
    assert first.headers["retry-after"] == "2"
    assert client.get(f"{POS}/api/v1/journals", headers=headers).status_code == 200
    sandbox.faults.add("/api/v1/customers", 500, times=5)
    sandbox.faults.clear()
    assert client.get(f"{POS}/api/v1/customers", headers=headers).status_code == 200


def test_one_year_window_is_accepted_for_today():
    # the vendor's today is Copenhagen's (an hour ahead of UTC in the last hour of a UTC day)
    today = datetime.now(ZoneInfo("Europe/Copenhagen")).date()
    start = (today - timedelta(days=366)).isoformat()
    with SandboxServer(customers=5, rate_limits=False) as server:
        with httpx.Client(base_url=server.url) as http:
            response = http.get(
                f"{POS}/api/v1/journals", headers=token(http), params={"fromDate": start}
            )
            assert response.status_code == 200
