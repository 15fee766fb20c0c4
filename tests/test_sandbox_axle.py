"""Axle-CRM emulator over real sockets (AX-A1..AX-A4): auth, upsert and batch,
card merging, one client per phone, listing, delete, validation, the 5/s limit, isolation."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from sandbox.axle import AXLE_API_KEY, AXLE_OTHER_API_KEY, EMULATOR, AxleState
from sandbox.credentials import SANDBOX_ENV
from sandbox.server import SandboxServer

V1 = "/axle/api/v1"
START = datetime.fromisoformat("2026-03-18T09:00:00+00:00").timestamp()
UNAUTHORIZED = {"error": {"code": "unauthorized", "message": "Invalid API key"}}


class FakeClock:
    """Epoch seconds that move only when a test says so."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@contextmanager
def serve(state: AxleState) -> Iterator[str]:
    """The emulator's own routes on a free loopback port (the pattern of SandboxServer.bind)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    app = Starlette(routes=EMULATOR.routes(state))
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        _wait_listening(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _wait_listening(url: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{url}{V1}/ping", timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.02)
    raise RuntimeError(f"Axle emulator did not answer at {url}")


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="module")
def served(clock) -> Iterator[tuple[AxleState, str]]:
    state = AxleState(rate_limit=None, clock=clock)
    with serve(state) as url:
        yield state, url


@pytest.fixture
def state(served, clock) -> AxleState:
    served[0].reset()
    clock.now = START
    return served[0]


@pytest.fixture
def client(served, state) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served[1] + V1, headers=bearer(AXLE_API_KEY), timeout=10) as http:
        yield http


@pytest.fixture
def other(served, state) -> Iterator[httpx.Client]:
    headers = bearer(AXLE_OTHER_API_KEY)
    with httpx.Client(base_url=served[1] + V1, headers=headers, timeout=10) as http:
        yield http


def card(user_id, source="teyca", barcode=None, template="Макет1", wallet_link=None) -> dict:
    return {
        "source": source,
        "user_id": user_id,
        "barcode": barcode or f"BC{user_id}",
        "template": template,
        "wallet_link": wallet_link,
    }


def upsert(http: httpx.Client, client: dict, match_by: str = "phone") -> httpx.Response:
    return http.post("/clients/upsert", json={"match_by": match_by, "client": client})


def error_of(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    return error


# -- AX-A1 -----------------------------------------------------------------------------------------
def test_a_bad_missing_or_unprefixed_key_is_401_and_recorded(served, state):
    url = served[1] + V1
    for headers in ({}, bearer("wrong-key"), {"Authorization": AXLE_API_KEY}):
        answer = httpx.get(f"{url}/ping", headers=headers)
        assert answer.status_code == 401 and answer.json() == UNAUTHORIZED
    assert httpx.get(f"{url}/clients", headers=bearer("nope")).json() == UNAUTHORIZED
    assert [(r.status, r.account) for r in state.requests()] == [(401, None)] * 4


def test_ping_names_the_keys_account(client, other, state):
    assert client.get("/ping").json() == {
        "ok": True,
        "account": {"id": "acc_demo", "name": "Demo Axle account"},
    }
    assert other.get("/ping").json()["account"]["id"] == "acc_other"
    assert state.request_count("GET", "/ping") == 2


def test_demo_credentials_are_exported_for_discovery():
    assert EMULATOR.name == "axle"
    assert EMULATOR.credentials["AXLE_API_KEY"] == AXLE_API_KEY
    assert EMULATOR.credentials["AXLE_OTHER_API_KEY"] == AXLE_OTHER_API_KEY


# -- AX-A3 upsert ----------------------------------------------------------------------------------
def test_upsert_creates_then_updates_keeping_fields_not_sent(client, state, clock):
    sent = {
        "phone": "+79876543211",
        "external_id": "teyca:17145",
        "email": "ivan@example.ru",
        "first_name": "Иван",
        "last_name": "Петров",
        "birthday": "1990-03-01",
        "consent_mailing": True,
        "bonus_balance": 500.5,
        "visits_total": 3,
        "tags": ["vip"],
    }
    created = upsert(client, sent)
    assert created.status_code == 200 and created.json()["action"] == "created"
    client_id = created.json()["id"]
    first = client.get(f"/clients/{client_id}").json()
    assert {k: first[k] for k in sent} == sent
    assert first["push_allowed"] is False and first["cards"] == [] and first["gender"] is None
    assert first["created_at"] == first["updated_at"] == "2026-03-18T12:00:00.000+03:00"

    clock.advance(60)
    updated = upsert(client, {"phone": "+79876543211", "visits_total": 4, "gender": "m"})
    assert updated.json() == {"id": client_id, "action": "updated"}
    after = client.get(f"/clients/{client_id}").json()
    assert after["visits_total"] == 4 and after["gender"] == "m"
    assert after["first_name"] == "Иван" and after["tags"] == ["vip"]  # not sent: kept
    assert after["created_at"] == first["created_at"]
    assert after["updated_at"] == "2026-03-18T12:01:00.000+03:00"

    clock.advance(60)
    same = upsert(client, {"phone": "+79876543211", "visits_total": 4})
    assert same.json()["action"] == "updated"
    assert client.get(f"/clients/{client_id}").json()["updated_at"] == after["updated_at"]
    by_external = upsert(client, {"external_id": "teyca:17145", "email": None}, "external_id")
    assert by_external.json() == {"id": client_id, "action": "updated"}
    assert state.client_by_phone("+79876543211")["email"] is None
    assert len(state.clients()) == 1 and state.request_count("POST", "/clients/upsert") == 4


def test_cards_merge_by_source_and_user_id(client, state):
    phone = "+79990000001"
    upsert(client, {"phone": phone, "cards": [card(1), card(2)]})
    answer = upsert(
        client,
        {"phone": phone, "cards": [card(2, barcode="NEW"), card(1, source="other"), card(3)]},
    )
    assert answer.json()["action"] == "updated"
    cards = state.client_by_phone(phone)["cards"]
    assert [(c["source"], c["user_id"], c["barcode"]) for c in cards] == [
        ("teyca", 1, "BC1"),
        ("teyca", 2, "NEW"),  # same card: replaced in place
        ("other", 1, "BC1"),  # same user_id, other source: a new card
        ("teyca", 3, "BC3"),
    ]
    upsert(client, {"phone": phone, "first_name": "Анна"})  # no `cards`: all kept
    assert len(state.client_by_phone(phone)["cards"]) == 4
    upsert(client, {"phone": phone, "cards": [card("1")]})  # "1" is not 1: a new card
    assert len(state.client_by_phone(phone)["cards"]) == 5
    twice = upsert(client, {"phone": phone, "cards": [card(7), card(7)]})
    assert "cards[1]" in error_of(twice, 422, "validation_failed")["details"]


def test_upsert_body_shape_is_a_400(client, state):
    details = error_of(upsert(client, {"first_name": "X"}), 400, "invalid_request")["details"]
    assert details == {"phone": "is required"}
    no_external = upsert(client, {"phone": "+79990000002"}, "external_id")
    assert error_of(no_external, 400, "invalid_request")["details"] == {
        "external_id": "is required"
    }
    bad_match = client.post("/clients/upsert", json={"match_by": "email", "client": {}})
    assert "match_by" in error_of(bad_match, 400, "invalid_request")["details"]
    extra = client.post("/clients/upsert", json={"match_by": "phone", "client": {}, "merge": 1})
    assert error_of(extra, 400, "invalid_request")["details"] == {"merge": "unknown field"}
    not_json = client.post("/clients/upsert", content=b"match_by=phone")
    error_of(not_json, 400, "invalid_request")
    broken = client.post(
        "/clients/upsert", content=b"{", headers={"Content-Type": "application/json"}
    )
    error_of(broken, 400, "invalid_request")
    assert state.clients() == []


# -- AX-A4 409: one client per phone ---------------------------------------------------------------
def test_two_clients_never_share_a_phone(client, state):
    phone = "+79990000003"
    first = upsert(client, {"external_id": "teyca:1", "phone": phone}, "external_id").json()["id"]
    second = upsert(client, {"external_id": "teyca:2", "phone": phone}, "external_id")
    error = error_of(second, 409, "conflict")
    assert error["details"] == {"phone": f"already used by client {first}"}
    upsert(client, {"external_id": "teyca:2", "phone": "+79990000004"}, "external_id")
    moved = upsert(client, {"external_id": "teyca:2", "phone": phone}, "external_id")
    error_of(moved, 409, "conflict")  # an update that would share the phone is refused too
    assert state.client_by_external_id("teyca:2")["phone"] == "+79990000004"
    assert len(state.clients()) == 2


def test_an_upsert_that_matches_two_clients_is_409(client, state):
    phone = "+79990000005"
    state.add_client({"phone": phone, "external_id": "teyca:10"})
    state.add_client({"phone": phone, "external_id": "teyca:11"}, allow_shared_phone=True)
    error = error_of(upsert(client, {"phone": phone, "first_name": "X"}), 409, "conflict")
    assert error["details"] == {"phone": "matches more than one client"}
    state.add_client({"phone": "+79990000006", "external_id": "teyca:12"})
    state.add_client({"phone": "+79990000007", "external_id": "teyca:12"})
    twice = upsert(client, {"external_id": "teyca:12", "visits_total": 1}, "external_id")
    error_of(twice, 409, "conflict")
    assert all(c["first_name"] is None and c["visits_total"] == 0 for c in state.clients())


# -- AX-A3 batch -----------------------------------------------------------------------------------
def test_batch_answers_each_item_and_one_bad_item_fails_only_itself(client, state):
    items = [
        {"phone": "+79991000001", "first_name": "A"},
        {"phone": "+7999100000", "first_name": "B"},  # 10 digits after +7
        {"phone": "+79991000001", "last_name": "A2"},  # the first again: an update
        "not an object",
        {"first_name": "no phone"},
        {"phone": "+79991000002", "nickname": "x"},
        {"phone": "+79991000003", "birthday": "1990-02-30"},
        {"phone": "+79991000004", "consent_mailing": "yes", "visits_total": "2"},
    ]
    answer = client.post("/clients/batch", json={"match_by": "phone", "clients": items})
    assert answer.status_code == 200
    results = answer.json()["results"]
    assert [r["index"] for r in results] == list(range(len(items)))
    first_id = results[0]["id"]
    assert results[0] == {"index": 0, "id": first_id, "action": "created"}
    assert results[2] == {"index": 2, "id": first_id, "action": "updated"}
    codes = [r.get("error", {}).get("code") for r in results]
    assert codes == [
        None,
        "validation_failed",
        None,
        "invalid_request",
        "invalid_request",
        "invalid_request",
        "validation_failed",
        "validation_failed",
    ]
    assert results[1]["error"]["details"] == {"phone": "a +7 number must have exactly 11 digits"}
    assert set(results[7]["error"]["details"]) == {"consent_mailing", "visits_total"}
    assert "details" not in results[3]["error"]
    stored = state.clients()
    assert len(stored) == 1 and stored[0]["first_name"] == "A" and stored[0]["last_name"] == "A2"
    assert state.request_count("POST", "/clients/batch") == 1


def test_batch_items_see_earlier_items_and_conflicts_stay_per_item(client, state):
    items = [
        {"external_id": "teyca:1", "phone": "+79992000001"},
        {"external_id": "teyca:2", "phone": "+79992000001"},
        {"external_id": "teyca:1", "cards": [card(1)]},
    ]
    body = {"match_by": "external_id", "clients": items}
    results = client.post("/clients/batch", json=body).json()["results"]
    assert results[0]["action"] == "created" and results[2]["action"] == "updated"
    assert results[1]["error"]["code"] == "conflict"
    assert state.client_by_external_id("teyca:1")["cards"] == [card(1)]


def test_batch_size_and_shape_are_checked_before_any_item(client, state):
    many = [{"phone": f"+7999300{i:04d}"} for i in range(501)]
    over = client.post("/clients/batch", json={"match_by": "phone", "clients": many})
    assert "clients" in error_of(over, 400, "invalid_request")["details"]
    full = client.post("/clients/batch", json={"match_by": "phone", "clients": many[:500]})
    assert full.status_code == 200 and len(full.json()["results"]) == 500
    state.reset()
    empty = client.post("/clients/batch", json={"match_by": "phone", "clients": []})
    error_of(empty, 400, "invalid_request")
    bad_match = client.post("/clients/batch", json={"match_by": "id", "clients": many[:1]})
    error_of(bad_match, 400, "invalid_request")
    not_list = client.post("/clients/batch", json={"match_by": "phone", "clients": {}})
    error_of(not_list, 400, "invalid_request")
    assert state.clients() == []


# -- AX-A3 listing, one client, delete -------------------------------------------------------------
def test_list_pages_with_limit_offset_and_total(client, state):
    ids = [upsert(client, {"phone": f"+7999400000{i}"}).json()["id"] for i in range(7)]
    pages = [client.get("/clients", params={"limit": 3, "offset": o}).json() for o in (0, 3, 6)]
    assert [[c["id"] for c in page["clients"]] for page in pages] == [ids[:3], ids[3:6], ids[6:]]
    assert [page["meta"] for page in pages] == [
        {"size": 7, "limit": 3, "offset": offset} for offset in (0, 3, 6)
    ]
    beyond = client.get("/clients", params={"offset": 10}).json()
    assert beyond == {"clients": [], "meta": {"size": 7, "limit": 100, "offset": 10}}
    assert client.get("/clients", params={"limit": 500}).status_code == 200


def test_list_filters_by_phone_external_id_email_and_updated_since(client, state, clock):
    upsert(client, {"phone": "+79995000001", "external_id": "teyca:1", "email": "Anna@Mail.ru"})
    clock.advance(10)  # 09:00:10Z
    upsert(client, {"phone": "+79995000002", "external_id": "teyca:2"})
    clock.advance(10)  # 09:00:20Z
    upsert(client, {"phone": "+79995000001", "visits_total": 2})  # changed: updated_at moves
    clock.advance(10)
    upsert(client, {"phone": "+79995000002", "visits_total": 0})  # unchanged: it stays

    def phones(**params) -> list[str]:
        return [c["phone"] for c in client.get("/clients", params=params).json()["clients"]]

    assert phones(phone="+79995000002") == ["+79995000002"]
    assert phones(external_id="teyca:1") == ["+79995000001"]
    assert phones(email="anna@mail.ru") == ["+79995000001"]  # [I] case-insensitive
    assert phones(updated_since="2026-03-18T09:00:10Z") == ["+79995000001", "+79995000002"]
    assert phones(updated_since="2026-03-18T12:00:15+03:00") == ["+79995000001"]
    assert phones(updated_since="2026-03-18T12:00:20+03:00") == ["+79995000001"]  # inclusive
    assert phones(updated_since="2026-03-18T09:00:20.001Z") == []
    assert phones(phone="+79995000001", external_id="teyca:2") == []
    assert phones(email="nobody@mail.ru") == []


def test_list_refuses_bad_query_parameters(client, state):
    def details(query: str) -> dict:
        return error_of(client.get(f"/clients?{query}"), 400, "invalid_request")["details"]

    assert "limit" in details("limit=501")
    assert "limit" in details("limit=0")
    assert "offset" in details("offset=-1")
    assert "limit" in details("limit=ten")
    assert details("page=2") == {"page": "unknown query parameter"}
    assert "phone" in details("phone=+79995000001")  # "+" unencoded arrives as a space
    assert "updated_since" in details("updated_since=2026-03-18T12:00:00")  # no offset
    assert "updated_since" in details("updated_since=2026-03-18T12:00:00+03:00")
    assert "phone" in details("phone=%2B79995000001&phone=%2B79995000002")


def test_get_and_delete_one_client(client, state):
    client_id = upsert(client, {"phone": "+79996000001"}).json()["id"]
    assert client.get(f"/clients/{client_id}").json()["phone"] == "+79996000001"
    deleted = client.delete(f"/clients/{client_id}")
    assert deleted.status_code == 204 and deleted.content == b""
    assert state.clients() == []
    error_of(client.get(f"/clients/{client_id}"), 404, "not_found")
    error_of(client.delete(f"/clients/{client_id}"), 404, "not_found")
    error_of(client.get("/no/such/endpoint"), 404, "not_found")
    assert state.request_count("DELETE") == 2
    assert [r.status for r in state.requests()][-3:] == [404, 404, 404]


# -- AX-A2 validation ------------------------------------------------------------------------------
BAD_VALUES = [
    ("phone", "79876543211"),  # no "+"
    ("phone", "+7987654321"),  # +7 with 10 digits
    ("phone", "+798765432111"),  # +7 with 12 digits
    ("phone", "+4512345"),  # 7 digits
    ("phone", "+1234567890123456"),  # 16 digits
    ("phone", "+7 987 654 32 11"),
    ("phone", 79876543211),
    ("birthday", "1990-02-30"),
    ("birthday", "01.03.1990"),
    ("birthday", "1990-3-1"),
    ("birthday", "2090-03-01"),  # in the future: a two-digit year read as 20xx
    ("card_installed_at", "2026-03-18T12:00:00"),  # no offset
    ("card_installed_at", "2026-03-18"),
    ("last_visit_at", "18.03.2026 12:00:00"),
    ("last_visit_at", "2026-03-18T25:00:00+03:00"),
    ("gender", "м"),
    ("gender", "male"),
    ("consent_mailing", "true"),
    ("consent_mailing", None),
    ("push_allowed", 1),
    ("bonus_balance", "500.0"),
    ("bonus_balance", True),
    ("discount_percent", "10%"),
    ("purchases_total", None),
    ("visits_total", 3.5),
    ("visits_total", "3"),
    ("email", "no-at-sign"),
    ("email", 5),
    ("first_name", None),
    ("last_name", 1),
    ("middle_name", ["x"]),
    ("loyalty_level", 2),
    ("external_id", ""),
    ("tags", "vip"),
    ("tags", [1]),
    ("cards", {"source": "teyca"}),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_each_field_rule_is_a_422_naming_the_field(client, state, name, value):
    fields = {"external_id": "teyca:1", "phone": "+79997000001", name: value}
    error = error_of(upsert(client, fields, "external_id"), 422, "validation_failed")
    assert list(error["details"]) == [name]
    assert state.clients() == []


BAD_CARDS = [
    ({"source": "teyca", "user_id": 1, "barcode": "1", "template": "t"}, "wallet_link"),
    ({**card(1), "link": "x"}, "link"),
    ({**card(1), "user_id": True}, "user_id"),
    ({**card(1), "user_id": ""}, "user_id"),
    ({**card(1), "user_id": [1]}, "user_id"),
    ({**card(1), "source": ""}, "source"),
    ({**card(1), "barcode": 123}, "barcode"),
]


@pytest.mark.parametrize(("entry", "name"), BAD_CARDS)
def test_each_card_rule_is_a_422_naming_the_entry_field(client, state, entry, name):
    answer = upsert(client, {"phone": "+79997000002", "cards": [card(9), entry]})
    assert list(error_of(answer, 422, "validation_failed")["details"]) == [f"cards[1].{name}"]


def test_good_values_of_every_field_are_stored_as_sent(client, state):
    fields = {
        "external_id": "teyca:1",
        "phone": "+4512345678",
        "email": None,
        "first_name": "",
        "last_name": "Ли",
        "middle_name": "Сергеевна",
        "gender": None,
        "birthday": None,
        "card_installed_at": "2026-03-18T12:00:00+03:00",
        "last_visit_at": "2026-03-18T09:00:00.123Z",
        "consent_mailing": False,
        "push_allowed": True,
        "bonus_balance": 0,
        "discount_percent": 7.5,
        "loyalty_level": None,
        "visits_total": 0,
        "purchases_total": 1234.56,
        "cards": [card(1, wallet_link="https://cards.teyca.ru/download/x", template=None)],
        "tags": [],
    }
    assert upsert(client, fields, "external_id").json()["action"] == "created"
    stored = state.client_by_external_id("teyca:1")
    assert {k: stored[k] for k in fields} == fields
    assert list(stored) == ["id", *fields, "created_at", "updated_at"]


def test_unknown_and_read_only_fields_are_a_400(client, state):
    unknown = upsert(client, {"phone": "+79997000003", "mobile": "x", "id": "abc"})
    assert error_of(unknown, 400, "invalid_request")["details"] == {
        "mobile": "unknown field",
        "id": "is set by Axle and cannot be written",
    }
    stamped = upsert(client, {"phone": "+79997000003", "updated_at": "2026-03-18T12:00:00Z"})
    assert "updated_at" in error_of(stamped, 400, "invalid_request")["details"]
    assert state.clients() == []


# -- AX-A4 rate limit ------------------------------------------------------------------------------
def test_more_than_five_requests_a_second_per_key_is_429_with_retry_after():
    clock = FakeClock()
    state = AxleState(rate_limit=5, clock=clock)
    with serve(state) as url:
        state.reset()  # forget the start-up probe
        demo = httpx.Client(base_url=url + V1, headers=bearer(AXLE_API_KEY))
        other = httpx.Client(base_url=url + V1, headers=bearer(AXLE_OTHER_API_KEY))
        with demo, other:
            assert [demo.get("/ping").status_code for _ in range(5)] == [200] * 5
            refused = demo.get("/clients")
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
            assert refused.json()["error"]["code"] == "rate_limited"
            assert other.get("/ping").status_code == 200  # per key
            clock.advance(0.5)
            assert demo.get("/ping").status_code == 429  # refused calls are not counted
            clock.advance(0.5)
            assert demo.get("/ping").status_code == 200
            assert httpx.get(f"{url}{V1}/ping", headers=bearer("bad")).status_code == 401
    assert [r.status for r in state.requests()] == [200] * 5 + [429, 200, 429, 200, 401]


# -- isolation -------------------------------------------------------------------------------------
def test_accounts_are_isolated_by_key(client, other, state):
    phone = "+79998000001"
    mine = upsert(client, {"phone": phone, "first_name": "Demo"}).json()["id"]
    theirs = upsert(other, {"phone": phone, "first_name": "Other"})  # no conflict across accounts
    assert theirs.json()["action"] == "created" and theirs.json()["id"] != mine
    error_of(other.get(f"/clients/{mine}"), 404, "not_found")
    error_of(other.delete(f"/clients/{mine}"), 404, "not_found")
    assert [c["first_name"] for c in other.get("/clients").json()["clients"]] == ["Other"]
    assert state.client_by_phone(phone)["first_name"] == "Demo"
    assert state.client_by_phone(phone, AXLE_OTHER_API_KEY)["first_name"] == "Other"
    assert state.counts()["clients"] == {"acc_demo": 1, "acc_other": 1}


# -- discovery -------------------------------------------------------------------------------------
def test_the_sandbox_finds_and_serves_the_axle_emulator():
    assert SANDBOX_ENV["AXLE_API_KEY"] == AXLE_API_KEY
    with SandboxServer(seed=7, customers=5, days=30, rate_limits=False) as sandbox:
        axle = sandbox.emulator("axle")
        assert isinstance(axle, AxleState) and axle.limiter.limit is None and axle.clients() == []
        with httpx.Client(base_url=sandbox.url + V1, headers=bearer(AXLE_API_KEY)) as http:
            assert http.get("/ping").json()["ok"] is True
            assert upsert(http, {"phone": "+79999000001"}).json()["action"] == "created"
        assert axle.client_by_phone("+79999000001") is not None
        summary = httpx.get(f"{sandbox.url}/_sandbox/summary").json()["axle"]
        assert summary == {"clients": {"acc_demo": 1, "acc_other": 0}, "requests": 2}
