"""Cyberimpact emulator over real sockets (CI-A1..CI-A13): token auth, members and the 409 rules,
echoed-limit paging, groups, custom fields and their limit, consent expiry, async batches,
unsubscribes never undone, read-back of unsubscribes and bounces, the 1 POST/s throttle."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette

from sandbox.credentials import SANDBOX_ENV
from sandbox.cyberimpact import (
    CYBERIMPACT_API_TOKEN,
    CYBERIMPACT_OTHER_API_TOKEN,
    EMULATOR,
    CyberimpactState,
)
from sandbox.server import SandboxServer
from tests.asgi import served

BASE = "/cyberimpact"
START = 1_780_000_000.0


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer(seed=3, customers=30, days=10, rate_limits=False) as server:
        yield server


@pytest.fixture
def ci(sandbox) -> CyberimpactState:
    state = sandbox.emulator("cyberimpact")
    state.reset()
    return state


@pytest.fixture
def http(sandbox, ci) -> Iterator[httpx.Client]:
    headers = bearer(CYBERIMPACT_API_TOKEN)
    with httpx.Client(base_url=f"{sandbox.url}{BASE}", headers=headers, timeout=10) as client:
        yield client


def test_credentials_are_exported_and_the_account_starts_empty(http, ci):
    assert SANDBOX_ENV["CYBERIMPACT_API_TOKEN"] == CYBERIMPACT_API_TOKEN
    assert http.get("/members").json()["totalCount"] == 0
    assert http.get("/groups").json()["groups"] == []
    assert http.get("/customfields").json() == {"customFields": []}


def test_ping_needs_a_seeded_bearer_token(http, sandbox):
    answer = http.get("/ping")
    assert answer.status_code == 200
    assert answer.json()["ping"] == "success"
    for headers in ({}, bearer("forged"), {"Authorization": f"Basic {CYBERIMPACT_API_TOKEN}"}):
        refused = httpx.get(f"{sandbox.url}{BASE}/ping", headers=headers)
        assert refused.status_code == 401
        assert refused.json() == {"message": "Invalid token", "errors": {}}


def test_create_then_409_for_an_existing_email_in_any_case(http, ci):
    created = http.post("/members", json={"email": "Léa@Example.com", "firstname": "Léa"})
    assert created.status_code == 201
    body = created.json()
    assert body["email"] == "léa@example.com" and body["firstname"] == "Léa"
    assert body["joinedOn"][-6] in "+-"  # CI-A12 offset
    again = http.post("/members", json={"email": "LÉA@example.com".lower()})
    assert again.status_code == 409
    assert again.json() == {"message": "Member already exists", "errors": {"email": ["exists"]}}
    assert http.get("/members/L%C3%A9a%40EXAMPLE.com").json()["id"] == body["id"]
    assert http.get(f"/members/{body['id']}").json()["email"] == "léa@example.com"
    assert ci.request_count("POST", "/members") == 2


def test_validation_errors_name_the_field(http):
    answer = http.post(
        "/members",
        json={"email": "x@example.com", "gender": "x", "language": "fr", "birthdate": "1990-13-01"},
    )
    assert answer.status_code == 400
    assert set(answer.json()["errors"]) == {"gender", "language", "birthdate"}
    assert http.post("/members", json={"firstname": "No email"}).json()["errors"]["email"]
    assert http.get("/members/nobody@example.com").status_code == 404


def test_patch_changes_only_what_is_sent_and_put_resets_the_rest(http):
    http.post("/members", json={"email": "a@example.com", "firstname": "A", "lastname": "B"})
    patched = http.patch("/members/a@example.com", json={"lastname": "C"}).json()
    assert (patched["firstname"], patched["lastname"]) == ("A", "C")
    put = http.put("/members/a@example.com", json={"firstname": "Z"}).json()
    assert (put["firstname"], put["lastname"]) == ("Z", "")
    moved = http.patch("/members/a@example.com", json={"email": "new@example.com"})
    assert moved.json()["email"] == "new@example.com"
    assert http.get("/members/a@example.com").status_code == 404
    assert http.delete("/members/new@example.com").status_code == 200
    assert http.get("/members/new@example.com").status_code == 404


def test_paging_echoes_the_limit_and_refuses_above_10000(http, ci):
    for i in range(5):
        http.post("/members", json={"email": f"p{i}@example.com"})
    first = http.get("/members", params={"limit": 2}).json()
    assert (first["totalCount"], first["page"], first["limit"]) == (5, 1, 2)
    assert [m["email"] for m in first["members"]] == ["p0@example.com", "p1@example.com"]
    last = http.get("/members", params={"limit": 2, "page": 3}).json()
    assert [m["email"] for m in last["members"]] == ["p4@example.com"]
    assert http.get("/members").json()["limit"] == 20
    too_big = http.get("/members", params={"limit": 10001})
    assert too_big.status_code == 400
    assert too_big.json() == {"message": "Invalid limit", "errors": {"limit": ["max 10000"]}}
    desc = http.get("/members", params={"sort": "email_desc"}).json()["members"]
    assert desc[0]["email"] == "p4@example.com"


def test_groups_are_static_and_membership_is_added_and_removed(http, ci):
    assert http.post("/groups", json={"title": "Dyn", "isDynamic": True}).status_code == 422
    a = http.post("/groups", json={"title": "Clients Amilia"}).json()
    b = http.post("/groups", json={"title": "Natation \\ Enfants"}).json()
    assert a["isDynamic"] is False
    http.post("/members", json={"email": "g@example.com", "groups": str(a["id"])})
    added = http.post("/members/g@example.com/groups", json={"groups": f"{b['id']}"})
    assert {g["title"] for g in added.json()["groups"]} == {"Clients Amilia", "Natation \\ Enfants"}
    assert http.get("/members", params={"status": "active"}).json()["totalCount"] == 1
    removed = http.delete(f"/members/g@example.com/groups/{a['id']}")
    assert removed.status_code == 204
    assert ci.member_groups("g@example.com") == {"Natation \\ Enfants"}
    in_b = http.get(f"/groups/{b['id']}/members").json()
    assert [m["email"] for m in in_b["members"]] == ["g@example.com"]
    assert (
        http.post("/members", json={"email": "h@example.com", "groups": "999"}).status_code == 400
    )
    assert http.get("/members", params={"status": "orphans"}).json()["totalCount"] == 0


def test_custom_fields_are_typed_and_limited(sandbox, http, ci):
    ci.custom_field_limit = 2
    try:
        text = http.post("/customfields", json={"name": "Amilia.IsArchived", "type": "text"})
        assert text.status_code == 201
        number = http.post("/customfields", json={"name": "Amilia.Age", "type": "integer"}).json()
        full = http.post("/customfields", json={"name": "Amilia.Skills", "type": "text"})
        assert full.status_code == 422
        assert full.json()["message"] == "Custom field limit reached"
    finally:
        ci.custom_field_limit = 25
    key = str(number["id"])
    wrong = http.post("/members", json={"email": "c@example.com", "customFields": {key: "7"}})
    assert wrong.status_code == 400 and f"customFields.{key}" in wrong.json()["errors"]
    right = http.post("/members", json={"email": "c@example.com", "customFields": {key: 7}})
    assert right.json()["customFields"] == {key: 7}


def test_consent_expires_after_24_months_and_express_is_not_overridden(http):
    http.post("/members", json={"email": "k@example.com"})
    assert http.get("/members/k@example.com/consent").status_code == 404
    body = {"relationType": "active-clients", "consentDate": "2024-02-29", "consentProof": "R-1"}
    stored = http.put("/members/k@example.com/consent", json=body).json()
    assert stored["consentType"] == "implied"
    assert stored["consentExpiration"] == "2026-02-28"
    assert http.get("/members/k@example.com").json()["consentType"] == "implied"
    express = dict(body, relationType="express-consent")
    assert http.put("/members/k@example.com/consent", json=express).status_code == 200
    refused = http.put("/members/k@example.com/consent", json=body)
    assert refused.status_code == 422 and refused.json()["message"]


def test_an_unsubscribe_is_never_undone(sandbox, http, ci):
    http.post("/members", json={"email": "u@example.com"})
    control = httpx.post(
        f"{sandbox.url}/_sandbox/cyberimpact/unsubscribe", json={"email": "u@example.com"}
    )
    assert control.status_code == 200
    assert http.get("/members").json()["totalCount"] == 0
    http.delete("/members/u@example.com")
    again = http.post("/members", json={"email": "u@example.com"})
    assert again.status_code == 409 and again.json()["message"] == "Member is unsubscribed"
    rows = http.get("/members/unsubscribed", params={"unsubscribedOnFrom": "2000-01-01"}).json()
    assert [r["email"] for r in rows["members"]] == ["u@example.com"]
    assert http.get("/members/unsubscribed/u@example.com").status_code == 200
    httpx.post(f"{sandbox.url}/_sandbox/cyberimpact/bounce", json={"email": "b@example.com"})
    bounced = http.get("/members/bounced", params={"bouncedOnFrom": "2000-01-01"}).json()
    assert [r["email"] for r in bounced["members"]] == ["b@example.com"]
    assert (
        http.get("/members/bounced", params={"bouncedOnFrom": "2999-01-01"}).json()["totalCount"]
        == 0
    )


def test_a_batch_is_applied_only_when_polled_to_completion(http, ci):
    group = http.post("/groups", json={"title": "Clients Amilia"}).json()
    http.post("/members", json={"email": "old@example.com", "firstname": "Old", "lastname": "L"})
    ci.unsubscribe("gone@example.com")
    members = [{"email": f"m{i}@example.com", "firstname": f"M{i}"} for i in range(60)]
    members += [
        {"email": "old@example.com", "firstname": "", "lastname": "__EMPTY__"},
        {"email": "gone@example.com"},
        {"email": "bad@example.com", "gender": "x"},
    ]
    body = {
        "batchType": "addMembers",
        "relationType": "active-clients",
        "defaultConsentDate": "2025-01-15",
        "defaultConsentProof": "R-9",
        "groups": [group["id"]],
        "members": members,
    }
    created = http.post("/batches", json=body)
    assert created.status_code == 201
    batch_id = created.json()["id"]
    assert ci.member("m0@example.com") is None  # nothing applied before it completes
    first = http.get(f"/batches/{batch_id}", params={"showErrorDetails": "true"}).json()
    assert first["status"] == "PROCESSING" and first["result"] is None
    done = http.get(f"/batches/{batch_id}", params={"showErrorDetails": "true"}).json()
    assert done["status"] == "COMPLETED"
    assert len(done["result"]["successes"]) == 61
    errors = {e["email"]: e["message"] for e in done["result"]["errors"]}
    assert set(errors) == {"gone@example.com", "bad@example.com"}
    assert "unsubscribed" in errors["gone@example.com"]
    old = ci.member("old@example.com")
    assert (old["firstname"], old["lastname"]) == ("Old", "")
    assert ci.member_groups("m5@example.com") == {"Clients Amilia"}
    consent = http.get("/members/m5@example.com/consent").json()
    assert consent["consentExpiration"] == "2027-01-15"
    too_big = dict(body, members=[{"email": f"x{i}@example.com"} for i in range(1001)])
    assert http.post("/batches", json=too_big).status_code == 400


def test_accounts_are_isolated(sandbox, http):
    http.post("/members", json={"email": "iso@example.com"})
    other = httpx.get(
        f"{sandbox.url}{BASE}/members/iso@example.com", headers=bearer(CYBERIMPACT_OTHER_API_TOKEN)
    )
    assert other.status_code == 404


# -- CI-A6 throttle, on the emulator's own routes with a fake clock --------------------------------
class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def serve(state: CyberimpactState):
    return served(Starlette(routes=EMULATOR.routes(state)))


def test_post_members_is_throttled_to_one_per_second_with_retry_after():
    clock = FakeClock()
    state = CyberimpactState(rate_limits=True, clock=clock)
    with (
        serve(state) as url,
        httpx.Client(base_url=url + BASE, headers=bearer(CYBERIMPACT_API_TOKEN)) as http,
    ):
        assert http.post("/members", json={"email": "t1@example.com"}).status_code == 201
        refused = http.post("/members", json={"email": "t2@example.com"})
        assert refused.status_code == 429
        assert refused.json() == {"message": "Too many requests", "errors": {}}
        assert refused.headers["Retry-After"] == "1"
        assert http.patch("/members/t1@example.com", json={"firstname": "T"}).status_code == 200
        clock.now += 1.0
        assert http.post("/members", json={"email": "t2@example.com"}).status_code == 201
        statuses = [http.get("/ping").status_code for _ in range(11)]
        assert statuses.count(429) == 1  # 10/s elsewhere, counted apart from POST /members


def test_a_dynamic_group_made_in_the_ui_cannot_be_edited_or_joined(http, ci):
    dynamic = ci.add_dynamic_group("Ouverts récemment")
    assert http.get(f"/groups/{dynamic}").json()["isDynamic"] is True
    assert http.patch(f"/groups/{dynamic}", json={"title": "x"}).status_code == 422
    assert http.delete(f"/groups/{dynamic}").status_code == 422
    joined = http.post("/members", json={"email": "d@example.com", "groups": str(dynamic)})
    assert joined.status_code == 400 and joined.json()["errors"]["groups"]


def test_requests_are_counted_per_endpoint(http, ci):
    http.post("/members/optins", json={"email": "o@example.com", "optinConfirmUrl": "https://x"})
    http.get("/members/o@example.com")
    http.get("/members/O@example.com")
    counts = ci.request_counts()
    assert counts == {"POST /members/optins": 1, "GET /members/{key}": 2}
    assert ci.request_count("GET", "/members/{key}") == 2
