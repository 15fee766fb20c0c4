"""TicketmasterClient edge cases against httpx.MockTransport (TM-A1..TM-A4)."""

from __future__ import annotations

import base64
import logging
import re
import time
from datetime import UTC, date, datetime

import httpx
import pytest

from resources.base import VendorError
from resources.ticketmaster import TicketmasterClient, rate_limit_reset_wait


@pytest.fixture(autouse=True)
def _data_dir(tmp_path, monkeypatch):
    """The apikey's day of calls (TM-A2) is counted in <data dir>/rate_budget: a test's own."""
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))


BASE = "http://tm.test/ticketmaster"
APIKEY = "tm-apikey-secret-42"
PASSWORD = "tm-password-secret"
ROOT = "/ticketmaster/client-data/v1/TM_DK"


class FakeTicketmaster:
    """HAL pages of `total` records; `next` hrefs are relative and carry no apikey."""

    def __init__(self, total: int = 5) -> None:
        self.total = total
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.params.get("apikey") != APIKEY:
            fault = {"faultstring": "Invalid ApiKey", "detail": {"errorcode": "x"}}
            return httpx.Response(401, json={"fault": fault})
        collection = request.url.path.rsplit("/", 1)[-1]
        page = int(request.url.params.get("page", 0))
        size = int(request.url.params.get("size", 100))
        ids = range(page * size, min((page + 1) * size, self.total))
        key = "customerId" if collection == "customers" else "orderId"
        items = [{key: f"id-{i}", "modifiedDate": "2024-05-01T10:00:00Z"} for i in ids]
        links = {"self": {"href": str(request.url)}}
        if (page + 1) * size < self.total:
            links["next"] = {"href": f"{request.url.path}?page={page + 1}&size={size}"}
        body = {
            "_embedded": {collection: items},
            "_links": links,
            "page": {"totalElements": self.total},
        }
        return httpx.Response(200, json=body)


def make_client(handler, waits: list[float] | None = None, **kwargs) -> TicketmasterClient:
    return TicketmasterClient(
        base_url=BASE,
        apikey=APIKEY,
        market_code="TM_DK",
        username="tm-user",
        password=PASSWORD,
        transport=httpx.MockTransport(handler),
        sleep=(waits if waits is not None else []).append,
        **kwargs,
    )


def test_follows_next_links_with_apikey_and_basic_auth_until_absent():
    fake = FakeTicketmaster(total=5)
    pages = list(make_client(fake, page_size=2).iter_changed("orders", None))
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [r.url.params["page"] for r in fake.requests] == ["0", "1", "2"]
    basic = "Basic " + base64.b64encode(f"tm-user:{PASSWORD}".encode()).decode()
    assert all(r.headers["Authorization"] == basic for r in fake.requests)
    assert all(r.url.path == f"{ROOT}/orders" for r in fake.requests)


def test_consent_only_on_full_customer_loads():
    fake = FakeTicketmaster(total=1)
    client = make_client(fake)
    list(client.iter_changed("customers", None))
    list(client.iter_changed("customers", datetime(2024, 5, 1, 12, 0, 0, 999, tzinfo=UTC)))
    full, incremental = (r.url.params for r in fake.requests)
    assert full["consent"] == "true" and "modifiedSince" not in full
    assert "consent" not in incremental
    assert incremental["modifiedSince"] == "2024-05-01T12:00:00Z"


def test_iter_range_splits_two_years_and_customers_keep_consent():
    fake = FakeTicketmaster(total=0)
    client = make_client(fake)
    list(client.iter_range("orders", date(2023, 1, 1), date(2024, 12, 31)))
    list(client.iter_range("customers", date(2024, 1, 1), date(2024, 1, 31)))
    windows = [(r.url.params["fromDate"], r.url.params["toDate"]) for r in fake.requests]
    assert windows == [
        ("2023-01-01", "2024-01-01"),
        ("2024-01-02", "2024-12-31"),
        ("2024-01-01", "2024-01-31"),
    ]
    assert "consent" not in fake.requests[0].url.params
    assert fake.requests[2].url.params["consent"] == "true"


def test_has_changes_uses_total_elements():
    fake = FakeTicketmaster(total=3)
    assert make_client(fake).has_changes("customers", datetime(2024, 1, 1, tzinfo=UTC))
    assert fake.requests[0].url.params["size"] == "1"
    assert not make_client(FakeTicketmaster(total=0)).has_changes("orders", None)


def test_429_waits_until_rate_limit_reset():
    fake = FakeTicketmaster(total=1)
    reset_ms = int((time.time() + 2.0) * 1000)
    answers = [
        httpx.Response(
            429,
            headers={"Rate-Limit-Reset": str(reset_ms), "Retry-After": "30"},
            json={"fault": {"faultstring": "Rate limit quota violation."}},
        )
    ]

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else fake(request)

    waits: list[float] = []
    # without client-side pacing: an earlier test's calls on this apikey must not make it wait
    client = make_client(handler, waits, requests_per_second=0)
    assert client.has_changes("orders", None)
    assert len(waits) == 1 and 1.0 < waits[0] <= 2.0
    assert client.calls.by_endpoint() == {"orders": 2}


def test_rate_limit_reset_hook():
    response = httpx.Response(429, headers={"Rate-Limit-Reset": "10500"})
    assert rate_limit_reset_wait(response, now=lambda: 10.0) == 0.5
    assert rate_limit_reset_wait(response, now=lambda: 99.0) == 0.0
    assert rate_limit_reset_wait(httpx.Response(429), now=lambda: 0.0) is None
    assert rate_limit_reset_wait(httpx.Response(503, headers={"Rate-Limit-Reset": "1"})) is None


def test_bad_apikey_fault_text_without_the_key(caplog):
    caplog.set_level(logging.DEBUG)
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        body = {"fault": {"faultstring": f"Invalid ApiKey {request.url}"}}
        return httpx.Response(401, json=body)

    with pytest.raises(VendorError) as info:
        make_client(handler).check_connection()
    assert "Invalid ApiKey" in info.value.message and len(requests) == 1
    assert APIKEY not in str(info.value) and APIKEY not in str(info.value.body)
    assert APIKEY not in caplog.text and PASSWORD not in caplog.text


def test_400_errors_detail_and_no_retry():
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        error = {"code": "INVALID_DATE_RANGE", "detail": "Date range must not exceed one year"}
        return httpx.Response(400, json={"errors": [error]})

    with pytest.raises(VendorError) as info:
        list(make_client(handler).iter_range("orders", date(2024, 1, 1), date(2024, 1, 5)))
    assert info.value.message == "Date range must not exceed one year" and len(requests) == 1


def test_503_then_success():
    fake = FakeTicketmaster(total=1)
    answers = [httpx.Response(503, json={"errors": [{"detail": "busy"}]})]
    waits: list[float] = []
    client = make_client(lambda r: answers.pop(0) if answers else fake(r), waits)
    assert [len(p) for p in client.iter_changed("customers", None)] == [1]
    assert waits == [0.5]


def test_record_meta():
    client = make_client(FakeTicketmaster())
    order = client.record_meta(
        "orders",
        {"orderId": 9, "orderDate": "2024-03-01T23:30:00Z", "modifiedDate": "2024-03-02T01:00:00Z"},
    )
    assert order.record_id == "9" and order.business_date == date(2024, 3, 1)
    assert order.modified == datetime(2024, 3, 2, 1, 0, tzinfo=UTC)
    customer = client.record_meta("customers", {"customerId": "c1", "modifiedDate": "2024-03-02"})
    assert customer.business_date is None and customer.modified.tzinfo == UTC
    assert [e.name for e in client.entities()] == ["customers", "orders"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"modifiedDate": "yesterday"}, "modifiedDate: 'yesterday' is not a date"),
        ({"modifiedDate": None}, "modifiedDate: None is not a date"),
        ({"orderDate": "2024-13-01T00:00:00Z"}, "orderDate: '2024-13-01T00:00:00Z' is not a date"),
        ({"orderId": None}, "orderId: None is not a record id"),
        ({"orderId": {"id": 1}}, "orderId: {'id': 1} is not a record id"),
    ],
)
def test_record_meta_names_the_field_it_cannot_read(change, message):
    """A ValueError naming the field (never KeyError/TypeError): landing quarantines the record."""
    client = make_client(FakeTicketmaster())
    order = {"orderId": 9, "orderDate": "2024-03-01T23:30:00Z", "modifiedDate": "2024-03-02"}
    with pytest.raises(ValueError, match=re.escape(message)):
        client.record_meta("orders", {**order, **change})
    with pytest.raises(ValueError, match="modifiedDate: None is not a date"):
        client.record_meta("orders", {"orderId": 9, "orderDate": "2024-03-01T23:30:00Z"})
