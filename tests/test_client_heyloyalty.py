"""HeyloyaltyClient edge cases against httpx.MockTransport (HL-A1..HL-A10)."""

from __future__ import annotations

import base64
import csv
import email
import hashlib
import hmac
import io
import json
import logging
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from resources.base import UncertainOutcome, UpsertFlags, VendorError
from resources.heyloyalty import HeyloyaltyClient
from tests.scripted import scripted

BASE = "http://hl.test/heyloyalty/loyalty/v1"
BI = "http://hl.test/heyloyalty/bi/api"
KEY = "hl-key"
SECRET = "hl-api-secret-value"
T0 = datetime(2013, 5, 24, 13, 16, 26, tzinfo=UTC)


def expected_authorization(timestamp: str) -> str:
    """The documented signature (HMAC over the timestamp), computed independently of the client."""
    hex_text = hmac.new(SECRET.encode(), timestamp.encode(), hashlib.sha256).hexdigest()
    signature = base64.b64encode(hex_text.encode()).decode()
    assert len(signature) == 88
    return "Basic " + base64.b64encode(f"{KEY}:{signature}".encode()).decode()


def make_client(handler, waits: list[float] | None = None, clock=None) -> HeyloyaltyClient:
    return HeyloyaltyClient(
        base_url=BASE,
        bi_base_url=BI,
        api_key=KEY,
        api_secret=SECRET,
        list_id="4711",
        tracking_id="99",
        transport=httpx.MockTransport(handler),
        sleep=(waits if waits is not None else []).append,
        clock=clock or (lambda: T0),
    )


def recorder(response: httpx.Response | None = None):
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return response or httpx.Response(200, json={})

    return handler, seen


def test_signature_matches_known_vector():
    handler, seen = recorder(httpx.Response(200, json=[]))
    make_client(handler).check_connection()
    [request] = seen
    assert request.headers["X-Request-Timestamp"] == "Fri, 24 May 2013 13:16:26 GMT"
    assert request.headers["Authorization"] == expected_authorization(
        "Fri, 24 May 2013 13:16:26 GMT"
    )
    assert request.url == f"{BASE}/lists"


def test_each_retry_is_signed_afresh():
    ticks = iter([T0, T0 + timedelta(seconds=1)])
    answers = [httpx.Response(429, headers={"Retry-After": "1"}, json={"message": "Too Many"})]
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0) if answers else httpx.Response(200, json=[])

    waits: list[float] = []
    make_client(handler, waits, clock=lambda: next(ticks)).check_connection()
    stamps = [r.headers["X-Request-Timestamp"] for r in seen]
    assert stamps == ["Fri, 24 May 2013 13:16:26 GMT", "Fri, 24 May 2013 13:16:27 GMT"]
    assert seen[1].headers["Authorization"] == expected_authorization(stamps[1])
    assert waits == [1.0]


def test_list_fields_with_options():
    body = {
        "id": 4711,
        "fields": {
            "email": {"id": 1, "name": "email", "format": "text"},
            "sex": {
                "id": 2,
                "name": "sex",
                "format": "choice",
                "options": {"1": "Mand", "2": "Kvinde"},
            },
        },
    }
    handler, seen = recorder(httpx.Response(200, json=body))
    fields = make_client(handler).target_fields()
    assert set(fields) == {"email", "sex"}
    assert fields["sex"].format == "choice" and fields["sex"].options == {
        "1": "Mand",
        "2": "Kvinde",
    }
    assert seen[0].url.path == "/heyloyalty/loyalty/v1/lists/4711"


def _np_bc_member(i: int) -> dict:
    return {
        "id": f"guid-{i}",
        "created_at": "2024-01-01 00:00:00",
        "updated_at": "2024-05-01 10:00:00",
        "unsubscribed_at": None,
        "status": {"status": "active", "email": "active", "mobile": None},
        "fields": {"email": {"value": f"m{i}@x.dk"}, "sex": {"value": "2", "options": {"2": "K"}}},
    }


def test_iter_members_pages_until_short_page_with_changed_since_filter():
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        page = int(request.url.params["page"])
        count = 1000 if page == 1 else 3
        return httpx.Response(200, json={"members": [_np_bc_member(i) for i in range(count)]})

    since = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    members = list(make_client(handler).iter_members(since))
    assert len(members) == 1003 and len(seen) == 2
    params = seen[0].url.params
    assert params["perpage"] == "1000"
    assert params["filter[updated_at][gte][]"] == "2024-05-01 12:00:00"
    first = members[0]
    assert first.member_id == "guid-0" and first.email == "m0@x.dk" and first.mobile is None
    assert first.fields["sex"] == "2" and first.email_status == "active"
    assert first.updated_at == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)


def test_flat_member_shape_is_parsed():
    flat = {
        "id": "g1",
        "status": {"status": "unsubscribed", "email": "hard_bounce"},
        "data": {"email": "a@b.dk", "mobile": "4512345678", "firstname": "A"},
        "unsubscribed_at": "2024-02-03 04:05:06",
        "updated_at": "0000-00-00 00:00:00",
    }
    handler, seen = recorder(httpx.Response(200, json={"members": [flat]}))
    [member] = list(make_client(handler).iter_members(None))
    assert "filter[updated_at][gte][]" not in seen[0].url.params
    assert (member.email, member.mobile, member.status) == ("a@b.dk", "4512345678", "unsubscribed")
    assert member.email_status == "hard_bounce" and member.updated_at is None
    assert member.unsubscribed_at == datetime(2024, 2, 3, 4, 5, 6, tzinfo=UTC)


def test_has_member_changes_is_a_perpage_1_probe():
    handler, seen = recorder(httpx.Response(200, json={"members": []}))
    assert make_client(handler).has_member_changes(datetime(2024, 1, 1, tzinfo=UTC)) is False
    assert seen[0].url.params["perpage"] == "1"


def test_upsert_sends_json_with_flags():
    handler, seen = recorder(httpx.Response(200, json={"type": "create", "member_id": "g9"}))
    flags = UpsertFlags(send_optin=True, send_automations=True, send_webhooks=False)
    result = make_client(handler).upsert_member("email", {"email": "a@b.dk"}, flags)
    assert (result.action, result.member_id) == ("create", "g9")
    request = seen[0]
    assert request.method == "POST" and request.url.path.endswith("/lists/4711/members/upsert")
    assert request.headers["Content-Type"] == "application/json"
    assert json.loads(request.content) == {
        "unique_field": "email",
        "member": {"email": "a@b.dk"},
        "skipOptIn": 0,
        "trigger_autoresponder": 1,
        "trigger_webhooks": 0,
    }
    make_client(handler).upsert_member("mobile", {"mobile": "45"}, UpsertFlags())
    assert json.loads(seen[1].content)["skipOptIn"] == 1


def test_upsert_refusal_fails_at_once_with_vendor_text(caplog):
    caplog.set_level(logging.DEBUG)
    handler, seen = recorder(httpx.Response(400, json={"error": "Unknown field: shoe_size"}))
    with pytest.raises(VendorError) as info:
        make_client(handler).upsert_member("email", {"shoe_size": 42}, UpsertFlags())
    assert info.value.status == 400 and info.value.message == "Unknown field: shoe_size"
    assert len(seen) == 1
    assert SECRET not in str(info.value) and SECRET not in caplog.text


def test_remove_member_deletes_and_tolerates_404():
    handler, seen = recorder(httpx.Response(204))
    make_client(handler).remove_member("g1")
    assert seen[0].method == "DELETE" and seen[0].url.path.endswith("/lists/4711/members/g1")
    gone, _ = recorder(httpx.Response(404, json={"message": "Not Found", "code": 404}))
    make_client(gone).remove_member("g1")


def _multipart(request: httpx.Request) -> tuple[dict[str, list[str]], bytes]:
    head = f"Content-Type: {request.headers['Content-Type']}\r\n\r\n".encode()
    message = email.message_from_bytes(head + request.content)
    form: dict[str, list[str]] = {}
    file_bytes = b""
    for part in message.get_payload():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if name == "file":
            file_bytes = payload
        else:
            form.setdefault(name, []).append(payload.decode())
    return form, file_bytes


def test_send_events_posts_bi_csv_and_reads_failed_rows():
    answer = {
        "status": "success",
        "message": "1 rows imported",
        "imported": 1,
        "failed": [{"row": 2, "error": "unknown email"}],  # data rows count from 1
    }
    handler, seen = recorder(httpx.Response(200, json=answer))
    columns = ["email", "product_name", "amount", "date"]
    rows = [
        {
            "email": "a@b.dk",
            "product_name": 'Show, "live"',
            "amount": 100,
            "date": "2024-01-01 10:00:00",
        },
        {
            "email": "c@d.dk",
            "product_name": "X",
            "amount": None,
            "date": datetime(2024, 1, 2, tzinfo=UTC),
        },
    ]
    result = make_client(handler).send_events("email", columns, rows)
    assert result.imported == 1 and result.failed == [(1, "unknown email")]
    request = seen[0]
    assert str(request.url) == f"{BI}/transaction/import/99"
    assert request.headers["Authorization"] == expected_authorization(
        request.headers["X-Request-Timestamp"]
    )
    form, file_bytes = _multipart(request)
    assert form["fields_selected[]"] == columns
    assert form["date_format"] == ["Y-m-d H:i:s"] and form["skip_header_line"] == ["1"]
    assert form["delimiter"] == [","]
    parsed = list(csv.reader(io.StringIO(file_bytes.decode())))
    assert parsed == [
        columns,
        ["a@b.dk", 'Show, "live"', "100", "2024-01-01 10:00:00"],
        ["c@d.dk", "X", "", "2024-01-02 00:00:00"],
    ]


def test_send_events_status_error_raises():
    handler, _ = recorder(httpx.Response(200, json={"status": "error", "message": "bad date"}))
    with pytest.raises(VendorError, match="bad date"):
        make_client(handler).send_events("email", ["email"], [{"email": "a@b.dk"}])


def test_send_events_needs_match_column_and_skips_empty_batches():
    handler, seen = recorder()
    client = make_client(handler)
    assert client.send_events("email", ["email"], []).imported == 0
    with pytest.raises(ValueError, match="match field"):
        client.send_events("mobile", ["email"], [{"email": "a"}])
    assert seen == []


def test_lookup_member_uses_eq_filter():
    handler, seen = recorder(httpx.Response(200, json={"members": [_np_bc_member(1)]}))
    member = make_client(handler).lookup_member("mobile", "4512345678")
    assert member is not None and member.member_id == "guid-1"
    assert seen[0].url.params["filter[mobile][eq][]"] == "4512345678"
    empty, _ = recorder(httpx.Response(200, json={"members": []}))
    assert make_client(empty).lookup_member("email", "x@y.dk") is None


def test_unauthorized_is_not_retried_and_hides_the_secret():
    handler, seen = recorder(httpx.Response(401, json={"message": "Unauthorized", "code": 401}))
    with pytest.raises(VendorError) as info:
        make_client(handler).target_fields()
    assert info.value.status == 401 and info.value.message == "Unauthorized" and len(seen) == 1
    assert SECRET not in repr(info.value.__dict__)


# --- lost and unreadable answers (issue 6 items 4, 5) -----------------------------------------


def scripted_client(*answers, max_tries: int = 5):
    handler, seen = scripted(*answers)
    client = HeyloyaltyClient(
        base_url=BASE,
        bi_base_url=BI,
        api_key=KEY,
        api_secret=SECRET,
        list_id="4711",
        tracking_id="99",
        transport=httpx.MockTransport(handler),
        sleep=lambda _: None,
        clock=lambda: T0,
        max_tries=max_tries,
    )
    return client, seen


CUT_OFF_UPSERT = httpx.Response(200, content=b'{"type": "update", "memb')
ROW = [{"email": "a@b.dk", "date": "2024-01-01 10:00:00"}]


def test_a_cut_off_upsert_answer_is_retried_not_a_refusal():
    ok = httpx.Response(200, json={"type": "update", "member_id": "m-1"})
    client, seen = scripted_client(CUT_OFF_UPSERT, ok)
    result = client.upsert_member("email", {"email": "a@b.dk"}, UpsertFlags())
    assert (result.action, result.member_id, len(seen)) == ("update", "m-1", 2)


@pytest.mark.parametrize(
    "answer",
    [CUT_OFF_UPSERT, httpx.Response(200, json={"weird": True}), httpx.ReadTimeout("slow")],
    ids=["cut-off", "unexpected-shape", "read-timeout"],
)
def test_an_upsert_unreadable_every_time_ends_transient_with_status_0(answer):
    client, seen = scripted_client(answer, max_tries=3)
    with pytest.raises(VendorError) as info:
        client.upsert_member("email", {"email": "a@b.dk"}, UpsertFlags())
    assert info.value.status == 0 and not isinstance(info.value, UncertainOutcome)
    assert len(seen) == 3


@pytest.mark.parametrize(
    "lost",
    [
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("peer closed connection without sending complete message body"),
        httpx.Response(200, content=b'{"status": "success", "imported": 1'),
        httpx.Response(200, json={"status": "success", "imported": "one"}),
        httpx.Response(502),
    ],
    ids=["read-timeout", "reset", "cut-off", "bad-count", "502"],
)
def test_a_bi_import_whose_answer_is_lost_is_sent_once_and_uncertain(lost):
    client, seen = scripted_client(lost, httpx.Response(200, json={"status": "success"}))
    with pytest.raises(UncertainOutcome):
        client.send_events("email", ["email", "date"], ROW)
    assert len(seen) == 1


@pytest.mark.parametrize(
    "before",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.Response(429, headers={"Retry-After": "1"}, json={"message": "Too Many Requests"}),
        httpx.Response(503),
    ],
    ids=["connect", "429", "503"],
)
def test_a_bi_import_refused_before_processing_is_retried(before):
    ok = httpx.Response(200, json={"status": "success", "imported": 1, "failed": []})
    client, seen = scripted_client(before, ok)
    assert client.send_events("email", ["email", "date"], ROW).imported == 1
    assert len(seen) == 2 and client.calls.retries == 1


def test_heyloyalty_cannot_tell_which_events_it_holds_and_batches_are_small():
    client, seen = scripted_client(httpx.Response(200, json={}))
    # the activity feed has no documented read path
    assert client.events_present("email", {"e1": ROW[0]}) is None
    assert seen == []
    assert client.events_per_batch == 1000 <= client.max_events_per_call
    with pytest.raises(ValueError, match="events_per_batch"):
        HeyloyaltyClient(base_url=BASE, api_key=KEY, api_secret=SECRET, events_per_batch=60_000)


def test_an_unreachable_list_says_so_by_host():
    client, _ = scripted_client(httpx.ConnectError("[Errno 111] Connection refused"), max_tries=2)
    with pytest.raises(VendorError) as info:
        client.check_connection()
    assert (
        str(info.value) == "heyloyalty: could not reach hl.test: connection refused after 2 tries"
    )


def test_events_per_batch_comes_from_the_integration_file():
    from pydantic import ValidationError

    from resources.heyloyalty import HeyloyaltyResource, HeyloyaltyTarget

    section = {
        "kind": "heyloyalty",
        "account": "acme",
        "base_url": BASE,
        "bi_base_url": BI,
        "api_key_env": "HL_KEY",
        "api_secret_env": "HL_SECRET",
        "list_id": 4711,
        "tracking_id": 99,
    }
    assert HeyloyaltyTarget(**section).events_per_batch == 1000
    assert HeyloyaltyTarget(**section, events_per_batch=250).resource().events_per_batch == 250
    with pytest.raises(ValidationError):
        HeyloyaltyTarget(**section, events_per_batch=50_001)
    resource = HeyloyaltyResource(
        account="acme",
        base_url=BASE,
        api_key=KEY,
        api_secret=SECRET,
        list_id="4711",
        events_per_batch=250,
    )
    assert resource.client().events_per_batch == 250


@pytest.mark.parametrize("row", ["n/a", None, 1.5, True])
def test_a_stored_import_whose_failed_rows_cannot_be_read_is_uncertain_not_failed(row):
    """The list took the file; an answer we can't map to rows must hold the batch, since a
    "nothing stored" reading would send it again (a review found 4 of 4 events duplicated)."""
    answer = {"status": "success", "imported": 1, "failed": [{"row": row, "error": "x"}]}
    handler, seen = recorder(httpx.Response(200, json=answer))
    columns = ["email", "product_name"]
    with pytest.raises(UncertainOutcome):
        make_client(handler).send_events("email", columns, [{"email": "a@b.dk"}] * 2)
    assert len(seen) == 1  # not retried: the import is not idempotent


# --- write_members: a batch of canonical changes, one ack each (issue 7) ------------------------


def _list_handler(members: dict[str, dict], seen: list[httpx.Request]):
    """A tiny list: GET /lists/4711 fields, member lookup by filter, upsert, delete."""
    fields = {
        "email": {"name": "email", "format": "text"},
        "mobile": {"name": "mobile", "format": "number"},
        "sex": {"name": "sex", "format": "choice", "options": {"1": "Mand", "2": "Kvinde"}},
        "points": {"name": "points", "format": "number"},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if request.method == "GET" and path.endswith("/lists/4711"):
            return httpx.Response(200, json={"id": 4711, "fields": fields})
        if request.method == "GET" and path.endswith("/members"):
            wanted = request.url.params.get("filter[email][eq][]")
            found = [m for m in members.values() if m["fields"]["email"]["value"] == wanted]
            return httpx.Response(200, json={"members": found})
        if request.method == "POST":
            body = json.loads(request.content)
            if body["member"].get("email") == "bad@x.dk":
                return httpx.Response(400, json={"error": "Invalid email"})
            return httpx.Response(200, json={"type": "create", "member_id": "new-1"})
        return httpx.Response(204)

    return handler


def test_write_members_converts_canonical_values_and_answers_one_ack_each():
    from resources.target import MemberChange, WritePolicy

    unsubscribed = {
        **_np_bc_member(1),
        "status": {"status": "unsubscribed", "email": "active"},
        "unsubscribed_at": "2025-01-05 00:00:00",
    }
    seen: list[httpx.Request] = []
    client = make_client(_list_handler({"m1": unsubscribed}, seen))
    policy = WritePolicy(
        match_on="email",
        import_type="create_and_update",
        reimport_unsubscribed=True,
        flags=UpsertFlags(),
    )
    old = datetime(2025, 1, 1, tzinfo=UTC)
    changes = [
        MemberChange(
            "a@x.dk",
            "create",
            {"email": "a@x.dk", "mobile": "+4512345678", "sex": "Kvinde", "points": 12.0},
        ),
        MemberChange("m1@x.dk", "update", {"email": "m1@x.dk"}, modified=old),
        MemberChange("bad@x.dk", "create", {"email": "bad@x.dk", "sex": "Female"}),
        MemberChange("gone@x.dk", "remove", member_id="g7"),
    ]
    acks = {a.match_key: a for a in client.write_members(changes, policy)}
    assert {k: a.outcome for k, a in acks.items()} == {
        "a@x.dk": "created",
        "m1@x.dk": "unsubscribed",  # read right before the update: the rule keeps it off
        "bad@x.dk": "refused",
        "gone@x.dk": "removed",
    }
    assert acks["m1@x.dk"].checked and acks["m1@x.dk"].remote.status == "unsubscribed"
    assert acks["bad@x.dk"].reason == "Invalid email"
    upserts = [json.loads(r.content)["member"] for r in seen if r.method == "POST"]
    assert {"email": "a@x.dk", "mobile": "4512345678", "sex": "2", "points": "12"} in upserts
    assert not any(u.get("email") == "m1@x.dk" for u in upserts)
    assert client.label == "heyloyalty list 4711"
    assert [r.url.path for r in seen if r.method == "DELETE"] == [
        "/heyloyalty/loyalty/v1/lists/4711/members/g7"
    ]
