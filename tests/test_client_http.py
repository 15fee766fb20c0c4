"""VendorHttp: error classification, retries with Retry-After, redaction (STYLE 4, 8)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest

from resources.base import UncertainOutcome, VendorError
from resources.http import (
    VendorHttp,
    date_windows,
    parse_retry_after,
    redact_query_secrets,
    vendor_message,
)
from tests.scripted import scripted

SECRET = "s3cr3t-apikey-value"


def make_http(handler, waits: list[float], **kwargs) -> VendorHttp:
    return VendorHttp(
        vendor="acme",
        transport=httpx.MockTransport(handler),
        sleep=waits.append,
        secrets=[SECRET],
        **kwargs,
    )


def test_429_honours_retry_after_seconds_then_succeeds():
    handler, seen = scripted(
        httpx.Response(429, headers={"Retry-After": "2"}, json={"message": "slow down"}),
        httpx.Response(200, json={"ok": True}),
    )
    waits: list[float] = []
    http = make_http(handler, waits)
    assert http.get_json("http://api.test/x", endpoint="x") == {"ok": True}
    assert waits == [2.0]
    assert http.calls.by_endpoint() == {"x": 2}


def test_retry_after_http_date_and_cap():
    later = datetime.now(UTC) + timedelta(seconds=30)
    assert 25 <= parse_retry_after(format_datetime(later, usegmt=True)) <= 30
    handler, _ = scripted(
        httpx.Response(429, headers={"Retry-After": "3600"}), httpx.Response(200, json={})
    )
    waits: list[float] = []
    make_http(handler, waits).get_json("http://api.test/x", endpoint="x")
    assert waits == [60.0]


def test_503_retries_with_backoff_then_succeeds():
    handler, seen = scripted(
        httpx.Response(503), httpx.Response(503), httpx.Response(200, json=[1])
    )
    waits: list[float] = []
    assert make_http(handler, waits).get_json("http://api.test/x", endpoint="x") == [1]
    assert waits == [0.5, 1.0]
    assert len(seen) == 3


def test_gives_up_after_max_tries_with_vendor_message():
    handler, seen = scripted(httpx.Response(500, json={"errors": [{"detail": "boom"}]}))
    waits: list[float] = []
    with pytest.raises(VendorError) as info:
        make_http(handler, waits, max_tries=5).get_json("http://api.test/x", endpoint="x")
    assert info.value.status == 500 and info.value.message == "boom"
    assert len(seen) == 5 and len(waits) == 4


def test_400_fails_at_once_with_problem_details():
    body = {
        "title": "One or more validation errors occurred.",
        "status": 400,
        "errors": {"fromDate": ["Range must not exceed 366 days"]},
    }
    handler, seen = scripted(httpx.Response(400, json=body))
    waits: list[float] = []
    with pytest.raises(VendorError) as info:
        make_http(handler, waits).get_json("http://api.test/x", endpoint="x")
    assert len(seen) == 1 and waits == []
    assert "Range must not exceed 366 days" in info.value.message
    assert "validation errors" in str(info.value)
    assert info.value.body == body


def test_transport_errors_are_retried_then_reported_as_status_0():
    handler, seen = scripted(httpx.ConnectError("refused"))
    waits: list[float] = []
    with pytest.raises(VendorError) as info:
        make_http(handler, waits, max_tries=3).get_json("http://api.test/x", endpoint="x")
    assert info.value.status == 0 and len(seen) == 3


def test_timeout_then_success():
    handler, _ = scripted(httpx.ReadTimeout("slow"), httpx.Response(200, json={}))
    waits: list[float] = []
    assert make_http(handler, waits).get_json("http://api.test/x", endpoint="x") == {}
    assert waits == [0.5]


def test_throttle_hook_overrides_retry_after():
    handler, _ = scripted(
        httpx.Response(429, headers={"Retry-After": "9"}), httpx.Response(200, json={})
    )
    waits: list[float] = []
    http = make_http(handler, waits, throttle_wait=lambda response: 0.25)
    http.get_json("http://api.test/x", endpoint="x")
    assert waits == [0.25]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"fault": {"faultstring": "Invalid ApiKey"}}, "Invalid ApiKey"),
        ({"errors": [{"code": "X", "detail": "Market not allowed"}]}, "Market not allowed"),
        ({"error": "Multiple members match"}, "Multiple members match"),
        ({"message": "Unauthorized", "code": 401}, "Unauthorized"),
        ({"error": "invalid_client"}, "invalid_client"),
        ({"title": "Bad", "detail": "pageSize too big"}, "Bad; pageSize too big"),
    ],
)
def test_vendor_message_dialects(body, expected):
    assert vendor_message(body) == expected


def test_secrets_are_redacted_from_errors_and_logs(caplog):
    caplog.set_level(logging.DEBUG)
    echoed = {"message": f"bad key {SECRET} in https://api.test/x?apikey={SECRET}"}
    handler, _ = scripted(
        httpx.Response(429, headers={"Retry-After": "0"}), httpx.Response(401, json=echoed)
    )
    waits: list[float] = []
    http = make_http(handler, waits)
    with pytest.raises(VendorError) as info:
        http.get_json(
            f"http://api.test/x?apikey={SECRET}",
            endpoint="x",
            headers={"Authorization": f"Bearer {SECRET}"},
        )
    assert SECRET not in str(info.value) and SECRET not in str(info.value.body)
    assert SECRET not in caplog.text
    assert "acme GET /x: 429" in caplog.text  # the retry was logged, by path only


def test_redact_query_secrets():
    assert redact_query_secrets("GET /a?page=1&apikey=abc&x=2") == "GET /a?page=1&apikey=***&x=2"


def test_date_windows_split_two_years_into_one_year_windows():
    windows = list(date_windows(date(2023, 1, 1), date(2024, 12, 31)))
    assert windows == [
        (date(2023, 1, 1), date(2024, 1, 1)),
        (date(2024, 1, 2), date(2024, 12, 31)),
    ]
    assert all((end - start).days + 1 <= 366 for start, end in windows)
    assert list(date_windows(date(2024, 3, 1), date(2024, 3, 1))) == [
        (date(2024, 3, 1), date(2024, 3, 1))
    ]


def test_calls_are_counted_across_threads():
    http = make_http(lambda request: httpx.Response(200, json={}), [])
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda _: http.get_json("http://api.test/x", endpoint="x"), range(40)))
    assert http.calls.total == 40


# --- idempotency: what may be sent again after a failure (issue 6 items 4, 5) ----------------

CUT_OFF = httpx.Response(200, content=b'{"status": "success", "impo')
NOT_JSON = httpx.Response(200, content=b"<html>gateway</html>")


@pytest.mark.parametrize(
    "lost",
    [
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.ReadError("Connection reset by peer"),
        httpx.Response(500),
        httpx.Response(502),
        httpx.Response(504),
        CUT_OFF,
        NOT_JSON,
    ],
    ids=["read-timeout", "disconnect", "reset", "500", "502", "504", "cut-off-200", "html-200"],
)
def test_a_post_whose_answer_is_lost_is_uncertain_and_never_resent(lost):
    handler, seen = scripted(lost, httpx.Response(200, json={"status": "success"}))
    waits: list[float] = []
    http = make_http(handler, waits)
    with pytest.raises(UncertainOutcome) as info:
        http.request_json("POST", "http://api.test/import", endpoint="import")
    assert len(seen) == 1 and waits == []
    assert isinstance(info.value, VendorError) and not 400 <= info.value.status < 500
    assert "outcome unknown" in str(info.value) and "not sent again" in str(info.value)


@pytest.mark.parametrize(
    "refused_before",
    [
        httpx.ConnectError("[Errno 111] Connection refused"),
        httpx.ConnectTimeout("timed out"),
        httpx.PoolTimeout("no connection"),
        httpx.WriteError("Broken pipe"),
        httpx.WriteTimeout("timed out"),
        httpx.Response(429, headers={"Retry-After": "1"}),
        httpx.Response(503),
    ],
    ids=["connect", "connect-timeout", "pool", "write-error", "write-timeout", "429", "503"],
)
def test_a_post_that_never_reached_the_server_is_retried(refused_before):
    handler, seen = scripted(refused_before, httpx.Response(200, json={"status": "success"}))
    waits: list[float] = []
    http = make_http(handler, waits)
    assert http.request_json("POST", "http://api.test/import", endpoint="import") == {
        "status": "success"
    }
    assert len(seen) == 2 and len(waits) == 1
    assert http.calls.retries == 1
    assert http.calls.throttled == (1 if "429" in repr(refused_before) else 0)


def test_an_idempotent_post_with_a_cut_off_answer_is_retried():
    handler, seen = scripted(CUT_OFF, httpx.ReadTimeout("slow"), httpx.Response(200, json={"a": 1}))
    waits: list[float] = []
    http = make_http(handler, waits)
    body = http.request_json("POST", "http://api.test/upsert", endpoint="upsert", idempotent=True)
    assert body == {"a": 1} and len(seen) == 3


def test_an_unreadable_answer_after_every_try_is_transient_not_a_refusal():
    handler, seen = scripted(CUT_OFF)
    waits: list[float] = []
    with pytest.raises(VendorError) as info:
        make_http(handler, waits, max_tries=3).request_json(
            "POST", "http://api.test/upsert", endpoint="upsert", idempotent=True
        )
    assert not isinstance(info.value, UncertainOutcome)
    assert info.value.status == 0 and len(seen) == 3
    assert "unreadable 200 answer" in info.value.message and "after 3 tries" in info.value.message


def test_get_json_retries_a_malformed_page():
    handler, seen = scripted(NOT_JSON, httpx.Response(200, json={"items": []}))
    waits: list[float] = []
    assert make_http(handler, waits).get_json("http://api.test/x", endpoint="x") == {"items": []}
    assert len(seen) == 2


def test_validate_refusing_the_shape_counts_as_unreadable():
    def needs_id(body):
        if "id" not in body:
            raise ValueError("no id")
        return body["id"]

    handler, seen = scripted(httpx.Response(200, json={}), httpx.Response(200, json={"id": 7}))
    waits: list[float] = []
    http = make_http(handler, waits)
    assert http.request_json("GET", "http://api.test/x", endpoint="x", validate=needs_id) == 7
    assert len(seen) == 2


def test_transport_failure_names_the_host_and_the_reason_not_a_status():
    handler, _ = scripted(httpx.ConnectError("[Errno 111] Connection refused"))
    waits: list[float] = []
    with pytest.raises(VendorError) as info:
        make_http(handler, waits, max_tries=3).get_json(
            f"http://api.test:8080/x?apikey={SECRET}", endpoint="x"
        )
    assert (
        str(info.value) == "acme: could not reach api.test:8080: connection refused after 3 tries"
    )
    assert "answered" not in str(info.value)
    handler, _ = scripted(httpx.ReadTimeout("timed out"))
    with pytest.raises(VendorError, match="could not reach api.test: read timeout after 2 tries"):
        make_http(handler, waits, max_tries=2).get_json("http://api.test/x", endpoint="x")


def test_each_retry_and_throttle_is_logged_and_counted(caplog):
    caplog.set_level(logging.INFO, logger="resources.http")
    handler, _ = scripted(
        httpx.Response(429, headers={"Retry-After": "1"}, json={"message": "Too Many Requests"}),
        httpx.Response(502),
        httpx.Response(200, json={"type": "create", "member_id": "m1"}),
    )
    waits: list[float] = []
    http = make_http(handler, waits)
    http.request_json(
        "POST",
        "http://api.test/lists/4711/members/upsert?filter[email][eq][]=jens@example.dk",
        endpoint="members/upsert",
        idempotent=True,
    )
    lines = [r.getMessage() for r in caplog.records if r.name == "resources.http"]
    assert lines == [
        "acme POST /lists/4711/members/upsert: 429 Too Many Requests, waiting 1.0 s (try 2 of 5)",
        "acme POST /lists/4711/members/upsert: 502 Bad Gateway, waiting 1.0 s (try 3 of 5)",
    ]
    # a throttle is routine (INFO, in the run's log); a fault is a WARNING
    assert [r.levelno for r in caplog.records] == [logging.INFO, logging.WARNING]
    assert "jens@example.dk" not in caplog.text  # queries (filters, keys) never reach the log
    assert (http.calls.retries, http.calls.throttled, http.calls.total) == (2, 1, 3)


def test_the_timeout_comes_from_the_environment_and_a_bad_value_names_the_variable(monkeypatch):
    from resources.http import TIMEOUT_ENV, VendorHttp, default_timeout

    monkeypatch.delenv(TIMEOUT_ENV, raising=False)
    assert default_timeout() == 30.0
    monkeypatch.setenv(TIMEOUT_ENV, "2.5")
    assert VendorHttp(vendor="acme")._client.timeout.read == 2.5
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match="MEMBERFLOW_HTTP_TIMEOUT='soon'"):
        default_timeout()


def test_a_member_email_in_a_url_path_is_masked_in_retry_logs():
    from resources.http import _path

    shown = _path("https://api.example.com/members/jo%2Bx%40ex.com/groups/4?token=s")
    assert shown == "/members/j***@***/groups/4"
    assert _path("https://api.example.com/v1/passes/userid/17") == "/v1/passes/userid/17"
