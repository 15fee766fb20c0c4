"""AdminClient against a scripted Admin (httpx.MockTransport): the token and its renewal
(AD-A2), the server's clock read from it, throttling 403s waited out and pacing (AD-A3), Link
paging (a proxy's host name replaced by ours) and empty answers (AD-A4), the selection (AD-A5),
change-log reads by LogId (bursts over 1000 rows, a DST fall-back, the older text cursor),
chunks of 100 and tombstones (AD-A6), custom fields and their 404/403 (AD-A11), interests
(AD-A10, AF6), every write-back (AD-A7..A9, the head-office address on PUT) and the key kept
out of errors and logs; then the `source:` section and the default mappings; then the same
against the emulator over a real socket."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote
from zoneinfo import ZoneInfo

import httpx
import pytest
from pydantic import ValidationError

from memberflow.mapping import load_mapping
from resources.admin import AdminClient, AdminSource
from resources.admin_filter import local_text, one_of, text
from resources.base import VendorError
from resources.registry import parse_source
from resources.source import WriteBack, is_tombstone

KEY = "s3cr3t-admin-key-4711"
BASE = "http://admin.test/api/v1"
BRUSSELS = ZoneInfo("Europe/Brussels")
TABLES = "TableName in ('CUSTOMER','CUSTOMER_EXTRADATA')"
START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC).timestamp()


class Clock:
    """Wall clock for client and fake alike; sleeping moves it on."""

    def __init__(self) -> None:
        self.now = START
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def local(self, offset: float = 0) -> str:
        return local_text(datetime.fromtimestamp(self.now + offset, UTC), BRUSSELS)


def customer(cid: int, **fields: Any) -> dict[str, Any]:
    return {
        "CustomerId": cid,
        "Name": f"Peeters{cid}",
        "Firstname": "Jan",
        "Email": f"jan{cid}@kantoor.be",
        "Language": "N",
        "IsCompany": False,
        "IsActive": True,
        "Newsletter": True,
        "CustCode": f"K{cid:04d}",
        "CreationDate": "2020-01-01 10:00:00",
        **fields,
    }


@dataclass
class FakeAdmin:
    """Just enough Admin to script: filters the client sends, Link paging, tokens, 403s."""

    clock: Clock
    customers: dict[int, dict[str, Any]] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)
    extradata: list[dict[str, Any]] = field(default_factory=list)
    interests: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    communications: list[dict[str, Any]] = field(default_factory=list)
    addresses: list[dict[str, Any]] | None = field(default_factory=list)  # customeraddresses
    languages: list[dict[str, Any]] = field(default_factory=list)  # GET lists/19 rows
    settings: dict[str, Any] = field(
        default_factory=lambda: {
            "DefaultRecordsPerPage": 100,
            "MaxRecordsPerPage": 100,
            "DurationToken": 30,
            "RateLimit": 60,
        }
    )
    newsletter_writable: bool = True
    throttle: int = 0  # the next N calls answer 403 throttling
    fail: dict[str, int] = field(default_factory=dict)  # "METHOD path" -> 500s to answer
    link_host: str = "admin.test"
    link_prefix: str = "/api/v1"
    key: str = KEY
    time_to_live: str | None = None  # answered instead of the real expiry
    skew: float = 0.0  # seconds the server's clock is ahead of ours
    extradata_error: tuple[int, str] | None = None
    put_error: tuple[int, str] | None = None
    tokens: dict[str, float] = field(default_factory=dict)
    requests: list[httpx.Request] = field(default_factory=list)
    times: list[float] = field(default_factory=list)  # the clock at each request
    counts: Counter = field(default_factory=Counter)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        self.times.append(self.clock())
        path = request.url.path.removeprefix("/api/v1/")
        key = request.method + " " + re.sub(r"/\d+", "/{id}", path)
        self.counts[key if not path.startswith("token/") else "GET token"] += 1
        if self.throttle:
            self.throttle -= 1
            return error(403, "You are throttling the system")
        if self.fail.get(key):
            self.fail[key] -= 1
            return httpx.Response(500, text="boom")
        if path.startswith("token/"):
            raw = request.url.raw_path.decode().split("?")[0]
            return self.token(raw.removeprefix("/api/v1/token/"))
        expires = self.tokens.get(request.headers.get("synetonToken", ""))
        if expires is None or expires <= self.clock():
            return error(401, "Token expired")
        query = {k: v[0] for k, v in parse_qs(request.url.query.decode()).items()}
        body = json.loads(request.content) if request.content else None
        return self.route(request.method, path, query, body)

    def token(self, raw_key: str) -> httpx.Response:
        if raw_key != quote(self.key, safe=""):
            return error(401, "Invalid api key")
        guid = f"tok-{self.counts['GET token'] - 1}"
        lifetime = self.settings["DurationToken"] * 60
        self.tokens[guid] = self.clock() + lifetime
        expires = self.time_to_live or self.clock.local(lifetime + self.skew)
        return httpx.Response(200, json={"TokenGuid": guid, "TimeToLive": expires})

    def route(self, method: str, path: str, query: dict, body: Any) -> httpx.Response:
        if path == "apisettings":
            return httpx.Response(200, json=self.settings)
        if method == "GET" and path == "customers":
            return self.listing(path, query, list(self.customers.values()))
        if method == "GET" and path == "customer/changes":
            rows = self.listing(path, query, self.changes, cap=1000)
            return rows
        if method == "GET" and path.startswith("extradata/"):
            if self.extradata_error:
                return error(*self.extradata_error)
            return self.listing(path, query, self.extradata)
        if method == "GET" and path == "customeraddresses":
            if self.addresses is None:  # a server without the SDK's address endpoint
                return error(404, "Resource not found")
            return self.listing(path, query, self.addresses)
        if method == "GET" and path == "lists/19":
            return self.listing(path, query, self.languages)
        if method == "GET" and path == "communications":
            return self.listing(path, query, self.communications)
        found = re.fullmatch(r"customers/(\d+)(/interests)?", path)
        if method == "GET" and found:
            cid = int(found.group(1))
            if cid not in self.customers:
                return error(404, "Customer does not exist")
            if found.group(2):
                return self.listing(path, query, self.interests.get(cid, []))
            return httpx.Response(200, json=self.customers[cid])
        if method == "PUT" and path == "customers":
            return self.put(body)
        if method == "POST" and path == "customers":
            cid = max(self.customers, default=0) + 1
            self.customers[cid] = {**body, "CustomerId": cid, "IsActive": True}
            return httpx.Response(201, json=self.customers[cid])
        if method == "POST" and path == "communications":
            if body["CustomerId"] not in self.customers:
                return error(400, "Customer does not exist")
            made = {**body, "CommunicationId": 500 + len(self.communications)}
            self.communications.append(made)
            return httpx.Response(201, json=made)
        return error(404, "no route")

    def put(self, body: dict[str, Any]) -> httpx.Response:
        cid = body.get("CustomerId")
        if cid not in self.customers:
            return error(400, "Customer does not exist")
        if self.put_error:
            return error(*self.put_error)
        if "Newsletter" in body and not self.newsletter_writable:
            return error(400, "Field Newsletter is not writable")
        self.customers[cid].update(body)
        return httpx.Response(200, json=self.customers[cid])

    def listing(
        self, path: str, query: dict, rows: list[dict], cap: int | None = None
    ) -> httpx.Response:
        flt = query.get("Filter")
        kept = [r for r in rows if matches(r, flt)] if flt else list(rows)
        kept = kept[:cap] if cap else kept
        if not kept:
            return error(404, "Nothing found") if flt else httpx.Response(204)
        size = int(query.get("per_page", self.settings["DefaultRecordsPerPage"]))
        page = int(query.get("page", 1))
        chunk = kept[(page - 1) * size : page * size]
        headers = {}
        if page * size < len(kept):
            nxt = httpx.URL(f"http://{self.link_host}{self.link_prefix}/{path}").copy_merge_params(
                {**query, "page": page + 1}
            )
            headers["Link"] = f'<{nxt}>; rel="next"'
        return httpx.Response(200, json=chunk, headers=headers)


def error(status: int, message: str) -> httpx.Response:
    return httpx.Response(status, json={"ErrorMessage": message})


def matches(row: dict[str, Any], flt: str) -> bool:
    """The filters the client sends, and nothing more."""
    for part in re.split(r" and (?![^(]*\))", flt):
        contains = re.fullmatch(r"Contains\((\w+),'(.*)'\)", part.strip())
        if contains:
            if contains.group(2).lower() not in str(row.get(contains.group(1))).lower():
                return False
            continue
        m = re.fullmatch(r"(?:\w+\.)?(\w+) (eq|ge|gt|lt|in) (.+)", part.strip())
        assert m, f"unexpected filter {flt!r}"
        name, op, value = m.groups()
        have = row.get(name)
        if op == "in":
            items = [v.strip().strip("'") for v in value.strip("()").split(",")]
            if str(have) not in items:
                return False
            continue
        want: Any = value.strip("'")
        if value in ("true", "false"):
            want = value == "true"
        elif value.isdigit():
            want = int(value)
        if op == "eq" and (str(have).lower() if isinstance(want, str) else have) != (
            want.lower() if isinstance(want, str) else want
        ):
            return False
        if op == "ge" and not str(have) >= want:
            return False
        if op == "gt" and not (have or 0) > want:
            return False
        if op == "lt" and not str(have) < want:
            return False
    return True


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def admin(clock) -> FakeAdmin:
    return FakeAdmin(clock)


@pytest.fixture
def make(admin, clock):
    made: list[AdminClient] = []

    def build(**kwargs: Any) -> AdminClient:
        options = {
            "base_url": BASE,
            "api_key": KEY,
            "crm_type": "7",
            "pace": False,
            "throttle_seconds": 0.5,
            "transport": admin.transport(),
            "sleep": clock.sleep,
            "clock": clock,
            **kwargs,
        }
        client = AdminClient(**options)
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


def records(pages) -> list[dict[str, Any]]:
    return [r for page in pages for r in page]


def filters(admin: FakeAdmin, path: str) -> list[str]:
    """The Filter of each GET of `path` (a next page's included), in order."""
    wanted = f"/api/v1/{path}"
    return [
        r.url.params.get("Filter", "")
        for r in admin.requests
        if r.method == "GET" and r.url.path == wanted
    ]


# -- AD-A2: token ----------------------------------------------------------------------------------
def test_one_token_serves_calls_until_a_minute_before_time_to_live(make, admin, clock):
    client = make()
    client.check_connection()
    assert admin.requests[0].url.path == f"/api/v1/token/{KEY}"
    assert admin.requests[1].headers["synetonToken"] == "tok-0"
    clock.now += 28 * 60  # two minutes left: kept
    client.check_connection()
    assert admin.counts["GET token"] == 1
    clock.now += 61  # under a minute left: renewed before Admin would refuse it
    client.check_connection()
    assert admin.counts["GET token"] == 2
    assert admin.requests[-1].headers["synetonToken"] == "tok-1"


def test_a_token_refused_as_expired_is_renewed_once(make, admin):
    client = make()
    client.check_connection()
    admin.tokens.clear()  # the server forgot it (restart, shorter duration)
    client.check_connection()
    assert admin.counts["GET token"] == 2
    assert admin.counts["GET apisettings"] == 3  # the refused one, then once more
    assert admin.requests[-1].headers["synetonToken"] == "tok-1"


def test_a_token_shorter_than_two_margins_is_used_for_half_its_life(make, admin, clock):
    admin.settings["DurationToken"] = 1
    client = make()
    client.check_connection()
    clock.now += 29
    client.check_connection()
    assert admin.counts["GET token"] == 1
    clock.now += 2
    client.check_connection()
    assert admin.counts["GET token"] == 2


def test_a_refused_key_names_the_host_and_never_the_key(make, caplog):
    client = make(api_key="wrong-key-123456")
    with caplog.at_level(logging.DEBUG), pytest.raises(VendorError) as refused:
        client.check_connection()
    assert refused.value.status == 401
    assert "Invalid api key" in refused.value.message and "admin.test" in refused.value.message
    assert "wrong-key-123456" not in str(refused.value) + caplog.text


def test_the_key_in_the_token_path_never_reaches_a_log_line_or_error(make, caplog):
    seen: list[httpx.Request] = []

    def echoing(request: httpx.Request) -> httpx.Response:
        seen.append(request)  # a proxy error page that echoes the URL it was asked for
        return httpx.Response(502, json={"ErrorMessage": f"upstream failed for {request.url}"})

    client = make(max_tries=2, transport=httpx.MockTransport(echoing))
    with caplog.at_level(logging.DEBUG), pytest.raises(VendorError) as failed:
        client.check_connection()
    assert len(seen) == 2 and KEY in str(seen[0].url)
    assert KEY not in str(failed.value) + repr(failed.value.body) + caplog.text
    assert "/token/***" in caplog.text  # the retry was logged, with the key masked


# -- AD-A3: throttling and pacing ------------------------------------------------------------------
def test_a_throttling_403_is_waited_out_not_failed(make, admin, clock):
    client = make()
    client.check_connection()
    admin.throttle = 2
    client.check_connection()
    assert clock.slept == [0.5, 0.5]
    assert client.calls.throttled == 2


def test_another_403_fails_at_once_with_admin_words(make, admin):
    client = make()
    client.check_connection()
    admin.settings = None  # type: ignore[assignment]
    admin.route = lambda *a: error(403, "no valid configuration for token")  # type: ignore
    with pytest.raises(VendorError) as refused:
        client.check_connection()
    assert refused.value.status == 403
    assert refused.value.message.startswith("no valid configuration for token (apisettings")


def test_calls_are_paced_to_the_rate_limit_before_admin_refuses(make, admin, clock, tmp_path):
    admin.settings["RateLimit"] = 3
    admin.customers = {i: customer(i) for i in range(1, 4)}
    client = make(pace=True, budget_dir=tmp_path)
    for cid in (1, 2, 3, 1):
        client.fetch_records("customers", [str(cid)]).__next__()
    # 8 paced calls (customers + extradata per read) at 3 per 60 s: the limiter slept
    assert clock.slept and sum(clock.slept) >= 60
    assert admin.counts["GET customers"] == 4


# -- AD-A4/A5: the selection, paging, empty answers ------------------------------------------------
def test_the_first_read_is_the_selection_paged_by_link(make, admin):
    admin.customers = {i: customer(i) for i in range(1, 251)}
    admin.customers[7]["Newsletter"] = False
    admin.customers[8]["IsActive"] = False
    client = make()
    pages = list(client.iter_changed("customers", None))
    assert [len(p) for p in pages] == [100, 100, 48]
    got = records(pages)
    assert {r["CustomerId"] for r in got} == set(range(1, 251)) - {7, 8}
    assert all(r["InNewsletterSelection"] is True for r in got)
    assert set(filters(admin, "customers")) == {"IsActive eq true and Newsletter eq true"}
    sent = [r for r in admin.requests if r.url.path == "/api/v1/customers"]
    assert sent[0].url.params["per_page"] == "100"  # MaxRecordsPerPage
    assert admin.counts["GET apisettings"] == 1


def test_an_empty_list_204_and_an_empty_lookup_404_are_empty(make, admin):
    client = make()
    assert list(client.iter_changed("customers", None)) == []  # 204 (no relation at all)
    assert records(client.fetch_records("customers", ["41"])) == [
        {"CustomerId": "41", "_memberflow_deleted": True}
    ]  # 404 Nothing found: gone


def test_a_page_link_naming_another_host_is_followed_on_ours(make, admin):
    admin.customers = {i: customer(i) for i in range(1, 151)}
    admin.link_host = "admin-intern.kantoor.lan:2100"  # a reverse proxy's inner name
    client = make()
    assert len(records(client.iter_changed("customers", None))) == 150
    assert all(r.url.host == "admin.test" for r in admin.requests)
    assert [r.url.params.get("page") for r in admin.requests if r.url.path.endswith("/customers")
            ] == [None, "2"]  # fmt: skip


def test_a_page_link_outside_the_api_is_not_followed(make, admin):
    admin.customers = {i: customer(i) for i in range(1, 151)}
    admin.link_prefix = "/elsewhere"
    with pytest.raises(VendorError, match="outside the API"):
        list(make().iter_changed("customers", None))
    assert not any("elsewhere" in r.url.path for r in admin.requests)


def test_the_key_is_quoted_in_the_token_path(make, admin):
    admin.key = "k/ey?x#1"
    make(api_key="k/ey?x#1").check_connection()
    token = next(r for r in admin.requests if "/token/" in r.url.path)
    assert token.url.raw_path.decode() == "/api/v1/token/k%2Fey%3Fx%231"


def test_token_calls_are_paced_once_the_limiter_exists(make, admin, clock, tmp_path):
    admin.settings["RateLimit"] = 2
    admin.customers = {1: customer(1)}
    client = make(pace=True, budget_dir=tmp_path)
    client.check_connection()  # token (no limiter yet), apisettings: 1 of 2
    admin.tokens.clear()  # the next call is refused 401 and a new token fetched
    list(client.fetch_records("customers", ["1"]))  # customers (2 of 2), token, customers
    tokens = [i for i, r in enumerate(admin.requests) if "/token/" in r.url.path]
    assert len(tokens) == 2 and admin.times[tokens[1]] >= START + 60  # it waited for room


def test_custom_fields_are_joined_from_the_whole_table_on_a_full_read(make, admin):
    admin.customers = {1: customer(1), 2: customer(2)}
    admin.extradata = [
        {"CustomerId": 1, "acc_software": "Exact", "kantoor": "Gent"},
        {"CustomerId": 9, "acc_software": "Octopus"},
        {"CustomerId": 2, "Name": "not over the relation's own", "acc_software": "Yuki"},
    ]
    client = make(custom_fields_table=3)
    got = {r["CustomerId"]: r for r in records(client.iter_changed("customers", None))}
    assert got[1]["acc_software"] == "Exact" and got[1]["kantoor"] == "Gent"
    assert got[2]["acc_software"] == "Yuki" and got[2]["Name"] == "Peeters2"
    assert filters(admin, "extradata/3") == [""]


def test_no_extradata_is_no_custom_fields(make, admin):
    admin.customers = {1: customer(1)}
    admin.extradata_error = (404, "No extradata found")
    got = records(make().iter_changed("customers", None))
    assert [r["CustomerId"] for r in got] == [1] and "acc_software" not in got[0]


def test_extradata_not_permitted_hands_relations_without_custom_fields(make, admin, clock):
    admin.customers = {1: customer(1), 2: customer(2)}
    admin.extradata_error = (403, "no valid configuration for token")
    client = make()
    got = records(client.iter_changed("customers", None))
    assert sorted(r["CustomerId"] for r in got) == [1, 2]
    admin.changes = [change(2, clock.local(), log_id=3)]
    changed = records(client.iter_changed("customers", "2026-03-02 09:59:00"))
    assert [r["CustomerId"] for r in changed] == [2]
    warned = client.run_warnings()
    assert len(warned) == 1 and "no valid configuration for token" in warned[0]


# -- AD-A6: the change log -------------------------------------------------------------------------
def change(cid: int, when: str, action: str = "UPDATE", log_id: int = 0) -> dict[str, Any]:
    return {"LogId": log_id, "Id": cid, "OwnId": cid, "TableName": "CUSTOMER",
            "ActionType": action, "DateAction": when}  # fmt: skip


def test_the_cursor_starts_at_the_full_read_then_follows_the_highest_log_id(make, admin, clock):
    admin.customers = {1: customer(1)}
    client = make()
    started = clock.local()
    list(client.iter_changed("customers", None))
    cursor = client.cursor_after("customers", None, None, datetime.now(UTC))
    assert cursor == started  # the text-only format, read with an overlap
    clock.now += 300
    admin.changes = [change(1, clock.local(-10), log_id=41)]
    assert client.has_changes("customers", cursor) is True
    probe = [r for r in admin.requests if r.url.path.endswith("customer/changes")][-1]
    assert probe.url.params["per_page"] == "1"
    # the probe looks from the cursor itself; the read goes 65 minutes further back
    assert probe.url.params["Filter"] == f"{TABLES} and DateAction ge '{started}'"
    got = records(client.iter_changed("customers", cursor))
    assert [r["CustomerId"] for r in got] == [1]
    assert got[0]["ChangedAt"] == "2026-03-02T10:05:00+01:00"  # the read's start, with offset
    after = client.cursor_after("customers", cursor, None, datetime.now(UTC))
    assert after == f"{clock.local()}|41"
    assert client.has_changes("customers", after) is False
    assert filters(admin, "customer/changes")[-1] == f"{TABLES} and l.LogId gt 41"
    clock.now += 300
    admin.changes.append(change(1, clock.local(-400), log_id=42))  # written late, or clock off
    got = records(client.iter_changed("customers", after))
    assert [r["CustomerId"] for r in got] == [1]  # our clock does not bound the window
    assert client.cursor_after("customers", after, None, datetime.now(UTC)).endswith("|42")


def test_changed_ids_are_read_100_at_a_time_without_the_selection(make, admin, clock):
    admin.customers = {i: customer(i) for i in range(1, 251)}
    admin.customers[5]["Newsletter"] = False  # unticked in Admin: must come back, withdrawn
    since = clock.local(-600)
    admin.changes = [change(i, clock.local(-60), log_id=i) for i in range(1, 251)]
    client = make()
    got = records(client.iter_changed("customers", since))
    assert len(got) == 250
    by_id = {r["CustomerId"]: r for r in got}
    assert by_id[5]["InNewsletterSelection"] is False and by_id[6]["InNewsletterSelection"]
    asked = [f for f in filters(admin, "customers")]
    assert [len(f.split(",")) for f in asked] == [100, 100, 50]
    assert all(f.startswith("CustomerId in (") for f in asked)
    assert filters(admin, "extradata/1") == asked  # custom fields for the same ids


def test_deleted_and_vanished_relations_become_tombstones(make, admin, clock):
    admin.customers = {1: customer(1), 3: customer(3)}
    when = clock.local(-30)
    admin.changes = [
        change(1, when, log_id=1),
        change(2, when, "DELETE", log_id=2),
        change(3, when, "UPDATE", log_id=3),
        change(3, when, "DELETE", log_id=4),  # the last action of 3 decides
        change(4, when, "INSERT", log_id=5),  # inserted, then gone without a DELETE row seen
        {**change(1, when, "DELETE", log_id=6), "TableName": "CUSTOMER_EXTRADATA"},
    ]
    client = make()
    got = records(client.iter_changed("customers", clock.local(-60)))
    tombs = sorted(r["CustomerId"] for r in got if is_tombstone(r))
    assert tombs == ["2", "3", "4"]
    assert [r["CustomerId"] for r in got if not is_tombstone(r)] == [1]
    assert filters(admin, "customers") == ["CustomerId in (1,4)"]


def test_more_than_1000_changes_in_one_second_go_on_after_the_highest_log_id(make, admin, clock):
    when = clock.local(-30)
    admin.customers = {i: customer(i) for i in range(1, 1501)}
    admin.changes = [change(i, when, log_id=i) for i in range(1, 1501)]  # one second
    client = make()
    got = records(client.iter_changed("customers", f"{clock.local(-60)}|0"))
    assert len({r["CustomerId"] for r in got}) == 1500 and not any(is_tombstone(r) for r in got)
    windows = list(dict.fromkeys(filters(admin, "customer/changes")))
    assert windows == [f"{TABLES} and l.LogId gt 0", f"{TABLES} and l.LogId gt 1000"]
    assert client.run_warnings() == []
    after = client.cursor_after("customers", None, None, datetime.now(UTC))
    assert after == f"{clock.local()}|1500"


def test_a_dst_fall_back_loses_no_change_in_the_repeated_hour(make, admin, clock):
    clock.now = datetime(2026, 10, 25, 1, 15, tzinfo=UTC).timestamp()  # 02:15 CET, second pass
    admin.customers = {1: customer(1), 2: customer(2)}
    admin.changes = [change(1, "2026-10-25 02:10:00", log_id=11)]  # after 02:40 CEST, written
    client = make()
    got = records(client.iter_changed("customers", "2026-10-25 02:40:00|10"))
    assert [r["CustomerId"] for r in got] == [1]
    assert filters(admin, "customer/changes") == [f"{TABLES} and l.LogId gt 10"]
    # a cursor of the older text-only format: its overlap covers the repeated hour
    admin.changes.append(change(2, "2026-10-25 02:12:00", log_id=12))
    got = records(make().iter_changed("customers", "2026-10-25 02:40:00"))
    assert sorted(r["CustomerId"] for r in got) == [1, 2]
    later = client.record_meta("customers", {"CustomerId": 1, "ChangedAt": got[0]["ChangedAt"]})
    earlier = client.record_meta(
        "customers", {"CustomerId": 1, "ChangedAt": "2026-10-25T02:40:00+02:00"}
    )
    assert later.modified > earlier.modified  # versions stay in order across the fall-back


def test_filters_quote_text_and_list_ids():
    assert text("o'brien@kantoor.be") == "'o''brien@kantoor.be'"
    assert one_of("CustomerId", ["1", 2, "x"]) == "CustomerId in (1,2,'x')"


def test_record_meta_reads_changed_at_in_brussels_time(make, admin):
    client = make()
    meta = client.record_meta("customers", {"CustomerId": 4, "ChangedAt": "2026-07-01 12:00:00"})
    assert meta.record_id == "4" and meta.business_date is None
    assert meta.modified == datetime(2026, 7, 1, 10, 0, tzinfo=UTC)  # CEST


# -- AD-A10 / AF6: interests -----------------------------------------------------------------------
def test_interests_are_read_per_selected_relation(make, admin, clock):
    admin.customers = {1: customer(1), 2: customer(2), 3: customer(3, Newsletter=False)}
    admin.interests = {
        1: [{"InterestId": 11, "Description": "Fiscaliteit"}, {"InterestId": 12,
            "Description": "Btw"}],
        3: [{"InterestId": 11, "Description": "Fiscaliteit"}],
    }  # fmt: skip
    client = make()
    got = records(client.iter_changed("interests", None))
    assert [(r["Id"], r["Description"]) for r in got] == [("1-11", "Fiscaliteit"), ("1-12", "Btw")]
    assert client.scan_complete("interests")
    assert admin.counts["GET customers/{id}/interests"] == 2  # 2 is read too: 404 Nothing found
    meta = client.record_meta("interests", got[0])
    assert meta.record_id == "1-11" and meta.business_date == datetime(2026, 3, 2).date()


def test_interests_are_optional_unless_crm_interests_is_on(make, clock):
    assert make().optional_entities() == frozenset({"interests"})
    on = make(crm_interests=True, interests_every_minutes=60)
    assert on.optional_entities() == frozenset()
    scanned = datetime.fromtimestamp(clock.now - 30 * 60, UTC).isoformat()
    assert on.has_changes("interests", scanned) is False
    assert on.has_changes("interests", scanned.replace("08:30", "07:30")) is True


# -- write-back (AD-A7..A9) ------------------------------------------------------------------------
def wb(action: str, record_id: str | None = None, **kwargs: Any) -> WriteBack:
    return WriteBack(action, f"k-{action}-{record_id}", record_id, **kwargs)  # type: ignore[arg-type]


def results(client: AdminClient, *changes: WriteBack) -> list[tuple[str, Any, Any]]:
    return [(r.status, r.record_id, r.reason) for _, r in client.write_back(list(changes))]


def test_unsubscribe_puts_the_writable_fields_with_newsletter_false(make, admin):
    admin.customers = {5: customer(5, Remarks="vaste klant"), 6: customer(6, Newsletter=False)}
    client = make()
    assert results(client, wb("unsubscribe", "5"), wb("unsubscribe", "6")) == [
        ("done", "5", None),
        ("already", "6", None),
    ]
    put = next(r for r in admin.requests if r.method == "PUT")
    body = json.loads(put.content)
    assert body["CustomerId"] == 5 and body["Newsletter"] is False
    assert body["Remarks"] == "vaste klant" and "IsActive" not in body
    assert "CreationDate" not in body  # only writable fields go back
    assert admin.customers[5]["Newsletter"] is False


def test_unsubscribe_not_writable_is_skipped_and_a_gone_relation_refused(make, admin):
    admin.customers = {5: customer(5)}
    admin.newsletter_writable = False
    client = make()
    assert results(client, wb("unsubscribe", "5"), wb("unsubscribe", "99")) == [
        ("skipped", "5", "Newsletter not writable: Field Newsletter is not writable"),
        ("refused", "99", "Customer does not exist"),
    ]


def test_unsubscribe_sends_the_head_office_address_and_null_for_zero_ids(make, admin):
    admin.customers = {5: customer(5, CustomerGroup=0, CustomerCrmType=0, CommercialName="P BV")}
    office = {"CustomerAddressId": 51, "CustomerId": 5, "RegisteredOffice": True,
              "StreetName": "Kerkstraat", "Street1": "Kerkstraat 12/A", "Street2": None,
              "HouseNr": "12", "HouseBox": "A", "ZipCode": "9000", "City": "Gent",
              "CountryCode": "BE"}  # fmt: skip
    branch = {**office, "CustomerAddressId": 52, "RegisteredOffice": False, "City": "Brugge"}
    admin.addresses = [branch, office]
    assert results(make(), wb("unsubscribe", "5")) == [("done", "5", None)]
    body = json.loads(next(r for r in admin.requests if r.method == "PUT").content)
    assert {k: body[k] for k in ("Street1", "Street2", "Nr", "Box", "Zipcode", "City")} == {
        "Street1": "Kerkstraat",
        "Street2": None,
        "Nr": "12",
        "Box": "A",
        "Zipcode": "9000",
        "City": "Gent",
    }
    assert body["CountryCode"] == "BE" and body["CommercialName"] == "P BV"
    assert body["CustomerGroup"] is None and body["CustomerCrmType"] is None  # 0 is none
    assert filters(admin, "customeraddresses") == ["CustomerId eq 5 and RegisteredOffice eq true"]


def test_a_server_without_the_address_endpoint_still_gets_the_unsubscribe(make, admin):
    """The address path is the SDK's, not documented: without it the PUT is AD-A7's body."""
    admin.customers = {5: customer(5)}
    admin.addresses = None
    assert results(make(), wb("unsubscribe", "5")) == [("done", "5", None)]
    body = json.loads(next(r for r in admin.requests if r.method == "PUT").content)
    assert body["Newsletter"] is False and "City" not in body


def test_only_the_relations_own_registered_office_goes_into_the_put(make, admin):
    """A server that ignores the address filter hands every address: none of another relation's
    is written onto this one."""
    admin.customers = {5: customer(5)}
    admin.addresses = [{"CustomerId": 6, "RegisteredOffice": True, "City": "Brugge"}]
    assert results(make(), wb("unsubscribe", "5")) == [("done", "5", None)]
    body = json.loads(next(r for r in admin.requests if r.method == "PUT").content)
    assert "City" not in body


def test_a_400_that_does_not_name_newsletter_is_refused_with_admin_words(make, admin):
    admin.customers = {5: customer(5)}
    admin.put_error = (400, "Email is not a valid email address")
    assert results(make(), wb("unsubscribe", "5")) == [
        ("refused", "5", "Email is not a valid email address")
    ]


def test_an_answer_without_newsletter_is_skipped_not_already(make, admin):
    admin.customers = {5: {k: v for k, v in customer(5).items() if k != "Newsletter"}}
    [(status, cid, reason)] = results(make(), wb("unsubscribe", "5"))
    assert (status, cid) == ("skipped", "5") and "no Newsletter field" in reason
    assert not any(r.method == "PUT" for r in admin.requests)


def test_create_sends_only_a_language_admin_knows(make, admin):
    admin.languages = [
        {"ListValueId": 1, "ListValue": "N", "ExtCode": "nl"},
        {"ListValueId": 2, "ListValue": "F", "ExtCode": "fr"},
        {"ListValueId": 3, "ListValue": "E", "ExtCode": "en"},
    ]
    client = make(language_default="F")
    given = ["nl", "E", "xx", None]
    changes = [
        wb("create", values={"Email": f"p{i}@kantoor.be", "Name": "P", "Language": language})
        for i, language in enumerate(given)
    ]
    assert [r[0] for r in results(client, *changes)] == ["done"] * 4
    posts = [json.loads(r.content) for r in admin.requests if r.method == "POST"]
    assert [p["Language"] for p in posts] == ["N", "E", "F", "F"]
    assert admin.counts["GET lists/{id}"] == 1  # read once


def test_a_click_becomes_one_communication_even_when_resumed(make, admin):
    admin.customers = {5: customer(5)}
    detail = {
        "occurred_at": "2026-07-01T08:15:00+00:00",
        "campaign_id": "c1",
        "campaign_name": "Nieuwsbrief juli",
        "link_url": "https://kantoor.be/btw",
    }
    client = make()
    assert results(client, wb("record_click", "5", detail=detail)) == [("done", "500", None)]
    assert admin.communications[0] == {
        "CustomerId": 5,
        "Date": "2026-07-01 10:15:00",
        "CommunicationType": "Flexmail",
        "Subject": "Nieuwsbrief juli",
        "Description": "Click: https://kantoor.be/btw",
        "CommunicationId": 500,
    }
    admin.communications[0]["Date"] = "2026-07-01T10:15:00"  # as the server may write it
    again = wb("record_click", "5", detail=detail, resumed=True)
    assert results(client, again) == [("already", "500", None)]
    assert len(admin.communications) == 1
    other = wb("record_click", "5", detail={**detail, "link_url": "https://x.be"}, resumed=True)
    assert results(client, other)[0][0] == "done" and len(admin.communications) == 2
    assert filters(admin, "communications") == ["CustomerId eq 5", "CustomerId eq 5"]


def test_a_click_for_a_gone_relation_or_without_a_time_is_refused(make, admin):
    detail = {"occurred_at": "2026-07-01T08:15:00Z", "link_url": "https://x.be"}
    assert results(make(), wb("record_click", "77", detail=detail)) == [
        ("refused", "77", "Customer does not exist")
    ]
    assert results(make(), wb("record_click", "77", detail={"occurred_at": "gisteren"})) == [
        ("refused", "77", "unreadable occurred_at 'gisteren'")
    ]
    assert admin.communications == []


def test_create_looks_for_the_email_first_in_any_state(make, admin):
    admin.customers = {
        3: customer(3, Email="Info@Kantoor-Peeters.be", IsActive=False),
        8: customer(8, Email="annemarie@dupont.be"),  # Contains finds it; not the same email
    }
    client = make()
    known = wb("create", values={"Email": "info@kantoor-peeters.be", "Name": "Peeters"})
    new = wb("create", values={"Email": "marie@dupont.be", "Name": "Dupont",
                               "Firstname": "Marie"})  # fmt: skip
    assert results(client, known, new) == [("already", "3", None), ("done", "9", None)]
    made = json.loads(next(r for r in admin.requests if r.method == "POST").content)
    assert made == {
        "Name": "Dupont",
        "Firstname": "Marie",
        "Email": "marie@dupont.be",
        "Language": "N",
        "IsCompany": False,
        "CustomerCrmType": 7,
        "Newsletter": True,
    }
    assert filters(admin, "customers") == [
        "Email eq 'info@kantoor-peeters.be'",
        "Email eq 'marie@dupont.be'",
        "Contains(Email,'marie@dupont.be')",  # a typed " Marie@dupont.be" is found too
    ]
    assert results(client, new)[0] == ("already", "9", None)  # never a second relation


def test_a_key_without_the_endpoint_keeps_the_write_back_pending(make, admin):
    admin.customers = {5: customer(5)}
    client = make()
    client.check_connection()
    admin.route = lambda *a: error(403, "no valid configuration for token")  # type: ignore
    with pytest.raises(VendorError, match="no valid configuration"):
        results(client, wb("unsubscribe", "5"))


def test_a_transient_failure_raises_and_leaves_the_rest_pending(make, admin):
    admin.customers = {5: customer(5), 6: customer(6)}
    admin.fail["PUT customers"] = 10
    client = make(max_tries=2)
    answers = client.write_back([wb("unsubscribe", "5"), wb("unsubscribe", "6")])
    with pytest.raises(VendorError) as failed:
        next(answers)
    assert failed.value.status == 500
    assert admin.customers[6]["Newsletter"] is True


def test_write_back_actions_are_declared():
    assert AdminClient.write_back_actions == {"unsubscribe", "record_click", "create"}


# -- the source section and mappings ---------------------------------------------------------------
def test_the_section_names_the_key_variable_and_builds_a_resource():
    section = parse_source(
        {"kind": "admin", "base_url": "https://admin.kantoor.be:2100/api/v1",
         "api_key_env": "ADMIN_API_KEY", "crm_type": 3, "crm_interests": True}
    )  # fmt: skip
    assert isinstance(section, AdminSource)
    assert section.env_vars() == ["ADMIN_API_KEY"] and section.crm_type == "3"
    resource = section.resource()
    assert resource.api_key.env_var_name == "ADMIN_API_KEY" and resource.crm_interests
    assert resource.timezone == "Europe/Brussels" and resource.custom_fields_table == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"api_key_env": "not a name"},
        {"timezone": "Europe/Atlantis"},
        {"base_url": "https://admin.kantoor.be/api/v1?key=abc"},
        {"custom_fields_table": 0},
        {"surprise": 1},
    ],
)
def test_the_section_refuses_bad_settings(bad):
    data = {"kind": "admin", "base_url": "https://a.be/api/v1", "api_key_env": "K", **bad}
    with pytest.raises(ValidationError):
        parse_source(data)


def test_the_default_mappings_read_what_the_client_hands_out(make, admin):
    members = load_mapping("admin", "customers")
    assert members.record_id == "CustomerId" and members.consent == "InNewsletterSelection"
    assert {f.target: f.path for f in members.fields}["email"] == "Email"
    events = load_mapping("admin", "interests")
    assert events.customer_id == "CustomerId" and events.record_id == "Id"
    assert {f.target for f in events.fields} >= {"date", "interest", "interest_id"}


def test_an_unreadable_cursor_reads_the_selection_again(make, admin):
    admin.customers = {1: customer(1)}
    client = make()
    assert [r["CustomerId"] for r in records(client.iter_changed("customers", "junk"))] == [1]
    assert filters(admin, "customer/changes") == []


def test_a_read_that_finds_no_change_keeps_the_cursor(make, admin, clock):
    client = make()
    ahead = clock.local(3600)
    list(client.iter_changed("customers", ahead))
    assert client.cursor_after("customers", ahead, None, datetime.now(UTC)) == ahead
    with_log = f"{clock.local()}|77"
    list(client.iter_changed("customers", with_log))
    assert client.cursor_after("customers", with_log, None, datetime.now(UTC)) == with_log


def test_change_rows_without_a_log_id_move_a_time_cursor_to_the_read(make, admin, clock):
    admin.customers = {1: customer(1)}
    admin.changes = [{**change(1, clock.local(-30)), "LogId": None}]
    client = make()
    cursor = clock.local(-600)
    assert [r["CustomerId"] for r in records(client.iter_changed("customers", cursor))] == [1]
    assert client.cursor_after("customers", cursor, None, datetime.now(UTC)) == clock.local()


def test_a_burst_without_log_ids_is_read_in_halved_time_windows(make, admin, clock):
    """AD-A6 for a server whose change rows carry no LogId: the window [cursor, now) is halved
    while a call returns the 1000-row cap, so a burst is read whole."""
    admin.customers = {i: customer(i) for i in range(1, 1501)}
    admin.changes = [
        {**change(i, clock.local(-600 + (i % 300)), log_id=0), "LogId": None}
        for i in range(1, 1501)
    ]
    client = make()
    got = records(client.iter_changed("customers", clock.local(-3600)))
    assert len({r["CustomerId"] for r in got}) == 1500
    windows = [f for f in filters(admin, "customer/changes") if "DateAction lt" in f]
    assert len(windows) >= 2 and client.run_warnings() == []


# -- the server's clock ----------------------------------------------------------------------------
def test_a_server_clock_off_by_minutes_is_followed_and_warned_about(make, admin, clock):
    """Change-log times are server time: a time cursor is written in the server's time however
    far its clock is from ours (a skew, or a `timezone` that is not the server's), with a
    warning; nothing fails, nothing is missed."""
    admin.customers = {1: customer(1)}
    admin.skew = 90.0
    quiet = make()
    quiet.check_connection()
    records(quiet.iter_changed("customers", None))
    assert quiet.run_warnings() == []
    admin.skew = 600.0
    client = make()
    client.check_connection()  # the check does not hold the clock against ours
    records(client.iter_changed("customers", None))
    cursor = client.cursor_after("customers", None, None, datetime.now(UTC))
    assert cursor == clock.local(600)  # the server's "now", not ours
    assert any("+10 min" in w and "timezone" in w for w in client.run_warnings())


def test_a_wrong_time_zone_is_followed_not_failed(make, admin, clock):
    client = make(timezone="Europe/London")  # the server is in Brussels
    client.check_connection()
    records(client.iter_changed("customers", None))
    assert client.cursor_after("customers", None, None, datetime.now(UTC)) == clock.local()
    assert any("Europe/London" in w for w in client.run_warnings())


def test_an_unreadable_time_to_live_is_duration_token_with_a_warning(make, admin, clock):
    admin.customers = {1: customer(1)}
    admin.time_to_live = "morgen"
    client = make()
    client.check_connection()  # no clock to compare: not checked
    assert [r["CustomerId"] for r in records(client.iter_changed("customers", None))] == [1]
    assert any("unreadable TimeToLive" in w for w in client.run_warnings())
    tokens = admin.counts["GET token"]
    clock.now += 25 * 60  # DurationToken is 30: still used
    client.check_connection()
    assert admin.counts["GET token"] == tokens


# == against the Admin emulator over a real socket ================================================
@pytest.fixture(scope="module")
def sandbox():
    from sandbox.server import SandboxServer

    with SandboxServer(seed=11, customers=150, days=30, rate_limits=False) as server:
        yield server


@pytest.fixture
def office(sandbox, clock):
    """The emulator's state, its clock tied to the test's (the server's local time follows it)."""
    state = sandbox.emulator("admin")
    latest = max((r["DateAction"] for r in state.changes), default="2000-01-01 00:00:00")
    after_last = datetime.fromisoformat(latest).replace(tzinfo=BRUSSELS).timestamp() + 5
    clock.now = max(datetime.now(UTC).replace(microsecond=0).timestamp(), after_last)
    state.now = lambda: datetime.fromtimestamp(clock.now, BRUSSELS).replace(tzinfo=None)
    yield state
    from sandbox.admin import brussels_now

    state.now = brussels_now


@pytest.fixture
def live(sandbox, office, clock):
    from sandbox.credentials import SANDBOX_ENV

    made: list[AdminClient] = []

    def build(**kwargs: Any) -> AdminClient:
        options = {
            "base_url": f"{sandbox.url}/admin/api/v1",
            "api_key": SANDBOX_ENV["MEMBERFLOW_ADMIN_API_KEY"],
            "crm_type": "3",
            "pace": False,
            "throttle_seconds": 60.0,
            "sleep": clock.sleep,
            "clock": clock,
            **kwargs,
        }
        client = AdminClient(**options)
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


def selected(office) -> set[int]:
    return {cid for cid, c in office.customers.items() if c["IsActive"] and c["Newsletter"]}


def test_emulator_first_read_is_the_selection_with_custom_fields(live, office):
    office.settings["MaxRecordsPerPage"] = 40
    try:
        client = live()
        got = records(client.iter_changed("customers", None))
    finally:
        office.settings["MaxRecordsPerPage"] = 1000
    assert {r["CustomerId"] for r in got} == selected(office) and len(got) > 40
    assert office.request_counts["GET customers"] >= 2  # followed Link rel="next"
    assert all(r["InNewsletterSelection"] is True for r in got)
    assert all("acc_software" in r and "klant_sinds" in r for r in got)
    some = got[0]
    assert some["acc_software"] == office.extradata[some["CustomerId"]]["acc_software"]


def test_emulator_changes_unticked_deleted_and_new_relations(live, office, clock):
    client = live()
    list(client.iter_changed("customers", None))
    cursor = client.cursor_after("customers", None, None, datetime.now(UTC))
    assert client.has_changes("customers", cursor) is False
    clock.now += 10
    unticked, gone = sorted(selected(office))[:2]
    office.update_relation(unticked, {"Newsletter": False})
    office.delete_relation(gone)
    new = {"Name": "Dubois", "Firstname": "Élise", "Email": "elise@dubois.be", "Language": "F"}
    made = office.create_relation({**new, "Newsletter": True})
    office.update_relation(made["CustomerId"], {"acc_software": "WinBooks"})  # custom field
    clock.now += 10
    assert client.has_changes("customers", cursor) is True
    got = {str(r["CustomerId"]): r for r in records(client.iter_changed("customers", cursor))}
    assert set(got) == {str(unticked), str(gone), str(made["CustomerId"])}
    assert got[str(unticked)]["InNewsletterSelection"] is False
    assert is_tombstone(got[str(gone)])
    assert got[str(made["CustomerId"])]["acc_software"] == "WinBooks"
    assert got[str(made["CustomerId"])]["Firstname"] == "Élise"
    after = client.cursor_after("customers", cursor, None, datetime.now(UTC))
    assert after == f"{clock.local()}|{office.changes[-1]['LogId']}"
    assert client.has_changes("customers", after) is False


def test_emulator_1200_changes_in_one_second_are_read_on_by_log_id(live, office, clock):
    client = live()
    start = f"{clock.local()}|{office.changes[-1]['LogId']}"
    ids = sorted(office.customers)
    for i in range(1200):  # the emulator's clock stands still: one second
        office.update_relation(ids[i % len(ids)], {"Remarks": f"edit {i}"})
    clock.now += 1
    before = office.request_counts["GET customer/changes"]
    got = records(client.iter_changed("customers", start))
    assert {r["CustomerId"] for r in got} == set(ids)
    assert office.request_counts["GET customer/changes"] - before == 2
    assert client.run_warnings() == []
    after = client.cursor_after("customers", start, None, datetime.now(UTC))
    assert after.endswith(f"|{office.changes[-1]['LogId']}")


def test_emulator_tokens_renewed_before_expiry_and_after_a_401(live, office, clock):
    client = live()
    office.token_lifetime = 120
    try:
        client.check_connection()
        tokens = office.request_counts["GET token/{}"]
        clock.now += 61  # 59 s left: renewed before the server would refuse it
        client.check_connection()
        assert office.request_counts["GET token/{}"] == tokens + 1
        refused = office.refusals[401]
        office.expire_tokens()
        client.check_connection()
        assert office.request_counts["GET token/{}"] == tokens + 2
        assert office.refusals[401] == refused + 1
    finally:
        office.token_lifetime = None


def test_emulator_throttling_is_waited_out_and_pacing_avoids_it(live, office, clock, tmp_path):
    from sandbox.ratelimit import RateLimiter

    saved = office.limiter
    office.limiter = RateLimiter(None, 60.0, clock=clock)
    office.rate_limits, office.settings["RateLimit"] = True, 3
    try:
        client = live()
        list(client.fetch_records("customers", [str(i) for i in sorted(office.customers)[:3]]))
        client.fetch_records("customers", ["1"]).__next__()
        assert client.calls.throttled >= 1 and 60.0 in clock.slept
        refused = office.refusals[403]
        clock.now += 61
        paced = live(pace=True, budget_dir=tmp_path)
        for cid in sorted(office.customers)[:4]:
            list(paced.fetch_records("customers", [str(cid)]))
        assert office.refusals[403] == refused  # the limiter waited first
    finally:
        office.limiter, office.rate_limits = saved, False
        office.settings["RateLimit"] = 60


def test_emulator_interests_of_selected_relations(live, office):
    client = live(crm_interests=True)
    got = records(client.iter_changed("interests", None))
    expected = {f"{cid}-{iid}" for cid in selected(office) for iid in office.links.get(cid, [])}
    assert {r["Id"] for r in got} == expected and expected
    assert client.scan_complete("interests")
    assert all(r["Description"] == office.interests[r["InterestId"]]["Description"] for r in got)


def test_emulator_unsubscribe_unticks_and_keeps_the_relation_whole(live, office):
    cid = sorted(selected(office))[5]
    before = dict(office.customers[cid])
    address = dict(office.addresses[cid])
    client = live()
    assert results(client, wb("unsubscribe", str(cid))) == [("done", str(cid), None)]
    after = office.customers[cid]
    assert after["Newsletter"] is False
    assert {k: after[k] for k in before if k != "Newsletter"} == {
        k: v for k, v in before.items() if k != "Newsletter"
    }
    assert office.addresses[cid] == address and address["City"]  # sent back: not wiped
    put = office.request_counts["PUT customers"]
    assert results(client, wb("unsubscribe", str(cid))) == [("already", str(cid), None)]
    assert office.request_counts["PUT customers"] == put
    assert results(client, wb("unsubscribe", "999999"))[0][0] == "refused"


def test_emulator_a_click_is_one_communication_however_often(live, office):
    cid = sorted(selected(office))[6]
    detail = {"occurred_at": "2026-06-30T22:30:00+00:00", "campaign_name": "Juni",
              "link_url": "https://kantoor.be/successie"}  # fmt: skip
    client = live()
    first = results(client, wb("record_click", str(cid), detail=detail))
    again = results(client, wb("record_click", str(cid), detail=detail, resumed=True))
    assert first[0][0] == "done" and again == [("already", first[0][1], None)]
    mine = [c for c in office.communications.values() if c["CustomerId"] == cid]
    assert len(mine) == 1 and mine[0]["Date"] == "2026-07-01 00:30:00"
    assert mine[0]["CommunicationType"] == "Flexmail" and mine[0]["Subject"] == "Juni"


def test_emulator_create_once_per_email(live, office):
    client = live()
    values = {"Email": "nieuw@vandenbroeck.be", "Name": "Van den Broeck", "Firstname": "Lotte"}
    made = results(client, wb("create", values=values))
    assert made[0][0] == "done"
    relation = office.customers[int(made[0][1])]
    assert relation["Newsletter"] is True and relation["CustomerCrmType"] == 3
    assert relation["Language"] == "N" and relation["IsCompany"] is False
    shouted = {**values, "Email": "NIEUW@VandenBroeck.be"}
    assert results(client, wb("create", values=shouted)) == [("already", made[0][1], None)]
    spaced = office.create_relation({"Name": "Claes", "Email": " Info@Claes-Boekhouding.be "})
    typed = {"Email": "info@claes-boekhouding.be", "Name": "Claes"}
    assert results(client, wb("create", values=typed)) == [
        ("already", str(spaced["CustomerId"]), None)
    ]  # found despite the spaces the office typed


def test_emulator_a_wrong_key_is_refused_without_showing_it(live, caplog):
    client = live(api_key="not-the-demo-key-xyz")
    with caplog.at_level(logging.DEBUG), pytest.raises(VendorError) as refused:
        client.check_connection()
    assert refused.value.status == 401 and "Invalid api key" in refused.value.message
    assert "not-the-demo-key-xyz" not in str(refused.value) + caplog.text
