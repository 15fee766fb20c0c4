"""Flexmail emulator over real sockets (FM-A1..FM-A13): Basic auth, HAL collections and paging,
problem+json refusals, blacklisting on unsubscribe, interest subscriptions, async imports,
webhook deliveries with retries and redelivery, legacy bounces, 60/min and the monthly cap."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from sandbox.credentials import SANDBOX_ENV
from sandbox.flexmail import (
    FLEXMAIL_ACCOUNT_ID,
    FLEXMAIL_LEGACY_TOKEN,
    FLEXMAIL_TOKEN,
    IMPORT_DELAY_ENV,
    MONTHLY_DETAIL,
    SEED_BLACKLISTED,
    SEED_CONTACTS,
    FlexmailState,
)
from sandbox.flexmail_webhooks import RETRY_DELAYS, RETRY_DELAYS_ENV, new_sender
from sandbox.server import SandboxServer
from tests.asgi import served

BASE = "/flexmail"
HAL = "application/hal+json"
HOOK_TOKEN = SANDBOX_ENV["MEMBERFLOW_FLEXMAIL_WEBHOOK_TOKEN"]


@pytest.fixture(scope="module")
def sandbox():
    with SandboxServer(seed=3, customers=30, days=10, rate_limits=False) as server:
        yield server


@pytest.fixture
def fm(sandbox) -> FlexmailState:
    state = sandbox.emulator("flexmail")
    state.reset(monthly=True)
    state.import_delay = 0.0
    state.retry_delays = (0.01, 0.01, 0.01)
    return state


@pytest.fixture
def http(sandbox, fm) -> Iterator[httpx.Client]:
    headers = {"Accept": HAL}
    auth = (FLEXMAIL_ACCOUNT_ID, FLEXMAIL_TOKEN)
    with httpx.Client(
        base_url=f"{sandbox.url}{BASE}", headers=headers, auth=auth, timeout=10
    ) as client:
        yield client


def new_contact(http: httpx.Client, email: str, **extra) -> int:
    body = {"email": email, "language": "nl", "source": 1, "first_name": "Lotte", "name": "Maes"}
    answer = http.post("/contacts", json=body | extra)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def items(answer: httpx.Response) -> list[dict]:
    assert answer.status_code == 200, answer.text
    return answer.json().get("_embedded", {}).get("item", [])


def assert_problem(answer: httpx.Response, status: int, detail: str | None = None) -> dict:
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body = answer.json()
    assert {"type", "title", "status", "detail"} <= set(body) and body["status"] == status
    if detail is not None:
        assert body["detail"] == detail
    return body


def paths(answer: httpx.Response) -> dict[str, str]:
    """propertyPath -> message of a 422 (FM-A11)."""
    body = assert_problem(answer, 422)
    return {v["propertyPath"]: v["message"] for v in body["violations"]}


# -- auth, format, paging (section 1, FM-A1, FM-A11) ---------------------------------------------
def test_demo_credentials_are_exported_and_basic_auth_is_checked(sandbox, http):
    assert SANDBOX_ENV["MEMBERFLOW_FLEXMAIL_ACCOUNT_ID"] == FLEXMAIL_ACCOUNT_ID
    assert SANDBOX_ENV["MEMBERFLOW_FLEXMAIL_TOKEN"] == FLEXMAIL_TOKEN
    assert SANDBOX_ENV["MEMBERFLOW_FLEXMAIL_LEGACY_TOKEN"] == FLEXMAIL_LEGACY_TOKEN
    me = http.get("/")
    assert me.status_code == 200 and me.json()["user"]["id"] == int(FLEXMAIL_ACCOUNT_ID)
    url = f"{sandbox.url}{BASE}/sources?limit=1"
    for auth in (
        None,
        (FLEXMAIL_ACCOUNT_ID, "wrong"),
        (f"D-{FLEXMAIL_ACCOUNT_ID}", FLEXMAIL_TOKEN),  # the prefix is stripped by clients
        (FLEXMAIL_ACCOUNT_ID, FLEXMAIL_LEGACY_TOKEN),  # the legacy token is not a REST token
    ):
        refused = httpx.get(url, auth=auth)
        assert_problem(refused, 401)
        assert FLEXMAIL_TOKEN not in refused.text


def test_collections_are_hal_and_an_empty_one_has_no_embedded(http):
    sources = http.get("/sources")
    assert sources.headers["content-type"].startswith(HAL)
    assert sources.json() == {
        "total": 1,
        "_embedded": {
            "item": [{"id": 1, "name": "Admin", "_links": {"self": {"href": "/sources/1"}}}]
        },
        "_links": {"self": {"href": "/sources"}},
    }
    empty = http.get("/contacts", params={"email": "niemand@nergens.be"})
    assert empty.json() == {
        "total": 0,
        "_links": {"self": {"href": "/contacts?email=niemand%40nergens.be"}},
    }
    seeded = items(http.get("/contacts", params={"email": SEED_CONTACTS[0][0]}))
    assert seeded[0]["_links"] == {
        "self": {"href": f"/contacts/{seeded[0]['id']}"},
        "sources": {"href": f"/contacts/{seeded[0]['id']}/sources"},
    }


def test_reference_data_the_client_reads(http):
    assert http.get("/account-contact-languages").json() == {"languages": ["nl", "fr", "en", "de"]}
    fields = {f["placeholder"]: f for f in items(http.get("/custom-fields"))}
    assert fields["acc_software"]["type"] == "free_text"
    assert fields["klant_sinds"]["type"] == "date"
    assert fields["aantal_werknemers"]["type"] == "numeric"
    assert fields["diensten"]["type"] == "multiple_choice"
    assert all(isinstance(f["id"], str) for f in fields.values())
    interests = items(http.get("/interests"))
    assert {"Fiscaliteit", "Btw", "Sociaal recht"} <= {i["name"] for i in interests}
    assert set(interests[0]) >= {"id", "name", "label", "description", "visibility", "_links"}
    assert items(http.get("/segments"))[0]["number_of_contacts"] == len(SEED_CONTACTS)
    assert items(http.get("/opt-in-forms"))[0]["name"]


def test_accept_and_content_type_are_json_or_hal(http):
    assert http.get("/sources", headers={"Accept": "application/json"}).status_code == 200
    assert_problem(http.get("/sources", headers={"Accept": "text/xml"}), 406)
    text = http.post("/contacts", content=b"email=a@b.be", headers={"Content-Type": "text/plain"})
    assert_problem(text, 415)
    assert_problem(
        http.post("/contacts", content=b"{", headers={"Content-Type": "application/json"}), 400
    )
    assert_problem(http.get("/no-such-thing"), 404)
    assert_problem(http.put("/sources", json={}), 405)


def test_paging_with_limit_offset_and_total(http):
    for n in range(7):
        new_contact(http, f"pagina{n}@voorbeeld.be")
    total = len(SEED_CONTACTS) + 7
    seen: list[int] = []
    offset = 0
    while True:
        page = http.get("/contacts", params={"limit": 3, "offset": offset}).json()
        assert page["total"] == total
        seen += [c["id"] for c in page.get("_embedded", {}).get("item", [])]
        if page["total"] <= offset + 3:
            assert "next" not in page["_links"]
            break
        assert page["_links"]["next"]["href"] == f"/contacts?limit=3&offset={offset + 3}"
        offset += 3
    assert len(seen) == len(set(seen)) == total
    assert paths(http.get("/contacts", params={"limit": 0})) == {
        "limit": "This value should be between 1 and 500."
    }
    assert "limit" in paths(http.get("/contacts", params={"limit": 501}))
    assert len(items(http.get("/contacts", params={"limit": 500}))) == total
    assert_problem(http.get("/contacts", params={"limit": "ten"}), 400)
    assert "offset" in paths(http.get("/contacts", params={"offset": -1}))


# -- contacts (section 2.1, FM-A2..A4, FM-A6) -----------------------------------------------------
def test_create_answers_201_with_location_and_id_then_reads_back(http, fm):
    body = {
        "email": "lotte.maes@maes-advies.be",
        "language": "nl",
        "source": 1,
        "first_name": "Lotte",
        "name": "Maes",
        "custom_fields": {
            "acc_software": "Exact Online",
            "klant_sinds": "2019-03-01",
            "aantal_werknemers": 4,
            "diensten": ["boekhouding", "fiscaliteit"],
        },
    }
    created = http.post("/contacts", json=body)
    assert created.status_code == 201
    cid = created.json()["id"]
    assert created.json() == {"id": cid} and isinstance(cid, int)
    assert created.headers["location"] == f"/contacts/{cid}"
    read = http.get(f"/contacts/{cid}").json()
    assert {k: read[k] for k in body if k != "source"} == {
        k: v for k, v in body.items() if k != "source"
    }
    assert items(http.get(f"/contacts/{cid}/sources"))[0]["name"] == "Admin"
    assert fm.contact("lotte.maes@maes-advies.be")["id"] == cid


def test_uppercase_email_is_422(http):
    answer = http.post("/contacts", json={"email": "Lotte@Maes.be", "language": "nl", "source": 1})
    assert paths(answer) == {"email": "This value should be lowercase."}


def test_existing_and_blacklisted_emails_are_409(http):
    new_contact(http, "dubbel@voorbeeld.be")
    again = http.post(
        "/contacts", json={"email": "dubbel@voorbeeld.be", "language": "fr", "source": 1}
    )
    assert_problem(again, 409, "Contact already exists")
    blocked = {"email": SEED_BLACKLISTED[0], "language": "nl", "source": 1}
    assert_problem(http.post("/contacts", json=blocked), 409, "Contact is blacklisted")


def test_every_invalid_field_is_a_violation(http):
    answer = http.post(
        "/contacts",
        json={
            "email": "geen-adres",
            "language": "es",
            "last_name": "Maes",
            "custom_fields": {
                "onbekend": "x",
                "klant_sinds": "01/03/2019",
                "aantal_werknemers": "4",
                "diensten": "boekhouding",
                "acc_software": None,
            },
        },
    )
    assert set(paths(answer)) == {
        "email",
        "language",
        "source",
        "last_name",
        "custom_fields.onbekend",
        "custom_fields.klant_sinds",
        "custom_fields.aantal_werknemers",
        "custom_fields.diensten",
        "custom_fields.acc_software",
    }
    unknown_source = {"email": "a@voorbeeld.be", "language": "nl", "source": 2}
    assert paths(http.post("/contacts", json=unknown_source)) == {"source": "Source not found."}
    bad_date = {
        "email": "a@voorbeeld.be",
        "language": "nl",
        "source": 1,
        "custom_fields": {"klant_sinds": "2019-02-30"},
    }
    assert set(paths(http.post("/contacts", json=bad_date))) == {"custom_fields.klant_sinds"}
    assert_problem(http.post("/contacts", json=["a@voorbeeld.be"]), 400)


def test_null_in_a_standard_field_is_refused_like_a_null_custom_field(http, fm):
    nulls = {"email": "leeg@voorbeeld.be", "language": "nl", "source": 1, "first_name": None}
    assert paths(http.post("/contacts", json=nulls)) == {
        "first_name": "This value should not be null."
    }
    made = new_contact(http, "leeg@voorbeeld.be")
    assert "name" in paths(http.patch(f"/contacts/{made}", json={"name": None}))
    http.post("/contacts/imports", json={"id": "imp-null"})
    rows = [record("null1@voorbeeld.be", name=None), record("null2@voorbeeld.be")]
    http.post("/contacts/imports/imp-null/records", json=rows)
    http.patch("/contacts/imports/imp-null", json={"status": "queued"})
    done = http.get("/contacts/imports/imp-null").json()
    assert done["report"] == {"total_added": 1, "total_updated": 0, "total_ignored": 1}
    assert fm.contact("null1@voorbeeld.be") is None


def test_create_can_answer_with_only_a_location(sandbox, http, fm):
    assert control(sandbox, "/settings", create_empty_body=True).status_code == 200
    body = {"email": "kaal@voorbeeld.be", "language": "nl", "source": 1}
    answer = http.post("/contacts", json=body)
    assert answer.status_code == 201 and answer.content == b""
    assert answer.headers["Location"] == f"/contacts/{fm.contact('kaal@voorbeeld.be')['id']}"
    fm.reset()
    assert http.post("/contacts", json=body).json()["id"] == fm.contact(body["email"])["id"]


def test_patch_put_and_delete(http):
    cid = new_contact(http, "wijzig@voorbeeld.be", custom_fields={"kantoor": "Gent"})
    patched = http.patch(
        f"/contacts/{cid}",
        json={"first_name": "Ruben", "custom_fields": {"acc_software": "Octopus"}},
    )
    assert patched.status_code == 200
    assert patched.json()["first_name"] == "Ruben" and patched.json()["name"] == "Maes"
    assert patched.json()["custom_fields"] == {"kantoor": "Gent", "acc_software": "Octopus"}
    assert set(paths(http.patch(f"/contacts/{cid}", json={"email": "x@voorbeeld.be"}))) == {"email"}
    assert set(paths(http.put(f"/contacts/{cid}", json={"email": "wijzig@voorbeeld.be"}))) == {
        "first_name",
        "name",
        "language",
    }
    put = http.put(
        f"/contacts/{cid}",
        json={
            "email": "nieuw@voorbeeld.be",
            "first_name": "Ruben",
            "name": "Claes",
            "language": "fr",
        },
    )
    assert put.status_code == 200 and put.json()["email"] == "nieuw@voorbeeld.be"
    assert put.json()["custom_fields"]["kantoor"] == "Gent"  # [I] kept when not sent
    other = new_contact(http, "ander@voorbeeld.be")
    taken = {"email": "nieuw@voorbeeld.be", "first_name": "A", "name": "B", "language": "nl"}
    assert_problem(http.put(f"/contacts/{other}", json=taken), 409, "Contact already exists")
    assert http.delete(f"/contacts/{cid}").status_code == 204
    assert_problem(http.get(f"/contacts/{cid}"), 404)
    assert_problem(http.delete(f"/contacts/{cid}"), 404)
    assert_problem(http.get("/contacts/abc"), 404)
    assert items(http.get("/contacts", params={"email": "nieuw@voorbeeld.be"})) == []


def test_an_unsubscribed_contact_vanishes_and_cannot_be_recreated(http, fm):
    cid = new_contact(http, "weg@voorbeeld.be")
    before = http.get("/contacts").json()["total"]
    assert http.post(f"/contacts/{cid}/unsubscribe").status_code == 204
    assert http.get("/contacts").json()["total"] == before - 1
    assert cid not in [c["id"] for c in items(http.get("/contacts", params={"limit": 500}))]
    assert http.get("/contacts", params={"email": "weg@voorbeeld.be"}).json()["total"] == 0
    for answer in (
        http.get(f"/contacts/{cid}"),
        http.patch(f"/contacts/{cid}", json={"name": "X"}),
        http.delete(f"/contacts/{cid}"),
        http.post(f"/contacts/{cid}/unsubscribe"),
    ):
        assert_problem(answer, 404)
    again = {"email": "weg@voorbeeld.be", "language": "nl", "source": 1}
    assert_problem(http.post("/contacts", json=again), 409, "Contact is blacklisted")
    assert fm.contact("weg@voorbeeld.be") is None


def test_interest_subscriptions_add_409_list_and_remove(http, fm):
    cid = new_contact(http, "belang@voorbeeld.be")
    by_name = {i["name"]: i["id"] for i in items(http.get("/interests"))}
    url = f"/contacts/{cid}/interest-subscriptions"
    added = http.post(url, json={"interest_id": by_name["Btw"]})
    assert added.status_code == 201
    assert added.json()["interest_id"] == by_name["Btw"]
    assert_problem(http.post(url, json={"interest_id": by_name["Btw"]}), 409)
    assert http.post(url, json={"interest_id": by_name["Fiscaliteit"]}).status_code == 201
    listed = http.get(url).json()
    assert listed["total"] == 2
    assert [s["interest_id"] for s in listed["_embedded"]["item"]] == [
        by_name["Btw"],
        by_name["Fiscaliteit"],
    ]
    assert fm.interest_names("belang@voorbeeld.be") == {"Btw", "Fiscaliteit"}
    assert http.delete(f"{url}/{by_name['Btw']}").status_code == 204
    assert_problem(http.delete(f"{url}/{by_name['Btw']}"), 404)
    assert "interest_id" in paths(http.post(url, json={"interest_id": "int-99"}))
    assert "interest_id" in paths(http.post(url, json={"interest_id": 1}))
    assert_problem(http.get("/contacts/1/interest-subscriptions"), 404)


# -- bulk imports (FM-A8) --------------------------------------------------------------------------
def record(email: str, **extra) -> dict:
    return {
        "email": email,
        "first_name": "Emma",
        "name": "Wouters",
        "language": "nl",
        "custom_fields": {},
        "sources": [1],
        "interest_labels": [],
        "preferences": [],
    } | extra


def test_import_lifecycle_adds_updates_and_ignores(http, fm):
    new_contact(http, "bestaand@voorbeeld.be")
    created = http.post(
        "/contacts/imports", json={"id": "imp-1", "resubscribe_blacklisted_contacts": False}
    )
    assert created.status_code == 201
    assert created.json()["status"] == "idle"
    assert_problem(http.post("/contacts/imports", json={"id": "imp-1"}), 409)
    too_many = [record(f"r{n}@voorbeeld.be") for n in range(1001)]
    assert_problem(http.post("/contacts/imports/imp-1/records", json=too_many), 422)
    batch = [
        record("nieuw1@voorbeeld.be"),
        record("nieuw2@voorbeeld.be", custom_fields={"aantal_werknemers": 3}),
        record("bestaand@voorbeeld.be", first_name="Gewijzigd"),
        record(SEED_BLACKLISTED[0]),  # blacklisted: ignored without resubscribe
        record("HOOFD@voorbeeld.be"),  # uppercase: invalid, ignored
        record("veld@voorbeeld.be", custom_fields={"onbekend": 1}),  # invalid
    ]
    assert http.post("/contacts/imports/imp-1/records", json=batch[:3]).status_code == 201
    assert http.post("/contacts/imports/imp-1/records", json=batch[3:]).status_code == 201
    assert http.get("/contacts/imports/imp-1").json()["status"] == "idle"
    assert "status" in paths(http.patch("/contacts/imports/imp-1", json={"status": "completed"}))
    assert http.patch("/contacts/imports/imp-1", json={"status": "queued"}).status_code == 200
    assert_problem(http.post("/contacts/imports/imp-1/start"), 409)
    assert_problem(http.post("/contacts/imports/imp-1/records", json=[record("x@y.be")]), 409)
    done = http.get("/contacts/imports/imp-1").json()
    assert done["status"] == "completed"
    assert done["report"] == {"total_added": 2, "total_updated": 1, "total_ignored": 3}
    assert fm.contact("nieuw2@voorbeeld.be")["custom_fields"] == {"aantal_werknemers": 3}
    assert fm.contact("bestaand@voorbeeld.be")["first_name"] == "Gewijzigd"
    assert fm.contact(SEED_BLACKLISTED[0]) is None
    assert_problem(http.get("/contacts/imports/onbekend"), 404)


def test_an_import_stays_queued_until_its_delay_has_passed(sandbox, http, fm):
    now = [1_790_000_000.0]
    fm.clock = lambda: now[0]
    assert control(sandbox, "/settings", import_delay=6).status_code == 200
    try:
        http.post(
            "/contacts/imports", json={"id": "imp-2", "resubscribe_blacklisted_contacts": True}
        )
        http.post("/contacts/imports/imp-2/records", json=[record(SEED_BLACKLISTED[0])])
        assert http.post("/contacts/imports/imp-2/start").json()["status"] == "queued"
        now[0] += 5
        assert http.get("/contacts/imports/imp-2").json()["status"] == "queued"
        assert fm.contact(SEED_BLACKLISTED[0]) is None
        now[0] += 1
        done = http.get("/contacts/imports/imp-2").json()
        assert done["status"] == "completed" and done["report"]["total_updated"] == 1
        assert fm.contact(SEED_BLACKLISTED[0]) is not None  # resubscribed on request only
        assert FlexmailState(env={IMPORT_DELAY_ENV: "0"}).import_delay == 0.0
        assert FlexmailState(env={}).import_delay == 6.0
    finally:
        fm.clock = __import__("time").time


def queued_import(http: httpx.Client, import_id: str) -> None:
    http.post("/contacts/imports", json={"id": import_id})
    http.post(f"/contacts/imports/{import_id}/records", json=[record(f"{import_id}@x.be")])


def test_an_import_can_be_started_one_way_only(sandbox, http, fm):
    assert control(sandbox, "/settings", import_start="post").status_code == 200
    queued_import(http, "imp-post")
    assert_problem(http.patch("/contacts/imports/imp-post", json={"status": "queued"}), 405)
    assert http.post("/contacts/imports/imp-post/start").json()["status"] == "queued"
    control(sandbox, "/settings", import_start="patch")
    queued_import(http, "imp-patch")
    assert_problem(http.post("/contacts/imports/imp-patch/start"), 404)
    answer = http.patch("/contacts/imports/imp-patch", json={"status": "queued"})
    assert answer.status_code == 200
    assert control(sandbox, "/settings", import_start="put").status_code == 400
    fm.reset()
    assert fm.import_start == "both"


def test_an_import_can_end_failed_without_adding_anyone(sandbox, http, fm):
    assert control(sandbox, "/settings", import_outcome="failed").status_code == 200
    queued_import(http, "imp-fail")
    http.post("/contacts/imports/imp-fail/start")
    done = http.get("/contacts/imports/imp-fail").json()
    assert done["status"] == "failed" and done["message"]
    assert fm.contact("imp-fail@x.be") is None


# -- webhooks (section 3, FM-A9) -------------------------------------------------------------------
class Receiver:
    """A local ASGI receiver answering the scripted statuses, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.bodies: list[dict] = []
        self.app = Starlette(routes=[Route("/hooks/flexmail", self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> Response:
        self.bodies.append(json.loads(await request.body()))
        return Response(status_code=self.statuses.pop(0) if self.statuses else 200)


def register(http: httpx.Client, event: str, url: str, token: str = HOOK_TOKEN) -> int:
    body = {"event_name": event, "target_url": url, "verification_token": token}
    answer = http.post("/webhooks", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def control(sandbox, path: str, **body) -> httpx.Response:
    return httpx.post(f"{sandbox.url}/_sandbox/flexmail{path}", json=body)


def test_webhook_events_and_registration(http):
    assert http.get("/webhook-events").json() == {
        "events": [
            "contact.unsubscribed",
            "contact.clicked",
            "contact.bounced",
            "contact.created",
            "contact.updated",
        ]
    }
    assert http.get("/webhooks").json() == {"total": 0, "_links": {"self": {"href": "/webhooks"}}}
    wid = register(http, "contact.clicked", "http://127.0.0.1:9/hook")
    one = http.get(f"/webhooks/{wid}").json()
    assert {k: one[k] for k in ("event_name", "target_url", "verification_token", "enabled")} == {
        "event_name": "contact.clicked",
        "target_url": "http://127.0.0.1:9/hook",
        "verification_token": HOOK_TOKEN,
        "enabled": True,
    }
    assert http.patch(f"/webhooks/{wid}", json={"enabled": False}).json()["enabled"] is False
    assert items(http.get("/webhooks"))[0]["id"] == wid
    bad = http.post("/webhooks", json={"event_name": "contact.opened", "target_url": "ftp://x"})
    assert set(paths(bad)) == {"event_name", "target_url"}
    generated = http.post(
        "/webhooks", json={"event_name": "contact.bounced", "target_url": "http://127.0.0.1:9/"}
    )
    assert len(generated.json()["verification_token"]) >= 16
    assert http.delete(f"/webhooks/{wid}").status_code == 204
    assert_problem(http.get(f"/webhooks/{wid}"), 404)


def test_unsubscribe_click_and_bounce_are_delivered_with_a_retry_after_a_500(sandbox, http, fm):
    receiver = Receiver([500])
    with served(receiver.app) as url:
        target = f"{url}/hooks/flexmail"
        for event in ("contact.unsubscribed", "contact.clicked", "contact.bounced"):
            register(http, event, target)
        cid = new_contact(http, "klik@voorbeeld.be")
        clicked = control(
            sandbox,
            "/click",
            email="klik@voorbeeld.be",
            campaign_id=77,
            campaign_name="Nieuwsbrief november",
            link_url="https://x.be/btw",
        )
        assert clicked.json() == {"ok": True, "contact_id": cid}
        fm.wait_for_deliveries()
        control(sandbox, "/bounce", email="klik@voorbeeld.be", bounce_type="soft", campaign_id=77)
        fm.wait_for_deliveries()
        control(sandbox, "/unsubscribe", email="klik@voorbeeld.be")
        deliveries = fm.wait_for_deliveries()
    assert [d.attempts for d in deliveries] == [[500, 200], [200], [200]]
    assert all(d.outcome == "delivered" for d in deliveries)
    first, *rest = receiver.bodies
    assert first == rest[0], "the retry carries the same body"
    assert [b["event_name"] for b in rest] == [
        "contact.clicked",
        "contact.bounced",
        "contact.unsubscribed",
    ]
    assert all(b["verification_token"] == HOOK_TOKEN for b in rest)
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
    assert all(stamp.match(b["occurred_at"]) for b in rest)
    assert rest[0]["data"] == {
        "contact_id": cid,
        "email": "klik@voorbeeld.be",
        "campaign_id": 77,
        "campaign_name": "Nieuwsbrief november",
        "link_url": "https://x.be/btw",
    }
    assert rest[1]["data"] == {
        "contact_id": cid,
        "email": "klik@voorbeeld.be",
        "bounce_type": "soft",
        "campaign_id": 77,
    }
    assert rest[2]["data"] == {"contact_id": cid, "email": "klik@voorbeeld.be"}
    assert http.get("/contacts", params={"email": "klik@voorbeeld.be"}).json()["total"] == 0


def test_redeliver_sends_the_same_body_again_and_disabled_hooks_get_nothing(sandbox, http, fm):
    receiver = Receiver()
    with served(receiver.app) as url:
        register(http, "contact.clicked", f"{url}/hooks/flexmail")
        off = register(http, "contact.unsubscribed", f"{url}/hooks/flexmail")
        http.patch(f"/webhooks/{off}", json={"enabled": False})
        cid = new_contact(http, "twee@voorbeeld.be")
        control(sandbox, "/click", email="twee@voorbeeld.be")
        fm.wait_for_deliveries()
        again = control(sandbox, "/redeliver", delivery_id="last", times=2)
        assert again.status_code == 200 and len(again.json()["deliveries"]) == 2
        http.post(f"/contacts/{cid}/unsubscribe")
        fm.wait_for_deliveries()
    assert len(receiver.bodies) == 3
    assert receiver.bodies[0] == receiver.bodies[1] == receiver.bodies[2]
    assert receiver.bodies[0]["event_name"] == "contact.clicked"
    stats = httpx.get(f"{sandbox.url}/_sandbox/flexmail/stats").json()
    assert [d["redelivery_of"] for d in stats["deliveries"]] == [None, 1, 1]
    assert control(sandbox, "/redeliver", delivery_id=99).status_code == 404


def test_a_receiver_that_keeps_failing_gets_three_retries_on_the_schedule(sandbox, http, fm):
    assert RETRY_DELAYS == (60.0, 300.0, 900.0)
    waits: list[float] = []
    fm.retry_delays, fm.sleep = RETRY_DELAYS, waits.append
    receiver = Receiver([500] * 10)
    try:
        with served(receiver.app) as url:
            register(http, "contact.unsubscribed", f"{url}/hooks/flexmail")
            control(sandbox, "/unsubscribe", email=SEED_CONTACTS[0][0])
            [delivery] = fm.wait_for_deliveries()
    finally:
        fm.sleep = __import__("time").sleep
    assert delivery.attempts == [500, 500, 500, 500] and delivery.outcome == "failed"
    assert waits == [60.0, 300.0, 900.0]
    assert new_sender({RETRY_DELAYS_ENV: "0.1,0.2"}).retry_delays == (0.1, 0.2)


def test_control_routes_refuse_unknown_addresses_and_create_flexmail_only_contacts(sandbox, http):
    assert control(sandbox, "/unsubscribe", email="onbekend@voorbeeld.be").status_code == 404
    assert control(sandbox, "/click").status_code == 400
    made = control(
        sandbox,
        "/contacts",
        email="formulier@voorbeeld.be",
        first_name="Noor",
        name="De Smet",
        language="nl",
    )
    assert made.status_code == 200
    found = items(http.get("/contacts", params={"email": "formulier@voorbeeld.be"}))
    assert found[0]["name"] == "De Smet"
    assert items(http.get(f"/contacts/{found[0]['id']}/sources")) == []
    upper = control(sandbox, "/contacts", email="Hoofd@voorbeeld.be", language="nl")
    assert upper.status_code == 400


# -- legacy bounces (FM-A12) ----------------------------------------------------------------------
def test_legacy_bounces_need_the_legacy_headers_and_filter_by_since(sandbox, http, fm):
    url = f"{sandbox.url}{BASE}/legacy/bounces"
    headers = {"userId": FLEXMAIL_ACCOUNT_ID, "userToken": FLEXMAIL_LEGACY_TOKEN}
    seeded = httpx.get(url, params={"since": "2000-01-01T00:00:00Z"}, headers=headers)
    assert seeded.status_code == 200
    assert seeded.json()[0]["email"] == SEED_CONTACTS[3][0]
    assert set(seeded.json()[0]) == {"email", "bounce_type", "bounced_at", "campaign_id"}
    cutoff = "2100-01-01T00:00:00+00:00"
    assert httpx.get(url, params={"since": cutoff}, headers=headers).json() == []
    control(sandbox, "/bounce", email=SEED_CONTACTS[1][0], bounce_type="hard", campaign_id=9)
    recent = httpx.get(url, params={"since": seeded.json()[0]["bounced_at"]}, headers=headers)
    assert [(b["email"], b["bounce_type"]) for b in recent.json()][-1] == (
        SEED_CONTACTS[1][0],
        "hard",
    )
    wrong = {"userId": FLEXMAIL_ACCOUNT_ID, "userToken": FLEXMAIL_TOKEN}
    assert_problem(httpx.get(url, params={"since": cutoff}, headers=wrong), 401)
    assert_problem(httpx.get(url, params={"since": "gisteren"}, headers=headers), 400)


# -- limits and call counts (FM-A10) --------------------------------------------------------------
def test_sixty_a_minute_answers_429_with_retry_after(http, fm):
    now = [1_790_000_000.0]
    fm.limiter.clock = lambda: now[0]
    try:
        fm.set_per_minute(3)
        for _ in range(3):
            assert http.get("/sources").status_code == 200
        refused = http.get("/sources")
        assert_problem(refused, 429)
        assert refused.headers["retry-after"] == "60"
        now[0] += 30
        assert http.get("/contacts").headers.get("retry-after") == "30"
        now[0] += 31
        assert http.get("/sources").status_code == 200
        assert FlexmailState(rate_limits=True).limiter.limit == 60
        assert FlexmailState(rate_limits=False).limiter.limit is None
    finally:
        fm.limiter.clock = __import__("time").time


def test_the_monthly_cap_answers_429_without_retry_after(sandbox, http, fm):
    fm.set_monthly(cap=100, used=98)
    assert http.get("/sources").status_code == 200
    assert http.get("/sources").status_code == 200
    refused = http.get("/sources")
    assert_problem(refused, 429, MONTHLY_DETAIL)
    assert "retry-after" not in refused.headers
    assert control(sandbox, "/settings", monthly_used=0).status_code == 200
    assert http.get("/sources").status_code == 200
    fm.reset()
    assert fm.monthly_used[fm.month()] == 1, "the month's count outlives a reset"
    assert FlexmailState().monthly_cap == 100_000


def test_calls_are_counted_per_endpoint(sandbox, http, fm):
    cid = new_contact(http, "teller@voorbeeld.be")
    http.get(f"/contacts/{cid}")
    http.get(f"/contacts/{cid}")
    httpx.get(f"{sandbox.url}{BASE}/contacts/{cid}")  # refused, but still a request
    assert fm.request_count("POST /contacts") == 1
    assert fm.request_count("GET /contacts/{id}") == 3
    stats = httpx.get(f"{sandbox.url}/_sandbox/flexmail/stats").json()
    assert stats["requests"]["GET /contacts/{id}"] == 3
    assert stats["calls_this_month"] == 3  # the 401 is not an API call of the account
    assert stats["contacts"] == len(SEED_CONTACTS) + 1 and stats["blacklisted"] == 1
    summary = httpx.get(f"{sandbox.url}/_sandbox/summary").json()
    assert summary["flexmail"]["contacts"] == len(SEED_CONTACTS) + 1
