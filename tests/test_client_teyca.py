"""TeycaClient against the Teyca emulator over real sockets: the path token (TY-A1), paging and
casts (TY-A3, TY-A7), the shared rate budget (TY-A9) and 429s, re-reads and tombstones (TY-A5),
the scan warning (TY-A4), webhook registration, and the webhook capability of the section."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from datetime import UTC, date, datetime, timedelta
from itertools import count
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from resources.base import VendorError
from resources.rate_budget import BudgetExhausted
from resources.secret_store import SecretStore
from resources.teyca import (
    DELETED,
    TeycaClient,
    TeycaSource,
    parse_moscow,
    token_secret_name,
)
from resources.teyca_webhook import TeycaWebhook
from resources.webhooks import WebhookRefused
from sandbox.credentials import SANDBOX_ENV
from sandbox.ratelimit import MultiWindowLimiter
from sandbox.server import SandboxServer
from sandbox.teyca import RATE_WINDOWS

KEY = SANDBOX_ENV["TEYCA_API_KEY"]
SECRET = SANDBOX_ENV["TEYCA_WEBHOOK_SECRET"]
_names = count()


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer(seed=5, customers=100, days=60, rate_limits=True) as server:
        yield server


@pytest.fixture(scope="module")
def teyca(sandbox):
    return sandbox.emulator("teyca")


@pytest.fixture
def make(sandbox, tmp_path):
    """Build clients of one fresh integration (its own token, secrets and budget dirs)."""
    name = f"test_{next(_names)}"
    made: list[TeycaClient] = []

    def build(**kwargs) -> TeycaClient:
        options = {
            "base_url": f"{sandbox.url}/teyca",
            "api_key": KEY,
            "integration": name,
            "secrets": SecretStore(tmp_path / "secrets"),
            "budget_dir": tmp_path / "budget",
            **kwargs,
        }
        client = TeycaClient(**options)
        made.append(client)
        return client

    build.name = name  # type: ignore[attr-defined]
    yield build
    for client in made:
        client.close()


def counts(teyca) -> dict[str, int]:
    return dict(teyca.request_counts)


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) != before.get(k, 0)
    }


# -- token (TY-A1) ---------------------------------------------------------------------------------
def test_the_token_is_created_once_then_reused_from_the_secret_store(make, teyca, tmp_path):
    before = counts(teyca)
    first = make()
    first.check_connection()
    assert delta(before, counts(teyca)) == {
        "authorization GET": 1,
        "authorization POST": 1,
        "passes GET": 1,
    }
    identifier = f"memberflow-{make.name}"
    (token,) = [t.token for t in teyca.tokens.values() if t.identifier == identifier]
    secret_file = tmp_path / "secrets" / token_secret_name(first._base, make.name)
    assert secret_file.read_text() == token
    assert oct(secret_file.stat().st_mode & 0o777) == "0o600"

    before = counts(teyca)
    make().check_connection()  # a second client (a later run): no token calls at all
    assert delta(before, counts(teyca)) == {"passes GET": 1}

    # Another installation (or a lost secrets dir): Teyca lists the token, this one has none.
    # Using it from here would get it blocked for both (TY-A2): refused, naming the way out.
    secret_file.unlink()
    before = counts(teyca)
    with pytest.raises(VendorError) as taken:
        make().check_connection()
    assert taken.value.status == 409 and identifier in taken.value.message
    assert "DELETE /v1/authorization" in taken.value.message and token not in str(taken.value)
    assert delta(before, counts(teyca)) == {"authorization GET": 1}
    assert not secret_file.exists()


def test_a_wrong_main_key_names_the_host_and_the_key(make, sandbox):
    client = make(api_key="not-the-key")
    with pytest.raises(VendorError) as refused:
        client.check_connection()
    error = refused.value
    assert error.status == 401 and "Invalid API key" in error.message
    assert f"127.0.0.1:{sandbox.url.rsplit(':', 1)[1]}" in error.message
    assert "main API key" in error.message and "not-the-key" not in str(error)


def test_a_token_deleted_at_teyca_is_replaced_once(make, teyca, sandbox):
    client = make()
    client.check_connection()
    old = client.token()
    deleted = httpx.request(
        "DELETE",
        f"{sandbox.url}/teyca/v1/authorization",
        json={"identifier": client.identifier},
        headers={"Authorization": KEY},
    )
    assert deleted.status_code == 200
    later = make()  # a later run: the stored token is stale now
    later.check_connection()
    assert later.token() != old and later.token() in teyca.tokens
    assert make().token() == later.token()  # and the new one is stored


def test_a_wrong_main_key_with_a_stored_token_still_names_the_key(make):
    make().check_connection()
    client = make(api_key="not-the-key")
    with pytest.raises(VendorError) as refused:
        client.check_connection()
    assert refused.value.status == 401 and "main API key" in refused.value.message


def test_a_token_blocked_for_a_second_instance_passes_the_reason_through(make, teyca, sandbox):
    client = make()
    client.check_connection()
    teyca.strict_instances = True
    try:
        other = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"))
        other.get(
            f"{sandbox.url}/teyca/v1/{client.token()}/passes",
            params={"limit": 1},
            headers={"Authorization": KEY},
        )
        other.close()
        with pytest.raises(VendorError) as refused:
            client.check_connection()
    finally:
        teyca.strict_instances = False
    error = refused.value
    assert error.status == 403
    assert "Token blocked: used from several instances" in error.message
    assert "127.0.0.1" in error.message and client.token() not in str(error)


# -- paging and casts (TY-A3, TY-A7) ---------------------------------------------------------------
def test_a_full_scan_pages_by_offset_until_meta_size(make, teyca):
    client = make(page_size=7)
    client.check_connection()
    before = counts(teyca)
    pages = list(client.iter_changed("passes", "2026-01-01T00:00:00+00:00"))  # cursor ignored
    ids = [p["user_id"] for page in pages for p in page]
    assert sorted(ids) == sorted(teyca.passes) and len(ids) == len(set(ids))
    assert [len(page) for page in pages[:-1]] == [7] * (len(pages) - 1)
    assert len(pages) == -(-len(teyca.passes) // 7)
    assert delta(before, counts(teyca)) == {"passes GET": len(pages)}


def test_numbers_sent_as_text_are_cast(make, teyca):
    passes = [p for page in make().iter_changed("passes", None) for p in page]
    raw = {p["user_id"]: p for p in teyca.passes.values()}
    for card in passes:
        assert isinstance(card["user_id"], int)
        assert isinstance(card["bonus"], int | float) and card["bonus"] == float(
            raw[card["user_id"]]["bonus"]
        )
        assert isinstance(card["summ_all"], int | float) and isinstance(card["visits_all"], int)
        assert isinstance(card["discount"], str)  # "10%": the mapping strips the percent
    assert any(isinstance(raw[c["user_id"]]["bonus"], str) for c in passes)


def test_record_meta_reads_moscow_created_at_as_utc(make):
    client = make()
    meta = client.record_meta("passes", {"user_id": 17145, "created_at": "2026-03-01 10:00:00"})
    assert meta.record_id == "17145" and meta.business_date is None
    assert meta.modified == datetime(2026, 3, 1, 7, 0, tzinfo=UTC)
    assert parse_moscow("2026-07-01 00:30:00") == datetime(2026, 6, 30, 21, 30, tzinfo=UTC)
    # created_at only stands in for a modified time: another shape costs nothing, now stands in
    odd = client.record_meta("passes", {"user_id": 1, "created_at": "01.03.2026"})
    assert odd.record_id == "1" and datetime.now(UTC) - odd.modified < timedelta(minutes=1)
    with pytest.raises(ValueError, match="user_id"):
        client.record_meta("passes", {"created_at": "2026-03-01 10:00:00"})


# -- operations (TY-A11) ---------------------------------------------------------------------------
def test_operations_by_moscow_date_range_page_and_cast(make, teyca):
    client = make(page_size=20)
    stamps = sorted(op["created_at"] for op in teyca.operations)
    start = date.fromisoformat(stamps[len(stamps) // 3][:10])
    end = date.fromisoformat(stamps[2 * len(stamps) // 3][:10])
    wanted = [
        op["id"]
        for op in teyca.operations
        if start <= date.fromisoformat(op["created_at"][:10]) <= end
    ]
    pages = list(client.iter_range("operations", start, end))
    got = [op for page in pages for op in page]
    # `order: desc` is the one documented value: the set and the paging are what count
    assert sorted(op["id"] for op in got) == sorted(wanted)
    assert len(pages) == -(-len(wanted) // 20)
    assert all(isinstance(op["summ"], int | float) and isinstance(op["user_id"], int) for op in got)
    meta = client.record_meta("operations", got[0])
    assert meta.record_id == str(got[0]["id"])
    assert meta.business_date == date.fromisoformat(got[0]["created_at"][:10])
    assert meta.modified == parse_moscow(got[0]["created_at"])


def test_operations_since_a_cursor_and_the_probe(make, teyca):
    client = make()
    newest = max(teyca.operations, key=lambda op: op["created_at"])
    moment = parse_moscow(newest["created_at"])
    got = [op for page in client.iter_changed("operations", moment.isoformat()) for op in page]
    assert newest["id"] in [op["id"] for op in got]
    assert all(op["created_at"] >= newest["created_at"] for op in got)
    # the cursor is the newest operation landed: the probe asks for any after it
    assert not client.has_changes("operations", moment.isoformat())
    earlier = (moment - timedelta(seconds=1)).isoformat()
    assert client.has_changes("operations", earlier)
    assert client.cursor_after("operations", "x", moment, datetime.now(UTC)) == moment.isoformat()
    assert client.cursor_after("operations", "x", None, datetime.now(UTC)) == "x"
    with pytest.raises(ValueError):
        list(client.fetch_records("operations", ["1"]))


# -- change detection (TY-A4) ----------------------------------------------------------------------
def test_a_scan_is_due_when_the_cursor_is_older_than_the_scan_interval(make):
    started = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    nightly = make(webhooks_enabled=True, full_scan_hours=24)
    assert nightly.cursor_after("passes", None, None, started) == started.isoformat()
    now = datetime.now(UTC)
    assert nightly.has_changes("passes", None)
    assert not nightly.has_changes("passes", (now - timedelta(hours=2)).isoformat())
    assert nightly.has_changes("passes", (now - timedelta(hours=23)).isoformat())
    polled = make(webhooks_enabled=False, scan_interval_minutes=5)
    assert polled.has_changes("passes", (now - timedelta(minutes=5)).isoformat())
    assert not polled.has_changes("passes", (now - timedelta(minutes=1)).isoformat())
    assert polled.has_changes("passes", "not a time")


def test_run_warnings_name_the_calls_per_day_past_the_cap(make, teyca):
    size = len(teyca.passes)
    busy = make(page_size=1, scan_interval_minutes=1)
    (warning,) = busy.run_warnings()
    assert f"{size} passes" in warning and f"{size * 1440} calls/day" in warning
    assert "5000/day" in warning and "every 1 min" in warning
    calm = make(page_size=500, scan_interval_minutes=5)
    list(calm.iter_changed("passes", None))
    before = counts(teyca)
    assert calm.run_warnings() == []  # 1 page * 288 scans; no probe: the scan saw the size
    assert delta(before, counts(teyca)) == {}
    assert make(page_size=1, webhooks_enabled=True, scan_interval_minutes=1).run_warnings() == []
    (hourly,) = make(page_size=1, webhooks_enabled=True, full_scan_hours=0.1).run_warnings()
    assert f"{size * 240} calls/day" in hourly and "every 0.1 h (webhooks on)" in hourly


# -- rate budget (TY-A9) ---------------------------------------------------------------------------
def test_the_budget_waits_before_sending_so_a_burst_meets_no_429(make, teyca):
    teyca.limiter = MultiWindowLimiter(RATE_WINDOWS)  # the real windows on the emulator
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    client = make(sleep=sleep)
    client.check_connection()
    ids = list(teyca.passes)[:11]
    records = [r for page in client.fetch_records("passes", ids) for r in page]
    assert [r["user_id"] for r in records] == ids
    assert client.calls.throttled == 0 and client.calls.retries == 0
    assert sum(waits) >= 1.0  # 12 calls at 5/s: the limiter slept at least one window
    assert client.budget_spent == 12
    assert client.rate_budget().used == 12 and client.rate_budget().limit == 5000


def test_a_429_from_teyca_is_still_honoured_and_its_log_line_hides_the_token(make, teyca, caplog):
    caplog.set_level(logging.INFO, logger="resources.http")
    client = make(sleep=time.sleep)
    client.check_connection()
    teyca.limiter = MultiWindowLimiter([(1, 1.0)])  # stricter than the client knows
    try:
        ids = list(teyca.passes)[:2]
        records = [r for page in client.fetch_records("passes", ids) for r in page]
    finally:
        teyca.limiter = MultiWindowLimiter(RATE_WINDOWS)
    assert len(records) == 2 and not any(r.get(DELETED) for r in records)
    assert client.calls.throttled >= 1
    assert "429" in caplog.text and "/v1/***/passes/userid/" in caplog.text
    assert client.token() not in caplog.text and KEY not in caplog.text


def test_a_spent_day_is_refused_before_anything_is_sent(make, teyca):
    client = make()
    client.check_connection()
    now = time.time()
    path = client._budget().path
    with sqlite3.connect(path) as conn:  # other runs spent the day (hour and minute are free)
        conn.executemany(  # the shared file is pyrate-limiter's table: stamps in milliseconds
            "INSERT INTO calls (name, item_timestamp) VALUES ('call', ?)",
            [(int((now - 80000 + i * 15.0) * 1000),) for i in range(4999)],
        )
    assert client.rate_budget().left == 0
    before = counts(teyca)
    with pytest.raises(BudgetExhausted) as refused:
        list(client.iter_changed("passes", None))
    assert delta(before, counts(teyca)) == {}
    assert refused.value.window.name == "day"
    assert "5000 calls per day" in str(refused.value)
    assert refused.value.frees_at > datetime.now(UTC)


# -- re-reads (TY-A5) ------------------------------------------------------------------------------
def test_fetch_records_rereads_and_a_gone_card_is_a_tombstone(make, teyca):
    client = make()
    card = teyca.register_card({"template": "Макет1", "first_name": "Анна", "bonus": "15"})
    gone = teyca.register_card({"template": "Макет1"})
    teyca.remove_card(gone["user_id"])
    (page,) = client.fetch_records("passes", [str(card["user_id"]), str(gone["user_id"])])
    assert page[0]["user_id"] == card["user_id"] and page[0]["bonus"] == 15
    assert page[1]["user_id"] == gone["user_id"] and page[1][DELETED] is True
    meta = client.record_meta("passes", page[1])
    assert meta.record_id == str(gone["user_id"])
    assert datetime.now(UTC) - meta.modified < timedelta(minutes=1)
    with pytest.raises(VendorError) as bad:  # not an id: a refusal, not a tombstone
        list(client.fetch_records("passes", ["abc"]))
    assert bad.value.status == 400


# -- webhooks (TY-A4, TY-A5) -----------------------------------------------------------------------
def test_ensure_webhooks_registers_each_kind_once(make, teyca):
    client = make()
    url = "http://127.0.0.1:9/hooks/teyca"
    assert client.ensure_webhooks(url) == ["create", "update", "delete"]
    assert client.ensure_webhooks(url) == []
    mine = [h for h in teyca.hooks.values() if h["token"] == client.token()]
    assert sorted(h["type"] for h in mine) == ["CREATE", "DELETE", "UPDATE"]
    assert {h["url"] for h in mine} == {url}
    for hook_id in [h["id"] for h in mine]:
        del teyca.hooks[hook_id]


def _body(kind: str = "UPDATE", **card) -> bytes:
    return json.dumps({"type": kind, "pass": {"user_id": 17145, "bonus": "10", **card}}).encode()


def test_a_webhook_is_verified_by_its_authorization_secret():
    hook = TeycaWebhook(SECRET)
    hook.verify({"authorization": SECRET}, _body())
    hook.verify({"Authorization": SECRET}, _body())  # whatever case the receiver passes
    for headers in ({}, {"authorization": "wrong"}, {"authorization": SECRET + " "}):
        with pytest.raises(WebhookRefused) as refused:
            hook.verify(headers, _body())
        assert refused.value.status == 401 and SECRET not in refused.value.message


def test_a_webhook_body_becomes_one_event():
    (event,) = TeycaWebhook(SECRET).parse(_body("DELETE", first_name="Анна"))
    assert (event.kind, event.entity, event.record_id) == ("delete", "passes", "17145")
    assert event.payload["first_name"] == "Анна"


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        json.dumps({"type": "MOVE", "pass": {"user_id": 1}}).encode(),
        json.dumps({"type": "UPDATE"}).encode(),
        json.dumps({"type": "UPDATE", "pass": {"user_id": None}}).encode(),
        json.dumps({"type": "UPDATE", "pass": {"user_id": True}}).encode(),
        json.dumps({"type": 1, "pass": {"user_id": 1}}).encode(),
        json.dumps({"type": "UPDATE", "pass": {"user_id": "../17145"}}).encode(),  # a path
        b"\xff\xfe",
    ],
)
def test_a_webhook_body_that_is_not_a_card_change_is_refused(body):
    with pytest.raises(WebhookRefused) as refused:
        TeycaWebhook(SECRET).parse(body)
    assert refused.value.status == 400


# -- the integration-file section ------------------------------------------------------------------
def test_the_section_offers_env_vars_resource_and_webhook(monkeypatch):
    section = TeycaSource.model_validate(
        {
            "kind": "teyca",
            "base_url": "http://127.0.0.1:1/teyca",
            "api_key_env": "TEYCA_API_KEY",
            "webhooks": {"enabled": True, "secret_env": "TEYCA_WEBHOOK_SECRET"},
            "consent_field": "key3",
        }
    )
    assert section.env_vars() == ["TEYCA_API_KEY", "TEYCA_WEBHOOK_SECRET"]
    assert section.full_scan_hours == 24 and section.page_size == 500
    assert section.mapping_overrides() == {"passes": {"consent_mailing": "key3"}}
    resource = section.resource("demo_teyca", interval_minutes=10)
    assert resource.integration == "demo_teyca" and resource.scan_interval_minutes == 10
    monkeypatch.setenv("TEYCA_WEBHOOK_SECRET", SECRET)
    hook = section.webhook()
    assert isinstance(hook, TeycaWebhook)
    hook.verify({"authorization": SECRET}, b"{}")
    off = TeycaSource.model_validate({"kind": "teyca", "api_key_env": "TEYCA_API_KEY"})
    assert off.webhook() is None and off.env_vars() == ["TEYCA_API_KEY"]
    assert off.base_url == "https://api.teyca.ru" and off.mapping_overrides() == {}
    with pytest.raises(ValidationError):
        TeycaSource.model_validate(
            {"kind": "teyca", "api_key_env": "TEYCA_API_KEY", "webhooks": {"enabled": True}}
        )
    with pytest.raises(ValidationError):
        TeycaSource.model_validate({"kind": "teyca", "api_key_env": "raw-key-pasted"})


def _mock_client(answer, tmp_path) -> TeycaClient:
    return TeycaClient(
        base_url="https://teyca.test",
        api_key="main-key",
        integration="mock",
        secrets=SecretStore(tmp_path / "secrets"),
        budget_dir=tmp_path / "budget",
        transport=httpx.MockTransport(answer),
        sleep=lambda _: None,
    )


def test_a_server_that_caps_limit_below_ours_still_gives_a_whole_scan(tmp_path):
    """The maximum `limit` is undocumented: pages shorter than asked move the offset by what
    came, and a scan whose rows don't add up to meta.size is not complete (no deletions)."""
    passes = [{"user_id": n, "phone": f"7916{n:07d}", "created_at": None} for n in range(1, 251)]
    calls: list[dict[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/authorization"):
            body: Any = [] if request.method == "GET" else {"identifier": "x", "token": "t1"}
            return httpx.Response(200, json=body)
        params = dict(request.url.params)
        calls.append(params)
        offset, limit = int(params["offset"]), min(int(params["limit"]), 100)
        page = passes[offset : offset + limit]
        return httpx.Response(200, json={"passes": page, "meta": {"size": str(len(passes))}})

    client = _mock_client(answer, tmp_path)
    scanned = [p for page in client.iter_changed("passes", None) for p in page]
    assert [p["user_id"] for p in scanned] == list(range(1, 251))
    assert [c["offset"] for c in calls] == ["0", "100", "200"]
    assert client.scan_complete("passes")
    assert scanned[0]["phone"] == "+79160000001"  # TY-A7: canonical E.164
    meta = client.record_meta("passes", scanned[0])  # no created_at: the fetch time stands in
    assert meta.record_id == "1" and meta.modified.tzinfo is not None

    del passes[120]  # a card deleted mid-scan: the total moves, so the scan is not whole
    calls.clear()
    sizes = iter([250, 249, 249])
    real = answer

    def shifting(request: httpx.Request) -> httpx.Response:
        response = real(request)
        if not request.url.path.endswith("/authorization"):
            body = response.json()
            body["meta"]["size"] = next(sizes)
            return httpx.Response(200, json=body)
        return response

    client = _mock_client(shifting, tmp_path)
    list(client.iter_changed("passes", None))
    assert not client.scan_complete("passes")
