"""FlexPOSClient edge cases against httpx.MockTransport (FP-A2, FP-A3, FP-A4)."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime

import httpx
import pytest

from resources.auth import forget_shared_tokens
from resources.base import VendorError
from resources.flexpos import FlexPOSClient

POS = "http://pos.test/flexpos/pos"
ATTR = "http://pos.test/flexpos/attractions"
SECRET = "pos-client-secret-xyz"


class FakeFlexPOS:
    """Just enough of the FP-A* contract: tokens, a paging envelope, scripted failures."""

    def __init__(self, total: int = 5, expires_in: int = 3600) -> None:
        self.total = total
        self.expires_in = expires_in
        self.tokens_issued = 0
        self.reject_tokens: set[str] = set()
        self.requests: list[httpx.Request] = []
        self.lie_about_total = False

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.endswith("/oauth/token"):
            return self._token(request)
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if not token.startswith("tok-") or token in self.reject_tokens:
            return httpx.Response(401, json={"title": "Unauthorized", "status": 401})
        return self._page(request)

    def _token(self, request: httpx.Request) -> httpx.Response:
        form = dict(httpx.QueryParams(request.content.decode()))
        if form.get("client_secret") != SECRET or form.get("grant_type") != "client_credentials":
            return httpx.Response(401, json={"error": "invalid_client"})
        self.tokens_issued += 1
        body = {"access_token": f"tok-{self.tokens_issued}", "expires_in": self.expires_in}
        return httpx.Response(200, json={**body, "token_type": "Bearer"})

    def _page(self, request: httpx.Request) -> httpx.Response:
        page = int(request.url.params["page"])
        size = int(request.url.params["pageSize"])
        start = (page - 1) * size
        ids = range(start, min(start + size, self.total))
        total = self.total + 100 if self.lie_about_total else self.total
        items = [{"CustomerId": i, "Modified": "2024-06-01T12:00:00"} for i in ids]
        return httpx.Response(
            200, json={"Items": items, "Page": page, "PageSize": size, "TotalCount": total}
        )

    def api_requests(self) -> list[httpx.Request]:
        return [r for r in self.requests if "/api/v1/" in r.url.path]


@pytest.fixture(autouse=True)
def _fresh_tokens():
    """Each test's fake FlexPOS issues its own tokens: none kept from an earlier test."""
    forget_shared_tokens()
    yield
    forget_shared_tokens()


def make_client(fake: FakeFlexPOS, waits: list[float] | None = None, **kwargs) -> FlexPOSClient:
    kwargs.setdefault("client_id", "pos-id")
    return FlexPOSClient(
        pos_base_url=POS,
        client_secret=SECRET,
        transport=httpx.MockTransport(fake),
        sleep=(waits if waits is not None else []).append,
        **kwargs,
    )


def test_pages_until_page_times_size_reaches_total():
    fake = FakeFlexPOS(total=5)
    pages = list(make_client(fake, page_size=2).iter_changed("customers", None))
    assert [[r["CustomerId"] for r in p] for p in pages] == [[0, 1], [2, 3], [4]]
    assert [r.url.params["page"] for r in fake.api_requests()] == ["1", "2", "3"]
    assert fake.tokens_issued == 1


def test_stops_on_empty_page_even_if_total_says_more():
    fake = FakeFlexPOS(total=3)
    fake.lie_about_total = True
    pages = list(make_client(fake, page_size=2).iter_changed("customers", None))
    assert sum(len(p) for p in pages) == 3
    assert len(fake.api_requests()) == 3  # pages 1, 2 and the empty page 3


def test_modified_since_is_copenhagen_local_without_offset_and_filters_only_when_on():
    fake = FakeFlexPOS(total=0)
    client = make_client(fake, only_active=True, only_newsletter=True)
    list(client.iter_changed("customers", datetime(2024, 6, 1, 10, 0, tzinfo=UTC)))
    list(client.iter_changed("customers", datetime(2024, 1, 15, 10, 0, 5, tzinfo=UTC)))
    list(client.iter_changed("journals", datetime(2024, 1, 15, 10, 0, tzinfo=UTC)))
    summer, winter, journals = (r.url.params for r in fake.api_requests())
    assert summer["modifiedSince"] == "2024-06-01T12:00:00"  # CEST, UTC+2
    assert winter["modifiedSince"] == "2024-01-15T11:00:05"  # CET, UTC+1
    assert summer["isActive"] == "true" and summer["getsNewsletter"] == "1"
    assert "isClubMember" not in summer
    assert "isActive" not in journals and "getsNewsletter" not in journals


def test_no_filters_by_default():
    fake = FakeFlexPOS(total=0)
    list(make_client(fake).iter_changed("customers", None))
    params = fake.api_requests()[0].url.params
    assert set(params) == {"page", "pageSize"}


def test_token_refreshed_60s_before_expiry():
    fake = FakeFlexPOS(total=1, expires_in=3600)
    now = [1000.0]
    client = make_client(fake, clock=lambda: now[0])
    client.has_changes("customers", None)
    now[0] += 3500  # 100 s left: still good
    client.has_changes("customers", None)
    assert fake.tokens_issued == 1
    now[0] += 50  # 50 s left: inside the 60 s margin
    client.has_changes("customers", None)
    assert fake.tokens_issued == 2


def test_a_token_serves_every_client_of_the_credentials_until_it_expires():
    """The next sensor tick (a new client) reuses the token instead of asking for one; a
    refused token is forgotten for all of them."""
    fake = FakeFlexPOS(total=1, expires_in=3600)
    now = [1000.0]
    clock = lambda: now[0]  # noqa: E731 - one clock for both clients: one shared token
    make_client(fake, clock=clock).has_changes("customers", None)
    make_client(fake, clock=clock).has_changes("customers", None)
    assert fake.tokens_issued == 1
    now[0] += 3550  # inside the 60 s margin: the next client asks anew
    make_client(fake, clock=clock).has_changes("customers", None)
    assert fake.tokens_issued == 2
    fake.reject_tokens.add("tok-2")
    make_client(fake, clock=clock).has_changes("customers", None)
    assert fake.tokens_issued == 3
    other = FakeFlexPOS(total=1)
    make_client(other, clock=clock, client_id="other-id").has_changes("customers", None)
    assert other.tokens_issued == 1  # another credential: its own token


def test_token_refreshed_once_on_401():
    fake = FakeFlexPOS(total=1)
    fake.reject_tokens.add("tok-1")
    pages = list(make_client(fake).iter_changed("customers", None))
    assert len(pages) == 1 and fake.tokens_issued == 2
    auths = [r.headers["Authorization"] for r in fake.api_requests()]
    assert auths == ["Bearer tok-1", "Bearer tok-2"]


def test_second_401_is_raised():
    fake = FakeFlexPOS(total=1)
    fake.reject_tokens.update({"tok-1", "tok-2"})
    with pytest.raises(VendorError) as info:
        make_client(fake).check_connection()
    assert info.value.status == 401 and fake.tokens_issued == 2


def test_bad_client_secret_fails_at_once_without_leaking_it(caplog):
    caplog.set_level(logging.DEBUG)
    fake = FakeFlexPOS()
    client = FlexPOSClient(
        pos_base_url=POS,
        client_id="pos-id",
        client_secret="wrong-secret-123",
        transport=httpx.MockTransport(fake),
        sleep=[].append,
    )
    with pytest.raises(VendorError) as info:
        client.check_connection()
    assert info.value.status == 401 and "invalid_client" in info.value.message
    assert "wrong-secret-123" not in str(info.value) and "wrong-secret-123" not in caplog.text
    assert len(fake.requests) == 1


def test_iter_range_splits_two_years_into_windows():
    fake = FakeFlexPOS(total=0)
    list(make_client(fake).iter_range("journals", date(2023, 1, 1), date(2024, 12, 31)))
    windows = [(r.url.params["fromDate"], r.url.params["toDate"]) for r in fake.api_requests()]
    assert windows == [("2023-01-01", "2024-01-01"), ("2024-01-02", "2024-12-31")]
    assert all(r.url.path == "/flexpos/pos/api/v1/journals" for r in fake.api_requests())


def test_iter_range_refuses_customers():
    with pytest.raises(ValueError, match="business date"):
        list(make_client(FakeFlexPOS()).iter_range("customers", date(2024, 1, 1), date(2024, 2, 1)))


def test_has_changes_is_one_call_with_page_size_1():
    fake = FakeFlexPOS(total=7)
    client = make_client(fake, only_club_members=True)
    assert client.has_modified("customers", datetime(2024, 6, 1, tzinfo=UTC)) is True
    [request] = fake.api_requests()
    assert request.url.params["pageSize"] == "1" and request.url.params["isClubMember"] == "1"
    assert request.url.params["modifiedSince"] == "2024-06-01T02:00:00"
    assert make_client(FakeFlexPOS(total=0)).has_changes("customers", None) is False


def test_cursor_is_an_iso_string_and_the_probe_asks_from_the_next_second():
    """The pipeline stores the cursor as text; the read repeats the cursor's second (inclusive),
    the sensor's probe starts after it (what is at the cursor is already landed)."""
    fake = FakeFlexPOS(total=0)
    client = make_client(fake)
    mark = datetime(2024, 6, 1, 10, 0, tzinfo=UTC)
    cursor = client.cursor_after("customers", None, mark, datetime.now(UTC))
    assert cursor == mark.isoformat()
    assert client.cursor_after("customers", cursor, None, datetime.now(UTC)) == cursor
    list(client.iter_changed("customers", cursor))
    client.has_changes("customers", cursor)
    read, probe = (r.url.params["modifiedSince"] for r in fake.api_requests())
    assert read == "2024-06-01T12:00:00" and probe == "2024-06-01T12:00:01"


def test_attractions_entities_use_their_own_base_and_token():
    fake = FakeFlexPOS(total=1)
    without = make_client(fake)
    assert [e.name for e in without.entities()] == ["customers", "journals"]
    with pytest.raises(ValueError, match="Attractions"):
        list(without.iter_changed("tickets", None))
    client = make_client(
        fake,
        attractions_base_url=ATTR,
        attractions_client_id="attr-id",
        attractions_client_secret=SECRET,
    )
    assert [e.name for e in client.entities()] == [
        "customers",
        "journals",
        "tickets",
        "memberships",
    ]
    list(client.iter_changed("tickets", None))
    list(client.iter_changed("customers", None))
    token_urls = [str(r.url) for r in fake.requests if r.url.path.endswith("/oauth/token")]
    assert token_urls == [f"{ATTR}/oauth/token", f"{POS}/oauth/token"]
    assert fake.api_requests()[0].url.path == "/flexpos/attractions/api/v1/tickets"


def test_partial_attractions_config_is_refused():
    with pytest.raises(ValueError, match="together"):
        make_client(FakeFlexPOS(), attractions_base_url=ATTR)


def test_record_meta():
    client = make_client(FakeFlexPOS())
    customer = client.record_meta(
        "customers", {"CustomerId": 42, "Modified": "2024-06-01T12:30:00"}
    )
    assert customer.record_id == "42" and customer.business_date is None
    assert customer.modified == datetime(2024, 6, 1, 10, 30, tzinfo=UTC)
    journal = client.record_meta(
        "journals", {"JournalId": 7, "Date": "2024-03-01T00:30:00", "Modified": "2024-03-01T00:31"}
    )
    assert journal.business_date == date(2024, 3, 1)  # the local day, not the UTC one
    assert journal.modified == datetime(2024, 2, 29, 23, 31, tzinfo=UTC)


def test_429_retry_after_then_success():
    fake = FakeFlexPOS(total=1)
    answers = iter([httpx.Response(429, headers={"Retry-After": "3"})])

    def handler(request: httpx.Request) -> httpx.Response:
        if "/api/v1/" in request.url.path:
            nxt = next(answers, None)
            if nxt is not None:
                return nxt
        return fake(request)

    waits: list[float] = []
    client = FlexPOSClient(
        pos_base_url=POS,
        client_id="pos-id",
        client_secret=SECRET,
        transport=httpx.MockTransport(handler),
        sleep=waits.append,
    )
    assert client.has_changes("customers", None) is True
    assert waits == [3.0]
    assert client.calls.by_endpoint() == {"pos/oauth/token": 1, "customers": 2}


def test_400_problem_details_reach_the_vendor_error():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth/token"):
            return httpx.Response(200, json={"access_token": "tok-1", "expires_in": 3600})
        problem = {"title": "Bad Request", "errors": {"toDate": ["Range exceeds 366 days"]}}
        return httpx.Response(400, json=problem)

    client = FlexPOSClient(
        pos_base_url=POS,
        client_id="i",
        client_secret=SECRET,
        transport=httpx.MockTransport(handler),
        sleep=[].append,
    )
    with pytest.raises(VendorError) as info:
        list(client.iter_range("journals", date(2024, 1, 1), date(2024, 1, 2)))
    assert "Range exceeds 366 days" in info.value.message and info.value.status == 400
    assert client.calls.total == 2


def test_a_garbled_or_lost_token_answer_is_asked_again():
    """A token request is safe to repeat: a cut-off 200 or a 502 is retried, not a failure."""
    fake = FakeFlexPOS(total=1)
    answers = iter(
        [
            httpx.Response(200, content=b'{"access_tok'),
            httpx.Response(502, json={"error": "bad gateway"}),
        ]
    )

    def flaky(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/oauth/token"):
            scripted = next(answers, None)
            if scripted is not None:
                return scripted
        return fake(request)

    client = FlexPOSClient(
        pos_base_url=POS,
        client_id="pos-id",
        client_secret=SECRET,
        transport=httpx.MockTransport(flaky),
        sleep=lambda _: None,
    )
    pages = list(client.iter_changed("customers", None))
    assert [r["CustomerId"] for p in pages for r in p] == [0]
    assert fake.tokens_issued == 1
