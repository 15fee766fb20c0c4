"""Heyloyalty emulator over real sockets: HMAC auth, isolation, upsert, listing, BI import."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from sandbox.credentials import SANDBOX_ENV
from sandbox.server import SandboxServer

V1 = "/heyloyalty/loyalty/v1"
BI = "/heyloyalty/bi/api/transaction/import"
KEY, SECRET = SANDBOX_ENV["HEYLOYALTY_API_KEY"], SANDBOX_ENV["HEYLOYALTY_API_SECRET"]
OTHER = (SANDBOX_ENV["HEYLOYALTY_OTHER_API_KEY"], SANDBOX_ENV["HEYLOYALTY_OTHER_API_SECRET"])


class HeyloyaltyAuth(httpx.Auth):
    """Written from the HL-A1 signing rule, independently of the project's client."""

    def __init__(self, key: str, secret: str, stamp: str | None = None) -> None:
        self.key, self.secret, self.stamp = key, secret, stamp

    def auth_flow(self, request):
        stamp = self.stamp or format_datetime(datetime.now(UTC), usegmt=True)
        digest = hmac.new(self.secret.encode(), stamp.encode(), hashlib.sha256).hexdigest()
        signature = base64.b64encode(digest.encode()).decode()
        basic = base64.b64encode(f"{self.key}:{signature}".encode()).decode()
        request.headers["Authorization"] = f"Basic {basic}"
        request.headers["X-Request-Timestamp"] = stamp
        yield request


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer(seed=4, customers=20, rate_limits=False) as server:
        yield server


@pytest.fixture(scope="module")
def client(sandbox):
    with httpx.Client(base_url=sandbox.url, auth=HeyloyaltyAuth(KEY, SECRET), timeout=10) as http:
        yield http


def upsert(client, member, unique="email", list_id=4711, **flags):
    body = {"unique_field": unique, "member": member, **flags}
    return client.post(f"{V1}/lists/{list_id}/members/upsert", json=body)


def test_auth_refuses_bad_signature_and_stale_timestamp(sandbox):
    with httpx.Client(base_url=sandbox.url) as http:
        wrong = http.get(f"{V1}/lists", auth=HeyloyaltyAuth(KEY, "wrong-secret"))
        assert wrong.status_code == 401 and wrong.json() == {"message": "Unauthorized", "code": 401}
        old = format_datetime(datetime.now(UTC) - timedelta(minutes=20), usegmt=True)
        assert http.get(f"{V1}/lists", auth=HeyloyaltyAuth(KEY, SECRET, old)).status_code == 401
        assert http.get(f"{V1}/lists", auth=(KEY, "x")).status_code == 401
        iso = datetime.now(UTC).isoformat()
        assert http.get(f"{V1}/lists", auth=HeyloyaltyAuth(KEY, SECRET, iso)).status_code == 200


def test_accounts_see_only_their_lists(sandbox, client):
    assert sorted(item["id"] for item in client.get(f"{V1}/lists").json()) == [4711, 4712]
    assert client.get(f"{V1}/lists/5001").json() == {"message": "Not Found", "code": 404}
    with httpx.Client(base_url=sandbox.url, auth=HeyloyaltyAuth(*OTHER)) as other:
        assert [item["id"] for item in other.get(f"{V1}/lists").json()] == [5001]
        assert other.get(f"{V1}/lists/4711/members").status_code == 404


def test_list_fields(client):
    fields = client.get(f"{V1}/lists/4711").json()["fields"]
    assert {
        "firstname",
        "email",
        "mobile",
        "sex",
        "birthdate",
        "postalcode",
        "cardnumber",
        "customer_no",
        "language",
    } <= set(fields)
    assert fields["sex"]["format"] == "choice"
    assert fields["sex"]["options"] == {"1": "Mand", "2": "Kvinde"}
    assert "cardnumber" not in client.get(f"{V1}/lists/4712").json()["fields"]


def test_upsert_creates_then_updates_sent_fields_only(sandbox, client):
    member = {
        "email": "søren.kjær@mail.dk",
        "firstname": "Søren",
        "sex": "1",
        "mobile": "4512345678",
    }
    created = upsert(client, member, skipOptIn=1, trigger_autoresponder=0, trigger_webhooks=1)
    assert created.status_code == 200 and created.json()["type"] == "create"
    updated = upsert(client, {"email": "SØREN.KJÆR@mail.dk", "lastname": "Kjær"})
    assert updated.json() == {"type": "update", "member_id": created.json()["member_id"]}
    stored = sandbox.emulator("heyloyalty").member_by_email(4711, "søren.kjær@mail.dk")
    assert stored["fields"]["firstname"] == "Søren" and stored["fields"]["lastname"] == "Kjær"
    assert stored["mobile"] == "4512345678" and stored["status"] == "active"
    flags = sandbox.emulator("heyloyalty").upsert_flags(4711, "søren.kjær@mail.dk")
    assert flags[0] == {
        "type": "create",
        "skipOptIn": 1,
        "trigger_autoresponder": 0,
        "trigger_webhooks": 1,
    }
    assert flags[1]["skipOptIn"] is None
    assert sandbox.emulator("heyloyalty").request_counts["upsert"] >= 2


def test_upsert_on_mobile(sandbox, client):
    response = upsert(client, {"mobile": "4587654321", "firstname": "Åse"}, unique="mobile")
    assert response.json()["type"] == "create"
    again = upsert(client, {"mobile": "4587654321", "city": "Næstved"}, unique="mobile")
    assert again.json()["type"] == "update"
    assert (
        sandbox.emulator("heyloyalty").member_by_mobile(4711, "4587654321")["fields"]["city"]
        == "Næstved"
    )


@pytest.mark.parametrize(
    ("member", "error"),
    [
        ({"email": "a@b.dk", "shoe_size": "44"}, "Unknown field: shoe_size"),
        ({"email": "a@b.dk", "sex": "M"}, "Invalid option for field sex: M"),
        ({"email": "jens.hansen.mail.dk"}, "Invalid email"),
        ({"email": "a@b.dk", "mobile": "+4512345678"}, "Invalid mobile"),
        (
            {"email": "a@b.dk", "birthdate": "17-05-1980"},
            "Invalid date for field birthdate: 17-05-1980",
        ),
    ],
)
def test_upsert_rejects_bad_values(client, member, error):
    response = upsert(client, member)
    assert response.status_code == 400 and response.json() == {"error": error}


def test_upsert_needs_raw_json_and_unique_value(client):
    form = client.post(f"{V1}/lists/4711/members/upsert", data={"unique_field": "email"})
    assert form.status_code == 400
    assert upsert(client, {"firstname": "Uden"}).status_code == 400
    assert upsert(client, {"email": "x@y.dk"}, unique="firstname").status_code == 400


def test_upsert_with_several_matches_is_refused(client):
    for _ in range(2):
        created = client.post(f"{V1}/lists/4712/members", json={"email": "dobbelt@mail.dk"})
        assert created.status_code == 201 and created.json()["id"]
    response = upsert(client, {"email": "dobbelt@mail.dk"}, list_id=4712)
    assert response.status_code == 400 and response.json() == {"error": "Multiple members match"}


def test_unsubscribe_is_visible_through_updated_at_and_upsert_reactivates(sandbox, client):
    upsert(client, {"email": "mette@mail.dk", "firstname": "Mette"})
    before = sandbox.emulator("heyloyalty").member_by_email(4711, "mette@mail.dk")
    time.sleep(1.05)  # updated_at has whole seconds
    response = client.post(
        "/_sandbox/heyloyalty/unsubscribe", json={"list_id": 4711, "email": "mette@mail.dk"}
    )
    assert response.status_code == 200
    after = sandbox.emulator("heyloyalty").member_by_email(4711, "mette@mail.dk")
    assert after["status"] == "unsubscribed" and after["unsubscribed_at"]
    assert after["updated_at"] > before["updated_at"]
    changed = client.get(
        f"{V1}/lists/4711/members", params={"filter[updated_at][gte][]": after["updated_at"]}
    ).json()
    assert [m["id"] for m in changed["members"]] == [after["id"]]
    assert changed["members"][0]["status"]["status"] == "unsubscribed"
    assert upsert(client, {"email": "mette@mail.dk"}).json()["type"] == "update"
    assert (
        sandbox.emulator("heyloyalty").member_by_email(4711, "mette@mail.dk")["status"] == "active"
    )


def test_member_listing_filters_and_paging(sandbox, client):
    for n in range(7):
        sandbox.emulator("heyloyalty").add_member(
            4712, {"email": f"side{n}@mail.dk", "firstname": "Side"}
        )
    pages, page = [], 1
    while True:
        batch = client.get(
            f"{V1}/lists/4712/members",
            params={"page": page, "perpage": 3, "filter[firstname][eq][]": "Side"},
        ).json()["members"]
        pages.append(batch)
        if len(batch) < 3:
            break
        page += 1
    assert [len(p) for p in pages] == [3, 3, 1]
    found = client.get(
        f"{V1}/lists/4712/members", params={"filter[email][eq][]": "SIDE3@mail.dk"}
    ).json()["members"]
    assert [m["fields"]["email"]["value"] for m in found] == ["side3@mail.dk"]
    too_many = client.get(f"{V1}/lists/4712/members", params={"perpage": 5001})
    assert too_many.status_code == 400 and too_many.json() == {"error": "perpage must be <= 5000"}


def test_member_get_put_patch_delete(client):
    member = {"email": "bodil@mail.dk", "firstname": "Bodil", "sex": "2", "city": "Køge"}
    member_id = upsert(client, member).json()["member_id"]
    url = f"{V1}/lists/4711/members/{member_id}"
    shown = client.get(url).json()
    assert shown["id"] == member_id and shown["status"]["status"] == "active"
    assert shown["fields"]["sex"] == {"value": "2", "options": {"1": "Mand", "2": "Kvinde"}}
    assert client.patch(url, json={"lastname": "Dahl"}).status_code == 204
    assert client.get(url).json()["fields"]["city"]["value"] == "Køge"
    assert client.put(url, json={"email": "bodil@mail.dk", "firstname": "Bo"}).status_code == 204
    assert client.get(url).json()["fields"]["city"]["value"] is None
    assert client.delete(url).status_code == 204
    assert client.get(url).status_code == 404


def test_field_changes_drive_the_mapping_check(sandbox, client):
    sandbox.emulator("heyloyalty").remove_field(4711, "language")
    refused = upsert(client, {"email": "felt@mail.dk", "language": "da"})
    assert refused.json() == {"error": "Unknown field: language"}
    sandbox.emulator("heyloyalty").add_field(4711, "language", "text")
    assert upsert(client, {"email": "felt@mail.dk", "language": "da"}).status_code == 200


def bi_post(client, tracking_id, csv_text, fields=None, date_format="Y-m-d H:i:s"):
    data = {"date_format": date_format, "delimiter": ","}
    if fields:
        data["fields_selected[]"] = fields
        data["skip_header_line"] = "1"  # the header is skipped only when asked (HL-A10)
    files = {"file": ("events.csv", csv_text.encode(), "text/csv")}
    return client.post(f"{BI}/{tracking_id}", data=data, files=files)


def test_bi_import_stores_events_and_reports_unknown_members(sandbox, client):
    upsert(client, {"email": "kunde@mail.dk"})
    upsert(client, {"mobile": "4522334455"}, unique="mobile")
    csv_text = (
        "email,product_id,product_name,amount,date,event_type,store\n"
        "KUNDE@mail.dk,101,Kaffe latte,42.00,2025-01-02 10:00:00,bought,Butik Køge\n"
        "ukendt@mail.dk,102,Rugbrødsmad,65.00,2025-01-02 11:00:00,bought,Butik Køge\n"
        "kunde@mail.dk,103,Is,38.00,02-01-2025,bought,Butik Køge\n"
    )
    fields = ["email", "product_id", "product_name", "amount", "date", "event_type", "store"]
    body = bi_post(client, 99, csv_text, fields).json()
    assert body["status"] == "success" and body["imported"] == 1
    assert [f["row"] for f in body["failed"]] == [2, 3]
    events = sandbox.emulator("heyloyalty").events(99)
    assert events[-1]["store"] == "Butik Køge" and events[-1]["product_id"] == "101"
    by_mobile = bi_post(client, 99, "mobile,product_id,date\n4522334455,7,2025-01-03 09:00:00\n")
    assert by_mobile.json()["imported"] == 1


def test_bi_import_refusals(sandbox, client):
    assert bi_post(client, 501, "email,date\na@b.dk,2025-01-01 00:00:00\n").status_code == 404
    no_key = bi_post(client, 99, "name,date\nx,2025-01-01 00:00:00\n")
    assert no_key.json()["status"] == "error"
    rows = "email,amount\n" + "a@b.dk,1\n" * 50_001
    too_many = bi_post(client, 99, rows)
    assert too_many.json()["status"] == "error" and "50000" in too_many.json()["message"]


def test_rate_limit_and_fault_injection(sandbox, client):
    sandbox.emulator("heyloyalty").limiter.limit = 3
    try:
        codes = [client.get(f"{V1}/lists").status_code for _ in range(6)]
        assert 429 in codes
        limited = client.get(f"{V1}/lists")
        assert limited.json() == {"message": "Too Many Requests", "code": 429}
        assert limited.headers["retry-after"] == "1"
    finally:
        sandbox.emulator("heyloyalty").limiter.limit = None
    sandbox.faults.add("/members/upsert", 500, times=1)
    assert upsert(client, {"email": "fejl@mail.dk"}).status_code == 500
    assert upsert(client, {"email": "fejl@mail.dk"}).status_code == 200


@pytest.mark.parametrize(
    "broken",
    [
        "email,product_id,date\nkunde@mail.dk,1,2025-01-02 10:00:00\nkunde@mail.dk,2\n",
        "email,product_id,date\nkunde@mail.dk,1,2025-01-02 10:00:00\nkunde@mail.dk,2,x,y\n",
        'email,product_id,date\nkunde@mail.dk,1,2025-01-02 10:00:00\nkunde@mail.dk,"2,',
        b"email,product_name,date\nkunde@mail.dk,K\xf8ge,2025-01-02 10:00:00\n",
    ],
    ids=["cut-off-row", "extra-column", "open-quote", "not-utf8"],
)
def test_bi_import_stores_nothing_of_a_malformed_file(sandbox, client, broken):
    """HL-A10: one file per call; a broken file is refused whole, never half stored."""
    upsert(client, {"email": "kunde@mail.dk"})
    before = len(sandbox.emulator("heyloyalty").events(99))
    data = {"date_format": "Y-m-d H:i:s", "delimiter": ","}
    content = broken if isinstance(broken, bytes) else broken.encode()
    answer = client.post(f"{BI}/99", data=data, files={"file": ("events.csv", content, "text/csv")})
    assert answer.status_code == 400
    assert answer.json()["status"] == "error" and "nothing imported" in answer.json()["message"]
    assert len(sandbox.emulator("heyloyalty").events(99)) == before


def test_bi_import_counts_rows_exactly(sandbox, client):
    upsert(client, {"email": "kunde@mail.dk"})
    before = len(sandbox.emulator("heyloyalty").events(99))  # the sandbox is shared by this module
    csv_text = "email,product_id,date\n" + "".join(
        f"kunde@mail.dk,{n},2025-01-02 10:00:00\n" for n in range(7)
    )
    csv_text += "ukendt@mail.dk,8,2025-01-02 10:00:00\n"
    body = bi_post(client, 99, csv_text).json()
    assert (body["imported"], [f["row"] for f in body["failed"]]) == (7, [8])
    assert body["message"] == "7 rows imported"
    assert len(sandbox.emulator("heyloyalty").events(99)) == before + 7
