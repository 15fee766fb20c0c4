"""Admin emulator over real sockets: token and expiry, apisettings and 403 throttling, plain arrays
with Link paging, 204/404-empty, the Filter syntax, customers (PUT with CustomerId in the body),
the change log and its 1000 cap, customer addresses (and a PUT that replaces them), communications
(each POST stored, dedupe only when switched on), interests, custom fields, the control routes,
and the Belgian accountancy office's data."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from sandbox.admin import (
    API_KEY_ENV,
    CHANGES_CAP,
    CUSTOMER_TABLE_ID,
    INVALID_KEY,
    NOTHING_FOUND,
    THROTTLED,
    TOKEN_EXPIRED,
    brussels_now,
)
from sandbox.credentials import SANDBOX_ENV
from sandbox.ratelimit import RateLimiter
from sandbox.server import SandboxServer

KEY = SANDBOX_ENV[API_KEY_ENV]


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer(seed=7, customers=150, days=30, rate_limits=False) as server:
        yield server


@pytest.fixture(scope="module")
def admin(sandbox):
    return sandbox.emulator("admin")


@pytest.fixture(scope="module")
def base(sandbox):
    return f"{sandbox.url}/admin/api/v1"


@pytest.fixture(scope="module")
def http(base):
    token = httpx.get(f"{base}/token/{KEY}").json()["TokenGuid"]
    with httpx.Client(base_url=base, headers={"synetonToken": token}, timeout=10) as client:
        yield client


@pytest.fixture
def control(sandbox):
    return f"{sandbox.url}/_sandbox/admin"


def walk(http: httpx.Client, path: str, **params) -> list[dict]:
    """Every row of a list, following `Link rel="next"` (AD-A4)."""
    answer = http.get(path, params=params)
    rows: list[dict] = []
    while True:
        if answer.status_code == 204:
            return rows
        assert answer.status_code == 200, answer.text
        assert isinstance(answer.json(), list)
        rows += answer.json()
        following = answer.links.get("next")
        if following is None:
            return rows
        answer = http.get(following["url"])


def customer_body(row: dict, **changes) -> dict:
    """The full writable body a client sends after a fresh GET (AD-A7)."""
    writable = (
        "Name CommercialName Firstname Email Mobile Phone Language IsCompany CustomerCrmType "
        "CustomerGroup "
        "CustCode Homepage Title VATNr NaceCode Remarks RPR Newsletter"
    ).split()
    return {"CustomerId": row["CustomerId"], **{k: row[k] for k in writable}, **changes}


# -- token (AD-A2) ---------------------------------------------------------------------------------
def test_token_lives_duration_token_minutes_in_brussels_local_time(base, admin):
    fixed = datetime(2026, 7, 1, 14, 0, 0)  # summer: Brussels is UTC+2
    admin.now = lambda: fixed
    try:
        answer = httpx.get(f"{base}/token/{KEY}")
    finally:
        admin.now = brussels_now
    assert answer.status_code == 200
    assert answer.json()["TimeToLive"] == "2026-07-01T14:30:00"
    assert set(answer.json()) == {"TokenGuid", "TimeToLive"}


def test_the_server_clock_is_brussels_local_time():
    offset = brussels_now() - datetime.now(UTC).replace(tzinfo=None)
    hours = round(offset / timedelta(hours=1))
    assert hours in (1, 2)  # CET or CEST


def test_a_bad_key_and_a_missing_or_unknown_token_are_401(base, http):
    answer = httpx.get(f"{base}/token/not-the-key")
    assert (answer.status_code, answer.json()) == (401, {"ErrorMessage": INVALID_KEY})
    for headers in ({}, {"synetonToken": "00000000-0000-0000-0000-000000000000"}):
        answer = httpx.get(f"{base}/apisettings", headers=headers)
        assert (answer.status_code, answer.json()) == (401, {"ErrorMessage": TOKEN_EXPIRED})


def test_a_token_expires_when_the_server_clock_passes_time_to_live(base, admin):
    clock = [brussels_now()]
    admin.now = lambda: clock[0]
    admin.settings["DurationToken"] = 1
    try:
        body = httpx.get(f"{base}/token/{KEY}").json()
        headers = {"synetonToken": body["TokenGuid"]}
        assert datetime.fromisoformat(body["TimeToLive"]) == clock[0] + timedelta(minutes=1)
        clock[0] += timedelta(seconds=59)
        assert httpx.get(f"{base}/apisettings", headers=headers).status_code == 200
        clock[0] += timedelta(seconds=1)
        answer = httpx.get(f"{base}/apisettings", headers=headers)
        assert (answer.status_code, answer.json()) == (401, {"ErrorMessage": TOKEN_EXPIRED})
        fresh = httpx.get(f"{base}/token/{KEY}").json()["TokenGuid"]
        assert httpx.get(f"{base}/apisettings", headers={"synetonToken": fresh}).is_success
    finally:
        admin.now = brussels_now
        admin.settings["DurationToken"] = 30


def test_the_sandbox_token_lifetime_override_is_in_seconds(base, admin):
    fixed = datetime(2026, 1, 5, 9, 0, 0)
    admin.now, admin.token_lifetime = (lambda: fixed), 2.0
    try:
        body = httpx.get(f"{base}/token/{KEY}").json()
    finally:
        admin.now, admin.token_lifetime = brussels_now, None
    assert body["TimeToLive"] == "2026-01-05T09:00:02"


def test_expiring_every_token_through_the_control_route(admin, base, control):
    saved = dict(admin.tokens)
    token = httpx.get(f"{base}/token/{KEY}").json()["TokenGuid"]
    try:
        assert httpx.post(f"{control}/tokens/expire").status_code == 200
        answer = httpx.get(f"{base}/apisettings", headers={"synetonToken": token})
        assert answer.status_code == 401
    finally:
        admin.tokens.update(saved)


# -- settings and throttling (AD-A3) ---------------------------------------------------------------
def test_apisettings_defaults(http):
    assert http.get("/apisettings").json() == {
        "DefaultRecordsPerPage": 100,
        "MaxRecordsPerPage": 1000,
        "DurationToken": 30,
        "RateLimit": 60,
    }


def test_over_rate_limit_calls_in_60_seconds_are_403_until_the_window_slides(admin, http):
    now = [5000.0]
    saved = admin.limiter
    admin.limiter = RateLimiter(None, 60.0, clock=lambda: now[0])
    admin.rate_limits = True
    admin.settings["RateLimit"] = 3
    try:
        codes = [http.get("/apisettings").status_code for _ in range(4)]
        assert codes == [200, 200, 200, 403]
        assert http.get("/interests").json() == {"ErrorMessage": THROTTLED}
        now[0] += 59.0
        assert http.get("/apisettings").status_code == 403
        now[0] += 1.0
        assert http.get("/apisettings").status_code == 200
    finally:
        admin.limiter, admin.rate_limits = saved, False
        admin.settings["RateLimit"] = 60


def test_settings_can_be_changed_through_the_control_route(control, http):
    try:
        answer = httpx.post(f"{control}/settings", json={"MaxRecordsPerPage": 50})
        assert answer.json()["MaxRecordsPerPage"] == 50
        assert http.get("/customers", params={"per_page": 51}).status_code == 400
        assert httpx.post(f"{control}/settings", json={"Nope": 1}).status_code == 400
    finally:
        httpx.post(f"{control}/settings", json={"MaxRecordsPerPage": 1000})


# -- paging (AD-A4) --------------------------------------------------------------------------------
def test_plain_arrays_with_an_absolute_link_to_the_next_page(sandbox, admin, http):
    first = http.get("/customers", params={"per_page": 40})
    assert first.status_code == 200 and len(first.json()) == 40
    link = first.headers["Link"]
    assert link.startswith(f"<{sandbox.url}/admin/api/v1/customers?") and link.endswith(
        '>; rel="next"'
    )
    rows = walk(http, "/customers", per_page=40)
    assert [r["CustomerId"] for r in rows] == sorted(admin.customers)
    last = http.get("/customers", params={"per_page": 1000})
    assert "Link" not in last.headers and len(last.json()) == len(admin.customers)


def test_default_page_size_and_the_maximum(http):
    assert len(http.get("/customers").json()) == 100
    answer = http.get("/customers", params={"per_page": 1001})
    assert answer.status_code == 400 and set(answer.json()) == {"ErrorMessage"}
    assert http.get("/customers", params={"per_page": "x"}).status_code == 400
    assert http.get("/customers", params={"filter": "CustomerId eq 1"}).status_code == 400


def test_empty_list_is_204_and_an_empty_filtered_lookup_is_404(http, admin):
    answer = http.get("/customers", params={"per_page": 1000, "page": 9})
    assert answer.status_code == 204 and answer.content == b""
    answer = http.get("/customers", params={"Filter": "CustomerId eq 1"})
    assert (answer.status_code, answer.json()) == (404, {"ErrorMessage": NOTHING_FOUND})


def test_one_customer_has_no_address_and_an_unknown_one_is_404(admin, http):
    cid = next(iter(admin.customers))
    one = http.get(f"/customers/{cid}").json()
    assert one["CustomerId"] == cid
    assert not {"Street1", "Zipcode", "City", "CountryCode"} & set(one)
    assert http.get("/customers/1").status_code == 404
    assert http.get("/customers/abc").status_code == 400


# -- filters ---------------------------------------------------------------------------------------
def ids(http: httpx.Client, expression: str) -> set[int]:
    answer = http.get("/customers", params={"Filter": expression, "per_page": 1000})
    if answer.status_code == 404:
        return set()
    assert answer.status_code == 200, answer.text
    return {r["CustomerId"] for r in answer.json()}


def test_comparison_operators(admin, http):
    rows = list(admin.customers.values())
    pivot = sorted(admin.customers)[len(rows) // 2]
    assert ids(http, f"CustomerId eq {pivot}") == {pivot}
    assert ids(http, f"CustomerId ne {pivot}") == set(admin.customers) - {pivot}
    assert ids(http, f"CustomerId gt {pivot}") == {i for i in admin.customers if i > pivot}
    assert ids(http, f"CustomerId ge {pivot}") == {i for i in admin.customers if i >= pivot}
    assert ids(http, f"CustomerId lt {pivot}") == {i for i in admin.customers if i < pivot}
    assert ids(http, f"CustomerId le {pivot}") == {i for i in admin.customers if i <= pivot}


def test_booleans_in_and_not_in_and_and(admin, http):
    subscribed = {i for i, c in admin.customers.items() if c["IsActive"] and c["Newsletter"]}
    assert subscribed and subscribed != set(admin.customers)
    assert ids(http, "IsActive eq true and Newsletter eq true") == subscribed
    assert ids(http, "IsActive eq 1 AND Newsletter eq 1") == subscribed  # the SDK's 1/0
    some = sorted(admin.customers)[:5]
    listed = ",".join(str(i) for i in some)
    assert ids(http, f"CustomerId in ({listed})") == set(some)
    assert ids(http, f"CustomerId not in ({listed})") == set(admin.customers) - set(some)


def test_strings_are_case_insensitive_and_functions_work(admin, http):
    companies = {i for i, c in admin.customers.items() if c["IsCompany"]}
    assert ids(http, "IsCompany eq true") == companies
    name = next(c["Name"] for c in admin.customers.values() if not c["IsCompany"])
    same = {i for i, c in admin.customers.items() if (c["Name"] or "").lower() == name.lower()}
    assert ids(http, f"Name eq '{name.upper()}'") == same
    assert ids(http, "StartsWith(Email, 'INFO@')") == {
        i for i, c in admin.customers.items() if (c["Email"] or "").lower().startswith("info@")
    }
    assert ids(http, "EndsWith(Email,'.be')") == {
        i for i, c in admin.customers.items() if (c["Email"] or "").lower().endswith(".be")
    }
    assert ids(http, "Contains(Name, 'ë')") == {
        i for i, c in admin.customers.items() if "ë" in (c["Name"] or "").lower()
    }


def test_quotes_nulls_and_datetimes(admin, http):
    quoted = {i for i, c in admin.customers.items() if "'" in (c["Name"] or "")}
    if quoted:
        name = admin.customers[next(iter(quoted))]["Name"].replace("'", "''")
        assert next(iter(quoted)) in ids(http, f"Name eq '{name}'")
    no_first = {i for i, c in admin.customers.items() if c["Firstname"] is None}
    assert ids(http, "Firstname is null") == no_first
    assert ids(http, "Firstname is not null") == set(admin.customers) - no_first
    moment = sorted(c["CreationDate"] for c in admin.customers.values())[10]
    literal = moment.replace("T", " ")
    assert ids(http, f"CreationDate lt '{literal}'") == {
        i for i, c in admin.customers.items() if c["CreationDate"] < moment
    }
    assert len(ids(http, f"CreationDate ge '{literal[:10]}'")) >= len(admin.customers) - 11


@pytest.mark.parametrize(
    "expression",
    [
        "Nope eq 1",
        "CustomerId eq 'x'",
        "Name eq Peeters",
        "IsActive eq yes",
        "CustomerId like 3",
        "IsActive eq true or IsCompany eq true",
        "CustomerId in (1,2",
        "StartsWith(CustomerId, '1')",
        "CreationDate gt '30/11/2026'",
        "",
        "Name eq 'x' and",
    ],
)
def test_a_bad_field_or_expression_is_400(http, expression):
    answer = http.get("/customers", params={"Filter": expression})
    assert answer.status_code == 400, expression
    assert set(answer.json()) == {"ErrorMessage"}


def test_a_uri_over_2048_characters_is_414(admin, http):
    many = ",".join(str(10_000 + i) for i in range(400))
    answer = http.get("/customers", params={"Filter": f"CustomerId in ({many})"})
    assert answer.status_code == 414 and set(answer.json()) == {"ErrorMessage"}
    hundred = ",".join(str(i) for i in sorted(admin.customers)[:100])  # AD-A6's chunk fits
    assert http.get("/customers", params={"Filter": f"CustomerId in ({hundred})"}).is_success


# -- customers: create, update, activate (section 2.2, AD-A7, AD-A8) -------------------------------
def last_changes(admin, n: int = 1) -> list[dict]:
    return admin.changes[-n:]


def test_post_creates_a_customer_with_newsletter_and_logs_an_insert(admin, http):
    body = {
        "Name": "Van Hoëcke",
        "Firstname": "Noëlla",
        "Email": "noella@example.be",
        "Language": "N",
        "IsCompany": False,
        "CustomerCrmType": 3,
        "Newsletter": True,
    }
    answer = http.post("/customers", json=body)
    assert answer.status_code == 201, answer.text
    created = answer.json()
    assert created["CustomerId"] in admin.customers
    assert {k: created[k] for k in body} == body
    assert created["IsActive"] is True
    change = last_changes(admin)[0]
    assert (change["Id"], change["ActionType"], change["TableName"]) == (
        created["CustomerId"],
        "INSERT",
        "CUSTOMER",
    )
    found = http.get("/customers", params={"Filter": "Email eq 'NOELLA@example.be'"}).json()
    assert [r["CustomerId"] for r in found] == [created["CustomerId"]]


@pytest.mark.parametrize(
    "body",
    [
        {"Firstname": "Zonder naam"},
        {"Name": "X", "IsActive": True},
        {"Name": "X", "Sector": "Bouw"},
        {"Name": "X", "Language": "Klingon"},
        {"Name": "X", "CustomerCrmType": 99},
        {"Name": "X", "Newsletter": "yes"},
        {"Name": "X", "CustomerId": 5},
    ],
)
def test_post_refuses_missing_unknown_and_non_writable_fields(http, body):
    answer = http.post("/customers", json=body)
    assert answer.status_code == 400 and set(answer.json()) == {"ErrorMessage"}


def test_put_with_customer_id_in_the_body_unticks_the_newsletter(admin, http):
    cid = next(i for i, c in admin.customers.items() if c["Newsletter"] and c["IsActive"])
    fresh = http.get(f"/customers/{cid}").json()
    answer = http.put("/customers", json=customer_body(fresh, Newsletter=False))
    assert answer.status_code == 200, answer.text
    after = http.get(f"/customers/{cid}").json()
    assert after["Newsletter"] is False
    assert {k: v for k, v in after.items() if k != "Newsletter"} == {
        k: v for k, v in fresh.items() if k != "Newsletter"
    }
    assert last_changes(admin)[0]["Id"] == cid
    assert last_changes(admin)[0]["ActionType"] == "UPDATE"
    assert cid not in ids(http, "IsActive eq true and Newsletter eq true")


def test_put_is_a_full_replace_and_refuses_what_is_not_writable(admin, http):
    cid = next(i for i, c in admin.customers.items() if c["Mobile"] and c["Newsletter"])
    fresh = http.get(f"/customers/{cid}").json()
    partial = {"CustomerId": cid, "Name": fresh["Name"], "Newsletter": True}
    assert http.put("/customers", json=partial).status_code == 200
    after = http.get(f"/customers/{cid}").json()
    assert after["Mobile"] is None and after["Name"] == fresh["Name"]  # left out = emptied
    for body in (
        {"Name": "No id"},
        {"CustomerId": 1, "Name": "Unknown"},
        {**customer_body(fresh), "CreationDate": "2020-01-01 00:00:00"},
        {**customer_body(fresh), "Name": ""},
    ):
        answer = http.put("/customers", json=body)
        assert answer.status_code == 400 and set(answer.json()) == {"ErrorMessage"}, body


def head_office(http: httpx.Client, cid: int) -> dict:
    rows = walk(
        http, "/customeraddresses", Filter=f"CustomerId eq {cid} and RegisteredOffice eq true"
    )
    assert len(rows) == 1
    return rows[0]


def test_customer_addresses_serve_the_registered_office(admin, http):
    cid = next(i for i, a in admin.addresses.items() if a["Box"] and a["City"])
    stored = admin.addresses[cid]
    row = head_office(http, cid)
    assert row["CustomerId"] == cid and row["RegisteredOffice"] is True
    assert row["StreetName"] == stored["Street1"] and row["HouseNr"] == stored["Nr"]
    assert row["HouseBox"] == stored["Box"] and row["ZipCode"] == stored["Zipcode"]
    assert row["City"] == stored["City"] and row["CountryCode"] == "BE"
    assert row["Street1"] == f"{stored['Street1']} {stored['Nr']}/{stored['Box']}"
    answer = http.get("/customeraddresses", params={"Filter": "CustomerId eq 1"})
    assert answer.status_code == 404 and answer.json() == {"ErrorMessage": NOTHING_FOUND}


def test_a_put_replaces_the_head_office_address_too(admin, http):
    kept, wiped = [i for i, a in admin.addresses.items() if a["City"]][10:12]
    for cid in (kept, wiped):
        fresh = http.get(f"/customers/{cid}").json()
        office = head_office(http, cid)
        address = {"Street1": office["StreetName"], "Street2": office["Street2"],
                   "Nr": office["HouseNr"], "Box": office["HouseBox"],
                   "Zipcode": office["ZipCode"], "City": office["City"],
                   "CountryCode": office["CountryCode"]}  # fmt: skip
        body = customer_body(fresh, **(address if cid == kept else {}))
        assert http.put("/customers", json=body).status_code == 200
    assert head_office(http, kept)["City"] and admin.addresses[kept]["Zipcode"]
    assert set(admin.addresses[wiped].values()) == {None}  # a full replace without it
    answer = http.get("/customeraddresses", params={"Filter": f"CustomerId eq {wiped}"})
    assert answer.status_code == 404


def test_activate_and_deactivate(admin, http):
    cid = next(i for i, c in admin.customers.items() if c["IsActive"])
    answer = http.post(
        f"/customers/{cid}/activatedeactivate",
        json={"CustomerId": cid, "IsActive": False, "DisabledDate": "2026-01-31"},
    )
    assert answer.status_code == 200
    assert answer.json()["IsActive"] is False and answer.json()["DisabledDate"][:10] == "2026-01-31"
    assert last_changes(admin)[0]["ActionType"] == "UPDATE"
    assert http.post(f"/customers/{cid}/activatedeactivate", json={"IsActive": True}).is_success
    assert http.get(f"/customers/{cid}").json()["IsActive"] is True
    assert http.post(f"/customers/{cid}/activatedeactivate", json={}).status_code == 400


def test_an_unsupported_method_or_path_is_refused_in_admin_shape(http, admin):
    answer = http.delete(f"/customers/{next(iter(admin.customers))}")
    assert answer.status_code == 405 and set(answer.json()) == {"ErrorMessage"}
    answer = http.get("/nothing/here")
    assert answer.status_code == 404 and set(answer.json()) == {"ErrorMessage"}


# -- the change log (AD-A6) ------------------------------------------------------------------------
def test_changes_filter_on_date_action_log_id_and_table_name(admin, http):
    window_start = stamp_of(admin.changes[20])
    window_end = stamp_of(admin.changes[40])
    rows = walk(
        http,
        "/customer/changes",
        Filter=f"TableName in ('CUSTOMER') and DateAction ge '{window_start}' "
        f"and DateAction lt '{window_end}'",
        per_page=1000,
    )
    expected = [
        r
        for r in admin.changes
        if r["TableName"] == "CUSTOMER" and window_start <= r["DateAction"] < window_end
    ]
    assert rows == expected
    assert set(rows[0]) == {"LogId", "Id", "OwnId", "TableName", "ActionType", "DateAction"}
    by_id = walk(http, "/customer/changes", Filter="l.LogId ge 5 and l.LogId lt 9")
    assert [r["LogId"] for r in by_id] == [5, 6, 7, 8]


def stamp_of(row: dict) -> str:
    return row["DateAction"]


def test_at_most_1000_changes_per_call_so_the_client_goes_on_by_log_id(admin, http, control):
    start = admin.now()
    admin.now = lambda: start + timedelta(minutes=1)
    try:
        cids = sorted(admin.customers)
        for n in range(CHANGES_CAP + 20):
            admin.update_relation(cids[n % len(cids)], {"Remarks": f"touch {n}"})
    finally:
        admin.now = brussels_now
    since = (start + timedelta(seconds=30)).strftime("%Y-%m-%d %H:%M:%S")
    filter_ = f"TableName in ('CUSTOMER') and DateAction ge '{since}'"
    rows = walk(http, "/customer/changes", Filter=filter_, per_page=1000)
    assert len(rows) == CHANGES_CAP
    assert rows == sorted(rows, key=lambda r: r["LogId"])
    paged = walk(http, "/customer/changes", Filter=filter_, per_page=300)
    assert paged == rows
    last = rows[-1]["LogId"]
    rest = walk(http, "/customer/changes", Filter=f"{filter_} and LogId gt {last}")
    assert len(rest) == 20


# -- communications (AD-A9) ------------------------------------------------------------------------
def test_each_communication_post_is_stored_unless_dedupe_is_on(admin, http, control):
    cid = list(admin.customers)[1]
    body = {
        "CustomerId": cid,
        "Date": "2026-11-22 08:00:00",
        "CommunicationType": "Flexmail",
        "Subject": "Nieuwsbrief",
        "Description": "Click: https://kantoor.example.be/dubbel",
    }
    first = http.post("/communications", json=body)
    second = http.post("/communications", json=body)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["CommunicationId"] != second.json()["CommunicationId"]  # a double POST
    mine = walk(http, "/communications", Filter=f"CustomerId eq {cid}")
    assert sum(1 for c in mine if c["Description"] == body["Description"]) == 2
    assert httpx.post(f"{control}/communications/dedupe", json={"on": "ja"}).status_code == 400


def test_a_click_is_one_communication_however_often_it_is_posted(admin, http, control):
    assert httpx.post(f"{control}/communications/dedupe", json={"on": True}).status_code == 200
    try:
        _posted_three_times(admin, http)
    finally:
        httpx.post(f"{control}/communications/dedupe", json={"on": False})
    assert admin.dedupe_communications is False


def _posted_three_times(admin, http) -> None:
    cid = next(iter(admin.customers))
    body = {
        "CustomerId": cid,
        "Date": "2026-11-20 14:03:00",
        "CommunicationType": "Flexmail",
        "Subject": "Nieuwsbrief november",
        "Description": "Click: https://kantoor.example.be/fiscaal-nieuws",
    }
    before = len(admin.communications)
    first = http.post("/communications", json=body)
    assert first.status_code == 201
    assert {k: first.json()[k] for k in body} == body and first.json()["CommunicationId"]
    for _ in range(2):
        again = http.post("/communications", json=body)
        assert (again.status_code, again.json()) == (200, first.json())
    other = http.post("/communications", json={**body, "Date": "2026-11-21 09:00:00"})
    assert other.status_code == 201
    assert len(admin.communications) == before + 2
    listed = walk(http, "/communications", Filter=f"CustomerId eq {cid}")
    assert {c["CommunicationId"] for c in listed} == {
        first.json()["CommunicationId"],
        other.json()["CommunicationId"],
    }


@pytest.mark.parametrize(
    "change",
    [
        {"CustomerId": 1},
        {"Date": "20-11-2026"},
        {"Description": None},
        {"Colour": "red"},
    ],
)
def test_a_bad_communication_is_400(admin, http, change):
    body = {
        "CustomerId": next(iter(admin.customers)),
        "Date": "2026-11-20 14:03:00",
        "CommunicationType": "Flexmail",
        "Subject": "x",
        "Description": "Click: https://example.be",
        **change,
    }
    answer = http.post("/communications", json=body)
    assert answer.status_code == 400 and set(answer.json()) == {"ErrorMessage"}


# -- interests (AD-A10) ----------------------------------------------------------------------------
def test_interests_are_listed_linked_and_unlinked(admin, http):
    interests = walk(http, "/interests")
    assert {"Fiscaliteit", "Vennootschapsrecht", "Successieplanning", "Btw"} <= {
        i["Description"] for i in interests
    }
    assert set(interests[0]) == {"InterestId", "Description"}
    cid = next(i for i in admin.customers if not admin.links.get(i))
    assert http.get(f"/customers/{cid}/interests").status_code == 204
    iid = interests[0]["InterestId"]
    added = http.post(f"/customers/{cid}/interests", json={"InterestId": iid})
    assert added.status_code == 201 and added.json() == interests[0]
    assert http.get(f"/customers/{cid}/interests").json() == [interests[0]]
    assert admin.changes[-1]["TableName"] == "CUSTOMER_INTEREST"
    twice = http.post(f"/customers/{cid}/interests", json={"InterestId": iid})
    assert twice.status_code == 400 and "already" in twice.json()["ErrorMessage"]
    unknown = http.post(f"/customers/{cid}/interests", json={"InterestId": 9999})
    assert unknown.status_code == 400
    assert http.delete(f"/customers/{cid}/interests/{iid}").status_code == 200
    gone = http.delete(f"/customers/{cid}/interests/{iid}")
    assert gone.status_code == 400 and "does not exist" in gone.json()["ErrorMessage"]
    assert http.get("/customers/1/interests").status_code == 404


# -- custom fields (AD-A11) and lists --------------------------------------------------------------
def test_extradata_of_the_customer_table(admin, http):
    rows = walk(http, f"/extradata/{CUSTOMER_TABLE_ID}", per_page=1000)
    assert len(rows) == len(admin.customers)
    assert set(rows[0]) == {"CustomerId", "acc_software", "kantoor", "klant_sinds"}
    some = sorted(admin.customers)[:3]
    listed = ",".join(map(str, some))
    picked = walk(http, f"/extradata/{CUSTOMER_TABLE_ID}", Filter=f"CustomerId in ({listed})")
    assert [r["CustomerId"] for r in picked] == some
    answer = http.get("/extradata/77")
    assert answer.status_code == 404 and set(answer.json()) == {"ErrorMessage"}


def test_crm_types_and_languages_lists(http, admin):
    crm = http.get("/customercrmtypes").json()
    assert {"ListValueId", "ListValue", "ExtCode", "LegalForm"} == set(crm[0])
    languages = {r["ListValue"] for r in http.get("/lists/19").json()}
    assert languages == {"N", "F", "E", "D"}
    assert {c["Language"] for c in admin.customers.values()} - {None} <= languages


# -- control routes: the office at work ------------------------------------------------------------
def test_office_changes_through_control_routes_write_the_change_log(admin, control, http):
    created = httpx.post(
        f"{control}/relations",
        json={"Name": "Dubois", "Firstname": "Hélène", "Email": "helene@example.be"},
    )
    assert created.status_code == 201
    cid = created.json()["CustomerId"]
    assert admin.changes[-1]["Id"] == cid and admin.changes[-1]["ActionType"] == "INSERT"
    edited = httpx.post(
        f"{control}/relations/{cid}", json={"Newsletter": True, "Name": "Dubois-Noël"}
    )
    assert edited.status_code == 200 and edited.json()["Name"] == "Dubois-Noël"
    assert admin.changes[-1]["ActionType"] == "UPDATE"
    httpx.post(f"{control}/relations/{cid}", json={"kantoor": "Brugge"})
    assert admin.changes[-1]["TableName"] == "CUSTOMER_EXTRADATA"
    row = http.get(f"/extradata/{CUSTOMER_TABLE_ID}", params={"Filter": f"CustomerId eq {cid}"})
    assert row.json()[0]["kantoor"] == "Brugge"
    httpx.post(f"{control}/relations/{cid}", json={"IsActive": False})
    assert http.get(f"/customers/{cid}").json()["IsActive"] is False
    for bad in ({"Colour": "red"}, {"IsActive": "no"}, {"klant_sinds": "gisteren"}):
        assert httpx.post(f"{control}/relations/{cid}", json=bad).status_code == 400
    assert httpx.delete(f"{control}/relations/{cid}").status_code == 200
    assert admin.changes[-1]["ActionType"] == "DELETE" and admin.changes[-1]["Id"] == cid
    assert http.get(f"/customers/{cid}").status_code == 404
    assert httpx.delete(f"{control}/relations/{cid}").status_code == 404
    assert httpx.post(f"{control}/relations/1", json={"Name": "x"}).status_code == 404


def test_stats_count_calls_per_endpoint(control, http, sandbox):
    before = httpx.get(f"{control}/stats").json()
    http.get("/customers", params={"per_page": 5})
    http.get("/customers/1")
    after = httpx.get(f"{control}/stats").json()
    assert after["calls"]["GET customers"] == before["calls"].get("GET customers", 0) + 1
    assert after["calls"]["GET customers/{}"] == before["calls"].get("GET customers/{}", 0) + 1
    assert {"relations", "with_newsletter", "communications", "changes", "refusals"} <= set(after)
    summary = httpx.get(f"{sandbox.url}/_sandbox/summary").json()["admin"]
    assert {"relations", "with_newsletter", "communications"} <= set(summary)


# -- the data --------------------------------------------------------------------------------------
def test_the_data_looks_like_a_belgian_accountancy_office(admin):
    customers = list(admin.customers.values())
    names = " ".join(f"{c['Firstname'] or ''} {c['Name']}" for c in customers)
    assert any(ch in names for ch in "éèëïçô")
    companies = [c for c in customers if c["IsCompany"]]
    assert companies and all(c["Firstname"] is None for c in companies)
    assert {"N", "F"} <= {c["Language"] for c in customers}
    without = [c for c in customers if not c["Newsletter"]]
    assert 0.03 < len(without) / len(customers) < 0.25
    assert any(not c["IsActive"] for c in customers)
    assert any(not (c["Email"] or "").strip() for c in customers)
    assert any(c["Email"] and (c["Email"] != c["Email"].strip()) for c in customers)
    assert any(c["Email"] and c["Email"] != c["Email"].lower() for c in customers)
    shared = Counter((c["Email"] or "").strip().lower() for c in customers if c["Email"])
    assert shared["info@kantoor-peeters.be"] == 3
    assert 0.3 < len([i for i in admin.links.values() if i]) / len(customers) < 0.7
