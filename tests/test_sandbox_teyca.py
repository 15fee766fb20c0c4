"""Teyca emulator over real sockets: main key + path token, paging, search, partial updates,
the one-instance rule, the four rate windows, webhooks with retries, and the Russian data."""

from __future__ import annotations

import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

from sandbox.credentials import SANDBOX_ENV
from sandbox.ratelimit import MultiWindowLimiter
from sandbox.server import SandboxServer
from sandbox.teyca import RATE_WINDOWS

KEY = SANDBOX_ENV["TEYCA_API_KEY"]
SECRET = SANDBOX_ENV["TEYCA_WEBHOOK_SECRET"]
AUTH = {"Authorization": KEY}  # TY-A1: raw key, no Bearer


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer(seed=5, customers=100, days=60, rate_limits=False) as server:
        yield server


@pytest.fixture(scope="module")
def teyca(sandbox):
    return sandbox.emulator("teyca")


@pytest.fixture(scope="module")
def http(sandbox):
    with httpx.Client(base_url=f"{sandbox.url}/teyca", headers=AUTH, timeout=10) as client:
        yield client


_tokens = iter(range(1_000_000))


@pytest.fixture
def token(http):
    """A fresh path token per test (TY-A1), so instance and rate state never leak across."""
    answer = http.post("/v1/authorization", json={"identifier": f"memberflow-test-{next(_tokens)}"})
    assert answer.status_code == 200
    return answer.json()["token"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


# -- auth and tokens (TY-A1, TY-A10) ---------------------------------------------------------------
def test_main_key_and_token_are_both_required(sandbox, http, token):
    base = f"{sandbox.url}/teyca"
    missing = httpx.get(f"{base}/v1/{token}/passes")
    bearer = httpx.get(f"{base}/v1/{token}/passes", headers={"Authorization": f"Bearer {KEY}"})
    wrong = httpx.get(f"{base}/v1/{token}/passes", headers={"Authorization": "nope"})
    unknown = http.get("/v1/0123456789abcdef0123456789abcdef/passes")
    no_key_admin = httpx.get(f"{base}/v1/authorization")
    for answer in (missing, bearer, wrong, unknown, no_key_admin):
        assert answer.status_code == 401
        assert set(answer.json()) == {"message"}
    assert http.get(f"/v1/{token}/passes", params={"limit": 1}).json()["meta"]["limit"] == 1


def test_tokens_are_created_listed_and_deleted(http):
    created = http.post("/v1/authorization", json={"identifier": "memberflow-demo_teyca"})
    assert created.status_code == 200
    assert set(created.json()) == {"identifier", "token"}
    token = created.json()["token"]
    listed = {t["identifier"]: t for t in http.get("/v1/authorization").json()}
    assert listed["memberflow-demo_teyca"]["token"] == token
    stamp = listed["memberflow-demo_teyca"]["created_at"]
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}", stamp)
    again = http.post("/v1/authorization", json={"identifier": "memberflow-demo_teyca"})
    assert again.status_code == 400
    assert http.post("/v1/authorization", json={}).status_code == 400
    gone = http.request("DELETE", "/v1/authorization", json={"identifier": "memberflow-demo_teyca"})
    assert gone.status_code == 200
    assert http.get(f"/v1/{token}/passes").status_code == 401
    missing = http.request("DELETE", "/v1/authorization", json={"identifier": "never-made"})
    assert missing.status_code == 404 and "message" in missing.json()


# -- passes: paging, search, writes (§2.1, TY-A3) --------------------------------------------------
def test_paging_walks_every_pass_once_with_meta(http, token, teyca):
    seen: list[int] = []
    offset = 0
    while True:
        page = http.get(f"/v1/{token}/passes", params={"limit": 7, "offset": offset}).json()
        assert page["meta"]["limit"] == 7 and page["meta"]["offset"] == offset
        seen += [p["user_id"] for p in page["passes"]]
        offset += 7
        if offset >= page["meta"]["size"]:
            break
    assert len(seen) == len(set(seen)) == page["meta"]["size"] == len(teyca.passes)
    default = http.get(f"/v1/{token}/passes").json()["meta"]
    assert default["limit"] == 25 and default["offset"] == 0


def test_limit_above_1000_and_bad_parameters_are_refused(http, token):
    over = http.get(f"/v1/{token}/passes", params={"limit": 1001})
    assert over.status_code == 400 and over.json() == {"message": "limit must be <= 1000"}
    assert http.get(f"/v1/{token}/passes", params={"limit": 1000}).status_code == 200
    assert http.get(f"/v1/{token}/passes", params={"offset": -1}).status_code == 400
    assert http.get(f"/v1/{token}/passes", params={"limit": "ten"}).status_code == 400
    assert http.get(f"/v1/{token}/passes", params={"page": 2}).status_code == 400


def test_search_by_phone_finds_every_card_of_that_phone(http, token, teyca):
    phones = Counter(p["phone"] for p in teyca.passes.values())
    shared = next(phone for phone, n in phones.items() if n > 1)
    found = http.get(f"/v1/{token}/passes", params={"search": f"phone={shared}"}).json()
    assert found["meta"]["size"] == phones[shared] >= 2
    assert {p["phone"] for p in found["passes"]} == {shared}
    template = found["passes"][0]["template"]
    both = http.get(
        f"/v1/{token}/passes", params={"search": f"phone={shared}, template={template}"}
    )
    assert all(p["template"] == template for p in both.json()["passes"])
    plus = http.get(f"/v1/{token}/passes", params={"search": f"phone=+{shared}"}).json()
    assert plus["meta"]["size"] == 0  # TY-A7: 11 digits, no +
    unknown = http.get(f"/v1/{token}/passes", params={"search": "colour=red"})
    assert unknown.status_code == 400


def test_put_is_partial_and_checked(http, token):
    card = http.post(
        f"/v1/{token}/passes",
        json={
            "template": "Основная карта",
            "first_name": "Иван",
            "last_name": "Петров",
            "phone": "79161234567",
            "email": "ivan@example.ru",
            "birthday": "01.03.1990",
            "gender": "м",
            "key1": "да",
        },
    ).json()
    user_id = card["user_id"]
    changed = http.put(
        f"/v1/{token}/passes/{user_id}", json={"email": "new@example.ru", "bonus": 300}
    )
    assert changed.status_code == 200
    after = http.get(f"/v1/{token}/passes/userid/{user_id}").json()
    assert after["email"] == "new@example.ru" and after["bonus"] == "300"
    assert (after["first_name"], after["phone"], after["birthday"], after["key1"]) == (
        "Иван",
        "79161234567",
        "01.03.1990",
        "да",
    )
    assert after["fio"] == "Петров Иван"
    for bad in ({"phone": "+79161234567"}, {"birthday": "1990-03-01"}, {"user_id": 1}, {"x": 1}):
        refused = http.put(f"/v1/{token}/passes/{user_id}", json=bad)
        assert refused.status_code == 400 and "message" in refused.json(), bad
    missing = http.put(f"/v1/{token}/passes/99", json={"email": "a@b.ru"})
    assert missing.status_code == 404


def test_delete_then_404(http, token):
    user_id = http.post(f"/v1/{token}/passes", json={"template": "Макет1"}).json()["user_id"]
    assert http.delete(f"/v1/{token}/passes/{user_id}").status_code == 200
    gone = http.get(f"/v1/{token}/passes/userid/{user_id}")
    assert gone.status_code == 404 and set(gone.json()) == {"message"}
    assert http.delete(f"/v1/{token}/passes/{user_id}").status_code == 404


def test_lookup_by_barcode_and_telegram_chat(http, token, teyca):
    card = next(iter(teyca.passes.values()))
    by_barcode = http.get(f"/v1/{token}/passes/barcode/{card['barcode']}").json()
    assert by_barcode["user_id"] == card["user_id"]
    chat_id, user_id = next(iter(teyca.telegram_chats.items()))
    assert http.get(f"/v1/{token}/passes/telegram_chat_id/{chat_id}").json()["user_id"] == user_id
    assert http.get(f"/v1/{token}/passes/barcode/0000").status_code == 404


def test_bonus_accrual_adds_to_the_balance(http, token):
    user_id = http.post(f"/v1/{token}/passes", json={"template": "Макет1"}).json()["user_id"]
    body = {"bonus": [{"value": "500.0", "active_from": "2025-07-19T11:21:35.779+00:00"}]}
    assert http.post(f"/v1/{token}/passes/{user_id}/bonuses", json=body).status_code == 200
    assert http.get(f"/v1/{token}/passes/userid/{user_id}").json()["bonus"] == "500"
    history = http.get(f"/v1/{token}/passes/{user_id}/bonuses").json()["bonuses"]
    assert [b["value"] for b in history] == ["500.0"]
    bad = http.post(f"/v1/{token}/passes/{user_id}/bonuses", json={"bonus": [{"value": "x"}]})
    assert bad.status_code == 400


def test_operations_filter_and_page(http, token, teyca):
    user_id = teyca.operations[0]["user_id"]
    body = {"filters": {"user_ids": [user_id], "operation_type": "purchase"}, "order": "desc"}
    answer = http.post(f"/v1/{token}/operations", params={"limit": 100}, json=body).json()
    assert answer["meta"]["size"] == len(answer["operations"]) >= 1
    for op in answer["operations"]:
        assert set(op) == {
            "id",
            "user_id",
            "operation_type",
            "summ",
            "bonus",
            "store_id",
            "created_at",
        }
        assert op["user_id"] == user_id and isinstance(op["summ"], str)
    stamps = [op["created_at"] for op in answer["operations"]]
    assert stamps == sorted(stamps, reverse=True)
    since = http.post(f"/v1/{token}/operations", json={"filters": {"data_since": "2026-01-01"}})
    assert since.status_code == 400  # TY-A11: YYYY-MM-DD HH:MM:SS


# -- rate limits (TY-A9) ---------------------------------------------------------------------------
def _fill(limiter: MultiWindowLimiter, clock: FakeClock, calls: int, gap: float) -> None:
    for _ in range(calls):
        assert limiter.hit("token").allowed
        clock.now += gap


@pytest.mark.parametrize(
    ("calls", "gap", "pause", "window"),
    [
        (5, 0.0, 0.0, 1.0),  # 5 at once: the 6th in the same second
        (150, 0.21, 1.0, 60.0),  # under 5/s, 150 in 31.5 s; a second later still in the minute
        (1000, 0.41, 61.0, 3600.0),  # under 150/min; a minute later still in the hour
        (5000, 3.61, 3601.0, 86400.0),  # under 1000/h; an hour later still in the day
    ],
)
def test_each_rate_window_trips_on_its_own(calls, gap, pause, window):
    clock = FakeClock()
    limiter = MultiWindowLimiter(RATE_WINDOWS, clock=clock)
    _fill(limiter, clock, calls, gap)
    clock.now += pause
    refused = limiter.hit("token")
    assert not refused.allowed and refused.window == window
    assert 0 < refused.retry_after <= window
    assert limiter.hit("other-token").allowed  # per token
    clock.now += refused.retry_after
    assert limiter.hit("token").allowed


def test_429_with_retry_after_over_http(http, token, teyca):
    clock = FakeClock()
    saved = teyca.limiter
    teyca.limiter = MultiWindowLimiter(RATE_WINDOWS, clock=clock)
    try:
        for _ in range(5):
            assert http.get(f"/v1/{token}/passes", params={"limit": 1}).status_code == 200
        refused = http.get(f"/v1/{token}/passes", params={"limit": 1})
        assert refused.status_code == 429
        assert refused.json() == {"message": "Too Many Requests"}
        assert refused.headers["Retry-After"] == "1"
        clock.now += 1.0
        assert http.get(f"/v1/{token}/passes", params={"limit": 1}).status_code == 200
    finally:
        teyca.limiter = saved


# -- one instance per token (TY-A2) ----------------------------------------------------------------
def _from(address: str, sandbox: SandboxServer) -> httpx.Client:
    """A client whose connections leave from another loopback address (all of 127/8 is local on
    Linux), so the emulator sees a second instance over a real socket."""
    transport = httpx.HTTPTransport(local_address=address)
    return httpx.Client(
        base_url=f"{sandbox.url}/teyca", headers=AUTH, transport=transport, timeout=10
    )


def test_a_token_used_from_a_second_address_is_blocked(sandbox, http, token, teyca):
    teyca.strict_instances = True
    try:
        assert http.get(f"/v1/{token}/passes", params={"limit": 1}).status_code == 200
        with _from("127.0.0.2", sandbox) as other:
            blocked = other.get(f"/v1/{token}/passes", params={"limit": 1})
        assert blocked.status_code == 403
        assert blocked.json() == {"message": "Token blocked: used from several instances"}
        assert http.get(f"/v1/{token}/passes").status_code == 403  # blocked for the first too
    finally:
        teyca.strict_instances = False


def test_without_strict_instances_a_second_address_is_only_recorded(sandbox, http, token, teyca):
    assert http.get(f"/v1/{token}/passes", params={"limit": 1}).status_code == 200
    with _from("127.0.0.2", sandbox) as other:
        assert other.get(f"/v1/{token}/passes", params={"limit": 1}).status_code == 200
    assert teyca.tokens[token].addresses == {"127.0.0.1", "127.0.0.2"}


# -- webhooks (§3, TY-A5) --------------------------------------------------------------------------
class Receiver:
    """A loopback HTTP server that records each POST and answers the next status in `script`."""

    def __init__(self, script: list[int]) -> None:
        self.script = list(script)
        self.received: list[tuple[str, str, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((self.path, self.headers["Authorization"], body))
                status = receiver.script.pop(0) if receiver.script else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks_cleared(teyca):
    teyca.retry_delays = (0.01, 0.01, 0.01)
    yield
    teyca.wait_for_deliveries()
    teyca.hooks.clear()
    teyca.retry_delays = (60.0, 300.0, 900.0)


def test_webhooks_are_managed_with_32_hex_ids(http, token, hooks_cleared):
    made = http.post(f"/v1/{token}/webhook", json={"type": "CREATE", "url": "http://127.0.0.1:9/c"})
    hook = made.json()
    assert made.status_code == 200 and re.fullmatch(r"[0-9a-f]{32}", hook["id"])
    assert http.get(f"/v1/{token}/webhook").json() == [hook]
    assert http.get(f"/v1/{token}/webhook/{hook['id']}").json() == hook
    moved = http.put(f"/v1/{token}/webhook/{hook['id']}", json={"url": "http://127.0.0.1:9/x"})
    assert moved.json() == {**hook, "url": "http://127.0.0.1:9/x"}
    assert (
        http.post(f"/v1/{token}/webhook", json={"type": "create", "url": "http://x"}).status_code
        == 400
    )
    assert http.post(f"/v1/{token}/webhook", json={"type": "CREATE", "url": "x"}).status_code == 400
    assert http.delete(f"/v1/{token}/webhook/{hook['id']}").status_code == 200
    assert http.get(f"/v1/{token}/webhook/{hook['id']}").status_code == 404


def test_a_change_is_delivered_with_the_secret_and_retried_after_a_500(
    http, token, teyca, hooks_cleared
):
    receiver = Receiver([500])
    try:
        for kind in ("CREATE", "UPDATE", "DELETE"):
            url = f"{receiver.url}/{kind.lower()}"
            assert (
                http.post(f"/v1/{token}/webhook", json={"type": kind, "url": url}).status_code
                == 200
            )
        start = len(teyca.deliveries)
        user_id = http.post(
            f"/v1/{token}/passes", json={"template": "Макет1", "first_name": "Анна"}
        ).json()["user_id"]
        teyca.wait_for_deliveries()
        http.put(f"/v1/{token}/passes/{user_id}", json={"bonus": "10"})
        teyca.wait_for_deliveries()
        http.delete(f"/v1/{token}/passes/{user_id}")
        card = teyca.register_card({"template": "Основная карта", "o_s": "ios"})  # the Teyca UI
        deliveries = teyca.wait_for_deliveries()[start:]
    finally:
        receiver.close()
    assert [(d.type, d.outcome) for d in deliveries] == [
        ("CREATE", "delivered"),
        ("UPDATE", "delivered"),
        ("DELETE", "delivered"),
        ("CREATE", "delivered"),
    ]
    assert deliveries[0].attempts == [500, 200]  # retried after the receiver's 500
    assert deliveries[1].body["pass"]["bonus"] == "10"
    assert deliveries[3].user_id == card["user_id"]
    assert all(secret == SECRET for _, secret, _ in receiver.received)
    assert [path for path, _, _ in receiver.received][:2] == ["/create", "/create"]
    assert b'"type":"CREATE"' in receiver.received[0][2].replace(b" ", b"")


def test_a_delivery_that_keeps_failing_is_tried_four_times(http, token, teyca, hooks_cleared):
    receiver = Receiver([503, 503, 503, 503])
    try:
        http.post(f"/v1/{token}/webhook", json={"type": "CREATE", "url": receiver.url})
        start = len(teyca.deliveries)
        teyca.register_card({"template": "Макет1"})
        (delivery,) = teyca.wait_for_deliveries()[start:]
    finally:
        receiver.close()
    assert delivery.attempts == [503, 503, 503, 503] and delivery.outcome == "failed"


# -- data shapes (TY-A6, TY-A7) --------------------------------------------------------------------
def test_generated_passes_look_like_teyca(http, token, sandbox):
    passes = http.get(f"/v1/{token}/passes", params={"limit": 1000}).json()["passes"]
    generated = [p for p in passes if p["user_id"] < 100_001 + 40]
    assert len(generated) == 40  # 40% of the sandbox's 100 customers
    cyrillic = re.compile(r"^[А-ЯЁ][а-яё-]+$")
    assert all(
        cyrillic.match(p["first_name"]) and cyrillic.match(p["last_name"]) for p in generated
    )
    assert all(re.fullmatch(r"7\d{10}", p["phone"]) for p in generated)
    assert all(
        p["birthday"] == "" or re.fullmatch(r"\d{2}\.\d{2}\.\d{4}", p["birthday"])
        for p in generated
    )
    stamp = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
    assert all(stamp.fullmatch(p["created_at"]) for p in generated)
    assert all(p["date_last"] is None or stamp.fullmatch(p["date_last"]) for p in generated)
    assert all(isinstance(p[k], str) for p in generated for k in ("bonus", "summ", "summ_all"))
    assert {p["gender"] for p in generated} == {"м", "ж"}
    assert {p["o_s"] for p in generated} == {"ios", "android", ""}
    consent = Counter(p.get("key1", "<missing>") for p in generated)
    assert len(set(consent) & {"1", "true", "yes", "да", "confirmed"}) >= 3
    assert "<missing>" in consent and len(set(consent) & {"blocked", "", "0", "нет"}) >= 2
    assert any(not p.get("email") for p in generated)
    assert max(Counter(p["phone"] for p in generated).values()) >= 2  # TX2: shared phones
