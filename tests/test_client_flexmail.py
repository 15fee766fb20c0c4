"""FlexmailClient (FM-A1..FM-A13) against a small in-test fake of Flexmail's REST API
(httpx.MockTransport): HAL parsing, every create branch, interests, the bulk import, listing,
webhook verification and parsing, webhook registration, legacy bounces, the monthly budget and
the monthly 429, and the language map both ways."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

import resources.flexmail as flexmail_module
from resources.base import VendorError
from resources.call_ledger import MonthlyBudgetSpent, MonthlyCallLedger
from resources.feedback import Feedback
from resources.flexmail import FlexmailClient, FlexmailTarget
from resources.flexmail_webhook import EVENTS, FlexmailFeedbackWebhook
from resources.flexmail_wire import LanguageMap, hal_collection, wire_contact
from resources.registry import parse_target
from resources.target import MemberChange, WritePolicy
from resources.webhooks import WebhookRefused
from sandbox.flexmail import (
    EMULATOR,
    FLEXMAIL_ACCOUNT_ID,
    FLEXMAIL_LEGACY_TOKEN,
    FLEXMAIL_TOKEN,
    FLEXMAIL_WEBHOOK_TOKEN,
    MONTHLY_DETAIL,
    SEED_BLACKLISTED,
    SEED_CONTACTS,
    FlexmailState,
)
from tests.asgi import served

ACCOUNT = "D-4711"
TOKEN = "pat-secret-token"
LEGACY = "legacy-secret"
HOOK_TOKEN = "verify-me"
POLICY = WritePolicy(match_on="email", import_type="create_and_update", reimport_unsubscribed=False)
LANGUAGES = {"N": "nl", "F": "fr", "E": "en", "D": "de"}
MONTHLY = {
    "type": "about:blank",
    "title": "Too Many Requests",
    "status": 429,
    "detail": "Monthly API call limit reached",
}


def problem(status: int, detail: str, **extra: Any) -> httpx.Response:
    body = {"type": "about:blank", "title": "Error", "status": status, "detail": detail, **extra}
    return httpx.Response(status, json=body, headers={"Content-Type": "application/problem+json"})


def hal(items: list[dict[str, Any]], total: int | None = None) -> dict[str, Any]:
    """FM-A1: `_embedded` left out when the collection is empty."""
    body: dict[str, Any] = {"total": len(items) if total is None else total, "_links": {}}
    if items:
        body["_embedded"] = {"item": items}
    return body


class FakeFlexmail:
    """Just enough of FM-A1..FM-A12 to drive the client; records every request."""

    def __init__(self) -> None:
        self.contacts: dict[int, dict[str, Any]] = {}
        self.blacklist: set[str] = set()
        self.subscriptions: set[tuple[int, str]] = set()
        self.interests = {"1": "Fiscaliteit", "2": "Btw", "3": "Sociaal recht"}
        self.custom = [
            {"id": "10", "name": "Software", "placeholder": "acc_software", "type": "free_text"},
            {"id": "11", "name": "Klant sinds", "placeholder": "klant_sinds", "type": "date"},
            {"id": "12", "name": "Werknemers", "placeholder": "aantal", "type": "numeric"},
            {"id": "13", "name": "Diensten", "placeholder": "diensten", "type": "multiple_choice"},
        ]
        self.webhooks: list[dict[str, Any]] = []
        self.imports: dict[str, dict[str, Any]] = {}
        self.import_polls = 2
        self.import_end = "completed"  # or "failed"
        self.start_methods = {"PATCH", "POST"}  # FM-A8: how an import may be started
        self.refuse_imports = False  # 422 on creating an import
        self.create_answer = "body"  # FM-A2: "body", "location", "absolute" or "empty"
        self.languages: list[Any] = ["nl", "fr", "en", "de"]
        self.totals = True  # False: collections without `total` (section 2.4 is [C], still)
        self.interest_failures = 0  # 500s answered to the next interest POSTs
        self.bounces: list[dict[str, Any]] = []
        self.requests: list[httpx.Request] = []
        self.forced: list[httpx.Response] = []  # answered first, one per request
        self._next = 100

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def calls(self, method: str, prefix: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.method == method and r.url.path.startswith(prefix)]

    def add(self, email: str, **fields: Any) -> int:
        self._next += 1
        self.contacts[self._next] = {
            "id": self._next,
            "email": email,
            "first_name": None,
            "name": None,
            "language": "nl",
            "custom_fields": {},
            **fields,
        }
        return self._next

    def by_email(self, email: str) -> dict[str, Any] | None:
        return next((c for c in self.contacts.values() if c["email"] == email), None)

    # --- routing -------------------------------------------------------------------------------

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.forced:
            return self.forced.pop(0)
        if request.url.path == "/legacy/bounces":
            ok = request.headers.get("userId") == "4711" and request.headers.get("userToken")
            return httpx.Response(200, json=self.bounces) if ok else problem(401, "bad token")
        expected = base64.b64encode(f"4711:{TOKEN}".encode()).decode()
        if request.headers.get("Authorization") != f"Basic {expected}":
            return problem(401, "Invalid credentials")
        body = json.loads(request.content) if request.content else None
        parts = request.url.path.strip("/").split("/")
        method = request.method
        if parts == ["sources"]:
            return httpx.Response(200, json=hal([{"id": 1, "name": "Admin"}]))
        if parts == ["account-contact-languages"]:
            return httpx.Response(200, json={"languages": self.languages})
        if parts == ["custom-fields"]:
            return httpx.Response(200, json=hal(self.custom))
        if parts == ["interests"]:
            rows = [{"id": k, "name": v} for k, v in self.interests.items()]
            return httpx.Response(200, json=hal(rows))
        if parts[0] == "webhooks":
            return self.webhook(method, parts, body)
        if parts[:2] == ["contacts", "imports"]:
            return self.import_(method, parts, body)
        if parts[0] == "contacts":
            return self.contact(request, method, parts, body)
        return problem(404, "no route")

    def contact(
        self, request: httpx.Request, method: str, parts: list[str], body: Any
    ) -> httpx.Response:
        if parts == ["contacts"] and method == "GET":
            rows = sorted(self.contacts.values(), key=lambda c: c["id"])
            if "email" in request.url.params:
                rows = [c for c in rows if c["email"] == request.url.params["email"]]
            offset = int(request.url.params.get("offset", 0))
            limit = int(request.url.params.get("limit", 500))
            page = hal(rows[offset : offset + limit], len(rows))
            if not self.totals:
                del page["total"]
            return httpx.Response(200, json=page)
        if parts == ["contacts"] and method == "POST":
            email = body["email"]
            if email != email.lower():
                return problem(
                    422,
                    "Validation failed",
                    violations=[{"propertyPath": "email", "message": "lowercase"}],
                )
            if email.endswith("@invalid"):
                violations = [{"propertyPath": "email", "message": "not a valid email"}]
                return problem(422, "Validation failed", violations=violations)
            if email in self.blacklist:
                return problem(409, "Contact is blacklisted")
            if self.by_email(email):
                return problem(409, "Contact already exists")
            new = self.add(**{k: v for k, v in body.items() if k != "source"})
            self.contacts[new]["source"] = body["source"]
            return self.created(new)
        contact = self.contacts.get(int(parts[1]))
        if contact is None:
            return problem(404, "Contact not found")
        if len(parts) == 2 and method == "PATCH":
            contact.update(body)
            return httpx.Response(200, json=contact)
        if len(parts) == 2 and method == "DELETE":
            del self.contacts[contact["id"]]
            return httpx.Response(204)
        key = (contact["id"], str((body or {}).get("interest_id") or parts[-1]))
        if method == "POST" and self.interest_failures:
            self.interest_failures -= 1
            self.subscriptions.add(key)
            return problem(500, "Internal error")  # after storing it: the retry answers 409
        if method == "POST":
            if key in self.subscriptions:
                return problem(409, "Already subscribed")
            self.subscriptions.add(key)
            return httpx.Response(201, json={})
        if key not in self.subscriptions:
            return problem(404, "Not subscribed")
        self.subscriptions.discard(key)
        return httpx.Response(204)

    def created(self, new: int) -> httpx.Response:
        """FM-A2's 201, or the variants a real server might send instead."""
        location = {"Location": f"/contacts/{new}"}
        if self.create_answer == "location":
            return httpx.Response(201, headers=location)
        if self.create_answer == "absolute":
            absolute = f"https://api.flexmail.test/contacts/{new}/"
            return httpx.Response(201, headers={"Location": absolute})
        if self.create_answer == "empty":
            return httpx.Response(201)
        return httpx.Response(201, json={"id": new}, headers=location)

    def import_(self, method: str, parts: list[str], body: Any) -> httpx.Response:
        if len(parts) == 2:
            if self.refuse_imports:
                return problem(422, "Imports are not enabled for this account")
            self.imports[body["id"]] = {"records": [], "status": "idle", "polls": 0, **body}
            return httpx.Response(201, json={"id": body["id"]})
        job = self.imports[parts[2]]
        if parts[-1] == "records":
            job["records"] += body
            return httpx.Response(201, json={})
        if method == "PATCH" or parts[-1] == "start":
            if method not in self.start_methods:
                return problem(405 if method == "PATCH" else 404, "no such route")
            job["status"] = "queued"
            return httpx.Response(200, json={"id": parts[2], "status": job["status"]})
        job["polls"] += 1
        report = {"total_added": 0, "total_updated": 0, "total_ignored": 0}
        if job["status"] == "queued" and job["polls"] >= self.import_polls:
            job["status"] = self.import_end
            for record in job["records"] if self.import_end == "completed" else []:
                email = record["email"]
                if email in self.blacklist or self.by_email(email) or email.endswith("@invalid"):
                    report["total_ignored"] += 1
                    continue  # ignored by the import
                self.add(**{k: record.get(k) for k in ("email", "first_name", "name", "language")})
                report["total_added"] += 1
            job["report"] = report
        answer = {"id": parts[2], "status": job["status"], "report": job.get("report", {})}
        return httpx.Response(200, json=answer)

    def webhook(self, method: str, parts: list[str], body: Any) -> httpx.Response:
        if method == "GET":
            return httpx.Response(200, json=hal(self.webhooks))
        if method == "POST":
            self._next += 1
            self.webhooks.append({"id": self._next, "enabled": True, **body})
            return httpx.Response(201, json={"id": self._next})
        self.webhooks = [h for h in self.webhooks if str(h["id"]) != parts[1]]
        return httpx.Response(204)


class Sleeps:
    """A sleep that only records: no test waits on the wall clock."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def fake() -> FakeFlexmail:
    return FakeFlexmail()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make(fake, sleeps, tmp_path) -> Iterator:
    made: list[FlexmailClient] = []

    def build(**kwargs: Any) -> FlexmailClient:
        options: dict[str, Any] = {
            "base_url": "https://api.flexmail.test",
            "account": ACCOUNT,
            "token": TOKEN,
            "legacy_token": LEGACY,
            "webhook_token": HOOK_TOKEN,
            "source_id": 1,
            "languages": LANGUAGES,
            "requests_per_minute": 100_000,
            "poll_seconds": 0.01,
            "budget_dir": tmp_path / "budget",
            "transport": fake.transport(),
            "sleep": sleeps,
            **kwargs,
        }
        client = FlexmailClient(**options)
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


@pytest.fixture
def client(make) -> FlexmailClient:
    return make()


def change(email: str, action: str = "create", **kwargs: Any) -> MemberChange:
    values = kwargs.pop(
        "values", {"email": email, "first_name": "Lotte", "name": "Peeters", "language": "N"}
    )
    return MemberChange(match_key=email, action=action, values=values, **kwargs)


def write(client: FlexmailClient, changes: list[MemberChange], policy=POLICY) -> dict:
    acks = list(client.write_members(changes, policy))
    assert len(acks) == len(changes)
    return {ack.match_key: ack for ack in acks}


# --- wire: HAL, languages, custom fields ---------------------------------------------------------


def test_hal_collection_with_items_without_embedded_and_unreadable():
    page = hal_collection({"total": "3", "_embedded": {"item": [{"id": 1}, "junk"]}})
    assert page.total == 3 and page.items == [{"id": 1}]
    empty = hal_collection({"total": 0, "_links": {"self": {"href": "/contacts"}}})
    assert empty.total == 0 and empty.items == []
    for bad in ([], {"_embedded": {"item": "x"}}, {"_embedded": "x"}):
        with pytest.raises(ValueError):
            hal_collection(bad)


def test_language_map_both_ways():
    languages = LanguageMap(LANGUAGES, "nl")
    assert languages.to_flexmail("F") == ("fr", True)
    assert languages.to_flexmail("e") == ("en", True)  # casefolded
    assert languages.to_flexmail("de") == ("de", True)  # already an ISO code
    assert languages.to_flexmail("X") == ("nl", False)  # unknown: the default
    assert languages.from_flexmail("fr") == "F" and languages.from_flexmail("it") == "it"


def test_wire_contact_types_custom_fields_and_drops_unknown():
    custom = {
        "klant_sinds": flexmail_module.CustomField("11", "klant_sinds", "date"),
        "aantal": flexmail_module.CustomField("12", "aantal", "numeric"),
        "diensten": flexmail_module.CustomField("13", "diensten", "multiple_choice"),
    }
    values = {
        "email": "X@Y.BE",
        "klant_sinds": "2019-03-01T10:00:00+01:00",
        "aantal": "12",
        "diensten": "Boekhouding, Fiscaal",
        "onbekend": "?",
        "first_name": None,
    }
    wire = wire_contact("X@Y.BE", values, custom, LanguageMap(LANGUAGES, "nl"), create=True)
    assert wire.body(with_email=True) == {
        "email": "x@y.be",
        "language": "nl",
        "custom_fields": {
            "klant_sinds": "2019-03-01",
            "aantal": 12,
            "diensten": ["Boekhouding", "Fiscaal"],
        },
    }
    assert [name for name, _ in wire.dropped] == ["onbekend"]


# --- creates, updates, removals ----------------------------------------------------------------


def test_create_201_sends_source_language_and_lowercase_email(client, fake):
    acks = write(
        client,
        [
            change(
                "Lotte.Peeters@Kantoor.be",
                values={
                    "email": "Lotte.Peeters@Kantoor.be",
                    "first_name": "Lotte",
                    "language": "F",
                    "acc_software": "Exact",
                },
            )
        ],
    )
    ack = acks["Lotte.Peeters@Kantoor.be"]
    assert ack.outcome == "created"
    stored = fake.contacts[int(ack.member_id)]
    assert stored["email"] == "lotte.peeters@kantoor.be" and stored["source"] == 1
    assert stored["language"] == "fr" and stored["custom_fields"] == {"acc_software": "Exact"}
    sent = fake.calls("POST", "/contacts")[0]
    assert sent.headers["Accept"] == "application/hal+json"
    assert sent.headers["Content-Type"] == "application/json"


def test_create_409_exists_is_looked_up_and_patched(client, fake):
    known = fake.add("jan@firma.be", first_name="Jan")
    ack = write(
        client, [change("jan@firma.be", values={"email": "jan@firma.be", "first_name": "Johan"})]
    )["jan@firma.be"]
    assert (ack.outcome, ack.member_id) == ("updated", str(known))
    assert fake.contacts[known]["first_name"] == "Johan"
    assert len(fake.calls("PATCH", f"/contacts/{known}")) == 1


def test_create_409_blacklisted_is_unsubscribed_and_never_patched(client, fake):
    fake.blacklist.add("weg@firma.be")
    ack = write(client, [change("weg@firma.be")])["weg@firma.be"]
    assert ack.outcome == "unsubscribed" and ack.remote.status == "unsubscribed"
    assert not fake.calls("PATCH", "/contacts") and not fake.calls("GET", "/contacts")
    assert client.run_figures()["blacklisted_skips"] == 1


def test_create_422_is_refused_with_violations(client):
    ack = write(client, [change("iemand@invalid")])["iemand@invalid"]
    assert ack.outcome == "refused"
    assert "Validation failed" in ack.reason and "email: not a valid email" in ack.reason


def test_create_only_leaves_an_existing_contact_alone(client, fake):
    fake.add("jan@firma.be")
    policy = WritePolicy(match_on="email", import_type="create_only", reimport_unsubscribed=False)
    ack = write(client, [change("jan@firma.be")], policy)["jan@firma.be"]
    assert ack.outcome == "import_type" and not fake.calls("PATCH", "/contacts")


def test_update_is_partial_and_recreates_a_contact_that_is_gone(client, fake):
    known = fake.add("an@firma.be", first_name="An", name="Claes")
    acks = write(
        client,
        [
            change(
                "an@firma.be",
                "update",
                member_id=str(known),
                values={"email": "an@firma.be", "name": "Claessens"},
            ),
            change("gone@firma.be", "update", member_id="999"),
        ],
    )
    assert acks["an@firma.be"].outcome == "updated"
    assert json.loads(fake.calls("PATCH", f"/contacts/{known}")[0].content) == {"name": "Claessens"}
    assert fake.contacts[known]["first_name"] == "An"
    assert acks["gone@firma.be"].outcome == "created"  # PATCH 404 -> POST


def test_remove_deletes_and_a_404_is_already_removed(client, fake):
    known = fake.add("weg@firma.be")
    acks = write(
        client,
        [
            change("weg@firma.be", "remove", member_id=str(known), values={}),
            change("al@firma.be", "remove", member_id="999", values={}),
        ],
    )
    assert {a.outcome for a in acks.values()} == {"removed"}
    assert known not in fake.contacts


# --- interests (FM-A7) ---------------------------------------------------------------------------


def test_interests_added_removed_409_ok_and_unknown_dropped(client, fake):
    known = fake.add("an@firma.be")
    fake.subscriptions |= {(known, "1"), (known, "3")}  # already in Fiscaliteit and Sociaal recht
    ack = write(
        client,
        [
            change(
                "an@firma.be",
                "update",
                member_id=str(known),
                values={},
                groups=("Fiscaliteit", "Btw", "Bestaat niet"),
                groups_added=("Fiscaliteit", "Btw", "Bestaat niet"),
                groups_removed=("Sociaal recht",),
            )
        ],
    )["an@firma.be"]
    assert ack.outcome == "updated"
    assert fake.subscriptions == {(known, "1"), (known, "2")}
    assert ack.dropped == (("groups", "no Flexmail interest named 'Bestaat niet': not added"),)
    assert not fake.calls("PATCH", "/contacts")  # no values moved: no PATCH
    assert client.run_figures()["interest_calls"] == 3


def test_a_created_contact_gets_all_its_groups(client, fake):
    ack = write(client, [change("nieuw@firma.be", groups=("Btw",))])["nieuw@firma.be"]
    assert (int(ack.member_id), "2") in fake.subscriptions


# --- bulk import (FM-A8) -------------------------------------------------------------------------


def test_bulk_import_then_ids_by_listing_and_single_posts_for_the_missing(
    make, fake, sleeps, monkeypatch
):
    monkeypatch.setattr(flexmail_module, "IMPORT_CHUNK", 2)
    monkeypatch.setattr(flexmail_module, "PAGE_SIZE", 2)
    client = make(bulk_threshold=3)
    fake.blacklist.add("weg@firma.be")
    emails = ["a@firma.be", "b@firma.be", "c@firma.be", "weg@firma.be", "fout@invalid"]
    changes = [change(e, groups=("Btw",) if e == "a@firma.be" else None) for e in emails]
    fake.import_polls = 3
    acks = write(client, changes)
    assert {e: acks[e].outcome for e in emails} == {
        "a@firma.be": "created",
        "b@firma.be": "created",
        "c@firma.be": "created",
        "weg@firma.be": "unsubscribed",
        "fout@invalid": "refused",
    }
    (job,) = fake.imports.values()
    assert job["resubscribe_blacklisted_contacts"] is False
    assert len(fake.calls("POST", "/contacts/imports/")) == 3  # 5 records in chunks of 2
    assert job["records"][0] == {
        "email": "a@firma.be",
        "first_name": "Lotte",
        "name": "Peeters",
        "language": "nl",
        "custom_fields": {},
        "sources": [1],
        "interest_labels": [],
        "preferences": [],
    }
    assert fake.by_email("a@firma.be")["id"] == int(acks["a@firma.be"].member_id)
    assert (int(acks["a@firma.be"].member_id), "2") in fake.subscriptions
    assert sleeps.waits == [0.01] * 3  # polled at the configured interval until completed
    assert client.run_figures()["imports"] == 1


def test_bulk_import_not_finished_in_time_leaves_errors(make, fake):
    client = make(bulk_threshold=2, poll_timeout=0.02)
    fake.import_polls = 99
    acks = write(client, [change("a@firma.be"), change("b@firma.be")])
    assert {a.outcome for a in acks.values()} == {"error"}
    assert "did not finish" in acks["a@firma.be"].reason


def test_below_the_threshold_or_create_only_no_import(make, fake):
    client = make(bulk_threshold=2)
    policy = WritePolicy(match_on="email", import_type="create_only", reimport_unsubscribed=False)
    write(client, [change("a@firma.be"), change("b@firma.be")], policy)
    assert not fake.imports and len(fake.calls("POST", "/contacts")) == 2


# --- listing -------------------------------------------------------------------------------------


def test_listing_pages_and_member_count(client, fake, monkeypatch):
    monkeypatch.setattr(flexmail_module, "PAGE_SIZE", 2)
    for n in range(5):
        fake.add(
            f"lid{n}@firma.be",
            first_name="Els",
            language="fr",
            custom_fields={"acc_software": "Octopus", "vreemd": 1},
        )
    members = list(client.iter_members(None))
    assert [m.email for m in members] == [f"lid{n}@firma.be" for n in range(5)]
    assert members[0].fields == {
        "first_name": "Els",
        "name": None,
        "language": "F",
        "acc_software": "Octopus",
    }
    assert members[0].status == "active" and members[0].member_id == str(
        fake.by_email("lid0@firma.be")["id"]
    )
    assert client.member_count() == 5
    assert fake.calls("GET", "/contacts")[-1].url.params["limit"] == "1"


def test_empty_listing_without_embedded(client):
    assert list(client.iter_members(None)) == [] and client.member_count() == 0


def test_target_fields_are_standard_plus_placeholders(client):
    fields = client.target_fields()
    assert {n: f.format for n, f in fields.items()} == {
        "email": "text",
        "first_name": "text",
        "name": "text",
        "language": "text",
        "acc_software": "text",
        "klant_sinds": "date",
        "aantal": "number",
        "diensten": "multi",
    }


# --- webhooks (FM-A9) ----------------------------------------------------------------------------


def delivery(event: str, token: str | None = HOOK_TOKEN, **data: Any) -> bytes:
    body: dict[str, Any] = {
        "event_name": event,
        "occurred_at": "2026-11-30T09:15:00Z",
        "data": {"contact_id": 17, "email": "An@Firma.be", **data},
    }
    if token is not None:
        body["verification_token"] = token
    return json.dumps(body).encode()


def test_webhook_verify_good_wrong_and_missing_token():
    hook = FlexmailFeedbackWebhook(HOOK_TOKEN)
    hook.verify({}, delivery("contact.unsubscribed"))
    for token in ("wrong", None, ""):
        with pytest.raises(WebhookRefused) as refused:
            hook.verify({}, delivery("contact.unsubscribed", token=token))
        assert refused.value.status == 401
    with pytest.raises(WebhookRefused) as unreadable:
        hook.verify({}, b"not json")
    assert unreadable.value.status == 400


def test_webhook_parse_each_event_and_unknown():
    hook = FlexmailFeedbackWebhook(HOOK_TOKEN)
    (gone,) = hook.parse(delivery("contact.unsubscribed"))
    assert (gone.kind, gone.email, gone.member_id) == ("unsubscribed", "an@firma.be", "17")
    assert gone.occurred_at == datetime(2026, 11, 30, 9, 15, tzinfo=UTC)
    (click,) = hook.parse(
        delivery(
            "contact.clicked",
            campaign_id=5,
            campaign_name="Nieuwsbrief",
            link_url="https://kantoor.be/btw",
        )
    )
    assert click.kind == "clicked" and click.detail == {
        "campaign_id": "5",
        "campaign_name": "Nieuwsbrief",
        "link_url": "https://kantoor.be/btw",
    }
    (bounce,) = hook.parse(delivery("contact.bounced", bounce_type="Hard", campaign_id=5))
    assert bounce.detail == {"bounce_type": "hard", "campaign_id": "5"}
    assert hook.parse(delivery("contact.created")) == []
    for bad in (b"[]", b"{", delivery("contact.clicked").replace(b"2026-11-30T09:15:00Z", b"x")):
        with pytest.raises(WebhookRefused) as refused:
            hook.parse(bad)
        assert refused.value.status == 400


def test_ensure_webhooks_is_idempotent_and_replaces_only_hooks_to_our_url(client, fake):
    url = "https://memberflow.kantoor.be/feedback/admin-flexmail"
    fake.webhooks = [
        {
            "id": 1,
            "event_name": "contact.clicked",
            "target_url": "https://crm.example/hook",
            "verification_token": "theirs",
            "enabled": True,
        },  # another system: kept
        {
            "id": 2,
            "event_name": "contact.unsubscribed",
            "target_url": url,
            "verification_token": HOOK_TOKEN,
            "enabled": False,
        },  # ours, disabled: replaced
        {
            "id": 3,
            "event_name": "contact.bounced",
            "target_url": "https://old.example/hook",
            "verification_token": HOOK_TOKEN,
            "enabled": True,
        },  # our token, another url (another integration sharing it): kept
        {
            "id": 4,
            "event_name": "contact.clicked",
            "target_url": url,
            "verification_token": "an-old-token",
            "enabled": True,
        },  # to our url with a stale token: replaced
    ]
    assert client.ensure_webhooks(url) == [
        "contact.unsubscribed",
        "contact.clicked",
        "contact.bounced",
    ]
    assert client.ensure_webhooks(url) == []
    ours = [h for h in fake.webhooks if h["target_url"] == url]
    assert sorted(h["event_name"] for h in ours) == [
        "contact.bounced",
        "contact.clicked",
        "contact.unsubscribed",
    ]
    assert all(h["verification_token"] == HOOK_TOKEN and h["enabled"] for h in ours)
    assert [h["id"] for h in fake.webhooks if h["id"] < 5] == [1, 3]
    assert not fake.calls("DELETE", "/webhooks/3") and not fake.calls("DELETE", "/webhooks/1")
    assert client.run_figures()["webhooks_registered"] == 3


# --- legacy bounces (FM-A12) ---------------------------------------------------------------------


def test_legacy_bounces_are_feedback_with_the_webhook_key(client, fake):
    fake.bounces = [
        {
            "email": "An@Firma.be",
            "bounce_type": "hard",
            "bounced_at": "2026-11-30T09:15:00Z",
            "campaign_id": 5,
        },
        {
            "email": "oud@firma.be",
            "bounce_type": "soft",
            "bounced_at": "2026-01-01T00:00:00Z",
            "campaign_id": 4,
        },
    ]
    since = datetime(2026, 11, 1, tzinfo=UTC)
    (bounce,) = list(client.iter_feedback(since))
    assert (bounce.kind, bounce.email) == ("bounced", "an@firma.be")
    sent = fake.calls("GET", "/legacy/bounces")[0]
    assert sent.headers["userToken"] == LEGACY and sent.url.params["since"].startswith("2026-11-01")
    hook = FlexmailFeedbackWebhook(HOOK_TOKEN)
    (pushed,) = hook.parse(delivery("contact.bounced", bounce_type="hard", campaign_id="5"))
    assert Feedback(**{**pushed.__dict__, "member_id": None}).key == bounce.key


def test_no_legacy_token_no_bounce_call(make, fake):
    assert list(make(legacy_token=None).iter_feedback(None)) == []
    assert not fake.requests


# --- budget (AF8, FM-A10) ------------------------------------------------------------------------


def test_monthly_budget_stops_before_sending(make, fake, tmp_path):
    MonthlyCallLedger.for_account("flexmail", "4711", root=tmp_path / "budget").add("x", 9)
    client = make(monthly_call_budget=10)
    with pytest.raises(MonthlyBudgetSpent):
        write(client, [change("a@firma.be"), change("b@firma.be")])
    assert len(fake.requests) == 1  # the tenth call went out, the eleventh never did
    budget = client.rate_budget()
    assert (budget.window, budget.limit, budget.used, budget.by_this_client) == ("month", 10, 10, 1)


def test_monthly_429_is_final_and_stops_the_run(client, fake, sleeps):
    fake.forced = [httpx.Response(429, json=MONTHLY, headers={"Retry-After": "1"})]
    with pytest.raises(VendorError) as stopped:
        write(client, [change("a@firma.be"), change("b@firma.be")])
    assert stopped.value.status == 429 and "Monthly API call limit" in stopped.value.message
    assert len(fake.requests) == 1 and sleeps.waits == []


def test_a_per_minute_429_is_waited_out(client, fake, sleeps):
    fake.forced = [problem(429, "Too many requests")]
    fake.forced[0].headers["Retry-After"] = "7"
    assert write(client, [change("a@firma.be")])["a@firma.be"].outcome == "created"
    assert sleeps.waits == [7.0]


def test_calls_are_counted_in_the_month_ledger(make, fake, tmp_path):
    client = make()
    write(client, [change("a@firma.be")])
    ledger = MonthlyCallLedger.for_account("flexmail", "4711", root=tmp_path / "budget")
    assert ledger.by_endpoint() == {"contacts/create": 1} and client.rate_budget() is None


def test_estimate_calls_single_versus_import(make):
    client = make(bulk_threshold=500)
    reads = 3  # custom fields, languages, interests
    assert client.estimate_calls({"create": 10, "update": 5, "remove": 1}) == reads + 16 + 10
    assert client.estimate_calls({"create": 10, "group_changes": 0}) == reads + 10
    # 2500 creates: batches 1000, 1000 (imports) and 500 (an import too, at the threshold)
    one = 2 + 1 + 3  # create, one records chunk, start; three polls
    lookups = (1 + 2) + (1 + 4) + (1 + 5)  # a count read, then the pages of a growing account
    assert client.estimate_calls({"create": 2500}) == reads + 2500 + 3 * one + lookups
    assert client.estimate_calls({"create": 2500, "group_changes": 0}) == reads + 3 * one
    # 1400 creates: one import of 1000, then 400 single POSTs (below the threshold)
    assert client.estimate_calls({"create": 1400, "group_changes": 0}) == reads + one + 400


def test_bad_credentials_stop_the_batch(make, fake):
    client = make(token="wrong")
    with pytest.raises(VendorError) as refused:
        write(client, [change("a@firma.be")])
    assert refused.value.status == 401 and "wrong" not in str(refused.value)


def test_check_connection_probes_sources(client, fake):
    client.check_connection()
    assert fake.requests[0].url.path == "/sources" and fake.requests[0].url.params["limit"] == "1"


# --- review findings ---------------------------------------------------------------------------


def contact_reads(fake: FakeFlexmail) -> list[httpx.Request]:
    """GET /contacts itself: the listing and `?email=` lookups (not imports or ids)."""
    return [r for r in fake.calls("GET", "/contacts") if r.url.path == "/contacts"]


@pytest.mark.parametrize("answer", ["location", "absolute", "empty"])
def test_a_create_without_an_id_in_its_body_still_gets_its_id_and_interests(client, fake, answer):
    fake.create_answer = answer
    ack = write(client, [change("kaal@firma.be", groups=("Btw",))])["kaal@firma.be"]
    known = fake.by_email("kaal@firma.be")["id"]
    assert (ack.outcome, ack.member_id, ack.dropped) == ("created", str(known), ())
    assert (known, "2") in fake.subscriptions
    lookups = [r for r in fake.calls("GET", "/contacts") if "email" in r.url.params]
    assert len(lookups) == (1 if answer == "empty" else 0)  # Location read when there is one


def test_a_create_whose_id_cannot_be_found_drops_its_groups_with_a_reason(
    client, fake, monkeypatch
):
    fake.create_answer = "empty"
    monkeypatch.setattr(client, "_find", lambda email: None)
    ack = write(client, [change("kaal@firma.be", groups=("Btw",))])["kaal@firma.be"]
    assert ack.outcome == "created" and ack.member_id is None
    assert [name for name, _ in ack.dropped] == ["groups"] and "id unknown" in ack.dropped[0][1]
    assert not fake.subscriptions


def test_an_import_started_only_by_post_start(make, fake):
    client = make(bulk_threshold=2)
    fake.start_methods = {"POST"}
    acks = write(client, [change("a@firma.be"), change("b@firma.be")])
    assert {a.outcome for a in acks.values()} == {"created"}
    assert len(fake.calls("PATCH", "/contacts/imports")) == 1  # 405, then POST .../start
    assert len([r for r in fake.calls("POST", "/contacts/imports") if "start" in r.url.path]) == 1
    write(client, [change("c@firma.be"), change("d@firma.be")])
    assert len(fake.calls("PATCH", "/contacts/imports")) == 1  # remembered: straight to POST
    assert client.run_figures()["imports"] == 2


@pytest.mark.parametrize("broken", ["refused", "failed", "no start route"])
def test_an_import_that_cannot_be_used_falls_back_to_single_creates(make, fake, broken):
    client = make(bulk_threshold=2)
    fake.refuse_imports = broken == "refused"
    fake.import_end = "failed" if broken == "failed" else "completed"
    fake.start_methods = set() if broken == "no start route" else {"PATCH", "POST"}
    fake.blacklist.add("weg@firma.be")
    emails = ["a@firma.be", "weg@firma.be", "fout@invalid"]
    acks = write(client, [change(e) for e in emails])
    assert {e: acks[e].outcome for e in emails} == {
        "a@firma.be": "created",
        "weg@firma.be": "unsubscribed",
        "fout@invalid": "refused",
    }
    assert client.run_figures()["imports_abandoned"] == 1
    before = len(fake.calls("POST", "/contacts/imports"))
    again = write(client, [change("b@firma.be"), change("c@firma.be")])
    assert {a.outcome for a in again.values()} == {"created"}
    assert len(fake.calls("POST", "/contacts/imports")) == before  # no import tried again


def test_an_import_without_groups_or_ignored_records_needs_no_lookup(make, fake):
    client = make(bulk_threshold=2)
    emails = ["a@firma.be", "b@firma.be", "c@firma.be"]
    acks = write(client, [change(e) for e in emails])
    assert {acks[e].outcome for e in emails} == {"created"}
    assert not contact_reads(fake)  # no listing, no lookups
    later = write(client, [change("b@firma.be", "update", member_id=acks["b@firma.be"].member_id)])
    assert later["b@firma.be"].outcome == "updated"  # found by email


def test_an_import_looks_up_only_the_members_with_groups(make, fake):
    client = make(bulk_threshold=2)
    changes = [change("a@firma.be", groups=("Btw",)), change("b@firma.be"), change("c@firma.be")]
    acks = write(client, changes)
    reads = contact_reads(fake)
    assert [dict(r.url.params) for r in reads] == [{"limit": "1"}, {"email": "a@firma.be"}]
    assert (int(acks["a@firma.be"].member_id), "2") in fake.subscriptions
    assert client.run_figures()["import_lookups"] == 1


def test_import_records_leave_empty_names_out(make, fake):
    client = make(bulk_threshold=1)
    values = {"email": "a@firma.be", "first_name": None, "name": "Peeters", "language": None}
    write(client, [change("a@firma.be", values=values)])
    (job,) = fake.imports.values()
    (record,) = job["records"]
    assert "first_name" not in record and None not in record.values()
    assert record["language"] == "nl"  # required: the default stands in


def test_a_synthetic_id_never_reaches_a_url(client, fake):
    synthetic = "email:weg@firma.be"
    fake.blacklist.add("weg@firma.be")
    removed = write(client, [change("weg@firma.be", "remove", member_id=synthetic, values={})])
    assert removed["weg@firma.be"].outcome == "removed" and not fake.requests
    write(client, [change("weg@firma.be", "update", member_id=synthetic)])
    assert not [r for r in fake.requests if "email:" in r.url.path]


def test_languages_not_enabled_on_the_account_fail_before_sending(make, fake):
    fake.languages = [{"code": "nl"}, {"code": "fr"}]  # objects with a code are read too
    client = make(languages={"N": "nl", "D": "de"}, default_language="en")
    with pytest.raises(ValueError) as refused:
        client.target_fields()
    assert "de, en" in str(refused.value)
    with pytest.raises(ValueError):
        client.check_connection()
    assert not fake.calls("POST", "/contacts")
    fine = make(languages={"N": "nl", "F": "fr"}, default_language="nl")
    fine.target_fields()
    fine.target_fields()
    assert len(fake.calls("GET", "/account-contact-languages")) == 3  # once per client


def test_a_languages_answer_of_unknown_shape_blocks_nothing(make, fake):
    """The items' shape is not documented: codes under other keys are read, and an answer of
    which none can be read checks nothing rather than refusing every sync."""
    fake.languages = [{"iso": "nl"}, {"language": "fr"}]
    make(languages={"N": "nl", "F": "fr"}, default_language="nl").target_fields()
    fake.languages = [{"name": "Nederlands"}]
    make(languages={"N": "nl"}, default_language="nl").target_fields()


def test_a_collection_without_total_is_paged_until_a_short_page(client, fake, monkeypatch):
    monkeypatch.setattr(flexmail_module, "PAGE_SIZE", 2)
    fake.totals = False
    for n in range(5):
        fake.add(f"lid{n}@firma.be")
    assert len(list(client.iter_members(None))) == 5
    assert len(fake.calls("GET", "/contacts")) == 3
    assert client.member_count() is None


def test_pacing_is_per_account_and_the_legacy_call_has_no_rest_auth(make, fake):
    one, other = make(requests_per_minute=60), make(requests_per_minute=60, token="another")
    assert one._limiter.path == other._limiter.path  # FM-A10: one window per account
    fake.bounces = []
    list(one.iter_feedback(None))
    (legacy,) = fake.calls("GET", "/legacy/bounces")
    assert "Authorization" not in legacy.headers and legacy.headers["userToken"] == LEGACY


def test_an_interest_post_is_retried_after_a_500(client, fake):
    fake.interest_failures = 1
    ack = write(client, [change("nieuw@firma.be", groups=("Btw",))])["nieuw@firma.be"]
    assert (ack.outcome, ack.dropped) == ("created", ())  # the retry's 409 means done
    assert (int(ack.member_id), "2") in fake.subscriptions
    assert len(fake.calls("POST", f"/contacts/{ack.member_id}/interest-subscriptions")) == 2


def test_a_yaml_number_account_is_taken_as_text():
    section = parse_target(
        {"kind": "flexmail", "account": 204518, "token_env": "FM_TOKEN", "source_id": 1}
    )
    assert section.account == "204518" and section.destination == "204518"


# --- the integration-file section ----------------------------------------------------------------


def test_section_parses_and_builds_webhook_from_env(monkeypatch):
    section = parse_target(
        {
            "kind": "flexmail",
            "account": "D-4711",
            "token_env": "FM_TOKEN",
            "webhook_token_env": "FM_HOOK",
            "source_id": 1,
            "languages": LANGUAGES,
            "monthly_call_budget": 5000,
        }
    )
    assert isinstance(section, FlexmailTarget) and section.destination == "D-4711"
    assert section.env_vars() == ["FM_TOKEN", "FM_HOOK"]
    monkeypatch.setenv("FM_HOOK", HOOK_TOKEN)
    hook = section.feedback_webhook()
    hook.verify({}, delivery("contact.clicked"))
    without = parse_target(
        {"kind": "flexmail", "account": "4711", "token_env": "FM_TOKEN", "source_id": 1}
    )
    assert without.feedback_webhook() is None
    with pytest.raises(ValueError):
        parse_target(
            {
                "kind": "flexmail",
                "account": "4711",
                "token_env": "FM_TOKEN",
                "source_id": 1,
                "unknown": 1,
            }
        )


# === against the Flexmail emulator, over real sockets ============================================

EMULATED_ACCOUNT = f"D-{FLEXMAIL_ACCOUNT_ID}"  # as Admin shows it; the client strips the D-
AN, SOPHIE, JAN, MARIE = (row[0] for row in SEED_CONTACTS)
PIETER = SEED_BLACKLISTED[0]


def emulator_app(state: FlexmailState) -> Starlette:
    """The emulator's API under /flexmail and its control routes under /_sandbox/flexmail."""
    control = Mount("/_sandbox/flexmail", routes=EMULATOR.control_routes(state))
    return Starlette(routes=[*EMULATOR.routes(state), control])


@pytest.fixture(scope="module")
def emulated() -> Iterator[tuple[str, FlexmailState]]:
    state = FlexmailState(rate_limits=False)
    with served(emulator_app(state)) as url:
        yield url, state


@pytest.fixture
def fm(emulated) -> Iterator[FlexmailState]:
    state = emulated[1]
    state.reset(monthly=True)
    state.import_delay = 0.0
    state.retry_delays = (0.01, 0.01, 0.01)
    yield state
    state.wait_for_deliveries()


@pytest.fixture
def live(emulated, fm, sleeps, tmp_path) -> Iterator:
    made: list[FlexmailClient] = []

    def build(**kwargs: Any) -> FlexmailClient:
        options: dict[str, Any] = {
            "base_url": emulated[0] + "/flexmail",
            "account": EMULATED_ACCOUNT,
            "token": FLEXMAIL_TOKEN,
            "legacy_token": FLEXMAIL_LEGACY_TOKEN,
            "webhook_token": FLEXMAIL_WEBHOOK_TOKEN,
            "source_id": 1,
            "languages": LANGUAGES,
            "requests_per_minute": None,
            "poll_seconds": 0.01,
            "budget_dir": tmp_path / "budget",
            "sleep": sleeps,
            **kwargs,
        }
        client = FlexmailClient(**options)
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


def test_emulator_connection_with_the_d_prefixed_account(live, fm):
    client = live()
    client.check_connection()
    assert fm.request_count("GET /sources") == 1
    with pytest.raises(VendorError) as refused:
        live(token="wrong").check_connection()
    assert refused.value.status == 401 and "wrong" not in str(refused.value)
    fields = live().target_fields()
    assert fields["klant_sinds"].format == "date" and fields["diensten"].format == "multi"


def test_emulator_single_writes_every_branch(live, fm):
    client = live()
    acks = write(
        client,
        [
            change(
                "Nieuw.Lid@Boekhouding.be",
                values={
                    "email": "Nieuw.Lid@Boekhouding.be",
                    "first_name": "Wout",
                    "name": "De Smet",
                    "language": "F",
                    "klant_sinds": "2019-03-01",
                    "aantal_werknemers": "12",
                    "diensten": ["Boekhouding", "Fiscaal advies"],
                    "kantoor": None,
                },
                groups=("Btw", "Fiscaliteit", "Onbestaand"),
            ),
            change(AN, values={"email": AN, "first_name": "Anneke"}),  # only on Flexmail: 409
            change(PIETER),  # blacklisted: 409, never re-subscribed
            change(
                "fout@boekhouding.be",
                values={"email": "fout@boekhouding.be", "aantal_werknemers": "veel"},
            ),
        ],
    )
    new = acks["Nieuw.Lid@Boekhouding.be"]
    assert new.outcome == "created"
    assert new.dropped == (("groups", "no Flexmail interest named 'Onbestaand': not added"),)
    stored = fm.contact("nieuw.lid@boekhouding.be")
    assert stored["id"] == int(new.member_id) and stored["language"] == "fr"
    assert stored["custom_fields"] == {
        "klant_sinds": "2019-03-01",
        "aantal_werknemers": 12,
        "diensten": ["Boekhouding", "Fiscaal advies"],
    }
    assert fm.interest_names("nieuw.lid@boekhouding.be") == {"Btw", "Fiscaliteit"}
    assert acks[AN].outcome == "updated" and fm.contact(AN)["first_name"] == "Anneke"
    assert acks[AN].member_id == str(fm.contact(AN)["id"])
    assert acks[PIETER].outcome == "unsubscribed" and fm.contact(PIETER) is None
    assert acks["fout@boekhouding.be"].outcome == "created"  # the bad number is dropped
    assert acks["fout@boekhouding.be"].dropped[0][0] == "aantal_werknemers"


def test_emulator_refusal_names_the_violation(live, fm):
    ack = write(live(), [change("geen-adres")])["geen-adres"]
    assert ack.outcome == "refused" and "email" in ack.reason and "valid email" in ack.reason


def test_emulator_update_groups_and_remove(live, fm):
    client = live()
    made = write(client, [change("lid@kantoor.be", groups=("Btw", "Sociaal recht"))])
    contact_id = made["lid@kantoor.be"].member_id
    acks = write(
        client,
        [
            change(
                "lid@kantoor.be",
                "update",
                member_id=contact_id,
                values={"email": "lid@kantoor.be", "name": "Wouters"},
                groups=("Btw", "Fiscaliteit"),
                groups_added=("Fiscaliteit", "Btw"),
                groups_removed=("Sociaal recht",),
            ),
            change(JAN, "remove", member_id=str(fm.contact(JAN)["id"]), values={}),
            change(PIETER, "remove", values={}),  # blacklisted: not listed, so gone already
        ],
    )
    assert acks["lid@kantoor.be"].outcome == "updated"
    assert fm.contact("lid@kantoor.be")["name"] == "Wouters"
    assert fm.interest_names("lid@kantoor.be") == {"Btw", "Fiscaliteit"}
    assert acks[JAN].outcome == acks[PIETER].outcome == "removed" and fm.contact(JAN) is None
    assert fm.request_count("DELETE /contacts/{id}") == 1


def test_emulator_bulk_import_first_sync(live, fm, sleeps):
    client = live(bulk_threshold=5)
    emails = [f"lid{n:02d}@kantoor-{n % 3}.be" for n in range(7)]
    changes = [change(e, groups=("Btw",) if e.startswith("lid00") else None) for e in emails]
    changes += [
        change(PIETER),
        change(SOPHIE, values={"email": SOPHIE, "first_name": "Sophie", "language": "F"}),
    ]
    fm.import_delay = 0.0
    acks = write(client, changes)
    assert {e: acks[e].outcome for e in emails} == dict.fromkeys(emails, "created")
    assert acks[PIETER].outcome == "unsubscribed" and fm.contact(PIETER) is None
    assert acks[SOPHIE].outcome == "created" and acks[SOPHIE].member_id == str(
        fm.contact(SOPHIE)["id"]
    )  # an import updates an existing address
    assert fm.request_count("POST /contacts/imports") == 1
    assert fm.request_count("PATCH /contacts/imports/{import_id}") == 1
    assert fm.request_count("POST /contacts") == 1  # only the blacklisted one, for its verdict
    assert fm.interest_names(emails[0]) == {"Btw"}
    assert all(acks[e].member_id == str(fm.contact(e)["id"]) for e in emails)
    assert client.run_figures()["imports"] == 1 and client.run_figures()["import_records"] == 9


def test_emulator_create_with_only_a_location_keeps_id_and_interests(live, fm):
    fm.create_empty_body = True
    ack = write(live(), [change("kaal@kantoor.be", groups=("Btw",))])["kaal@kantoor.be"]
    assert ack.member_id == str(fm.contact("kaal@kantoor.be")["id"]) and not ack.dropped
    assert fm.interest_names("kaal@kantoor.be") == {"Btw"}


def test_emulator_import_started_by_post_only(live, fm):
    fm.import_start = "post"
    client = live(bulk_threshold=2)
    acks = write(client, [change("p1@kantoor.be"), change("p2@kantoor.be", groups=("Btw",))])
    assert {a.outcome for a in acks.values()} == {"created"}
    assert fm.request_count("PATCH /contacts/imports/{import_id}") == 1  # 405
    assert fm.request_count("POST /contacts/imports/{import_id}/start") == 1
    assert fm.interest_names("p2@kantoor.be") == {"Btw"}
    assert fm.request_count("GET /contacts") == 2  # a count, then one lookup (p2 has groups)


def test_emulator_failed_import_falls_back_to_single_creates(live, fm):
    fm.import_outcome = "failed"
    client = live(bulk_threshold=2)
    acks = write(client, [change("f1@kantoor.be"), change("f2@kantoor.be"), change(PIETER)])
    assert [acks[e].outcome for e in ("f1@kantoor.be", "f2@kantoor.be", PIETER)] == [
        "created",
        "created",
        "unsubscribed",
    ]
    assert fm.request_count("POST /contacts") == 3
    write(client, [change("f3@kantoor.be"), change("f4@kantoor.be")])
    assert (
        fm.request_count("POST /contacts/imports") == 1
        and client.run_figures()["imports_abandoned"] == 1
    )


def test_emulator_listing_and_count(live, fm):
    client = live()
    members = {m.email: m for m in client.iter_members(None)}
    assert set(members) == {AN, SOPHIE, JAN, MARIE}  # the blacklisted address is not listed
    assert members[SOPHIE].fields["language"] == "F" and members[AN].fields["language"] == "N"
    assert members[SOPHIE].fields["kantoor"] == "Namur"
    assert client.member_count() == 4


class FeedbackReceiver:
    """memberflow's side of FM-A9 in miniature: verify, parse, answer like the receiver."""

    def __init__(self, token: str) -> None:
        self.hook = FlexmailFeedbackWebhook(token)
        self.feedback: list[Feedback] = []
        self.answers: list[int] = []
        self.app = Starlette(routes=[Route("/feedback", self.receive, methods=["POST"])])

    async def receive(self, request: Request) -> Response:
        body = await request.body()
        try:
            self.hook.verify(dict(request.headers), body)
            self.feedback += self.hook.parse(body)
        except WebhookRefused as refused:
            self.answers.append(refused.status)
            return Response(status_code=refused.status)
        self.answers.append(200)
        return Response(status_code=200)


def test_emulator_webhooks_registered_once_and_deliveries_parsed(live, fm, emulated):
    receiver = FeedbackReceiver(FLEXMAIL_WEBHOOK_TOKEN)
    client = live()
    with served(receiver.app) as url:
        target = f"{url}/feedback"
        assert client.ensure_webhooks(target) == list(EVENTS)
        assert live().ensure_webhooks(target) == []
        control = f"{emulated[0]}/_sandbox/flexmail"
        httpx.post(
            f"{control}/click",
            json={
                "email": AN,
                "campaign_id": 5102,
                "campaign_name": "Nieuwsbrief november",
                "link_url": "https://kantoor.be/btw",
            },
        )
        fm.wait_for_deliveries()
        httpx.post(f"{control}/redeliver", json={"delivery_id": "last", "times": 2})
        fm.wait_for_deliveries()
        httpx.post(f"{control}/unsubscribe", json={"email": SOPHIE})
        fm.wait_for_deliveries()
    clicks = [f for f in receiver.feedback if f.kind == "clicked"]
    assert len(clicks) == 3 and len({f.key for f in clicks}) == 1  # one click, three deliveries
    assert clicks[0].detail == {
        "campaign_id": "5102",
        "campaign_name": "Nieuwsbrief november",
        "link_url": "https://kantoor.be/btw",
    }
    (gone,) = [f for f in receiver.feedback if f.kind == "unsubscribed"]
    assert gone.email == SOPHIE and gone.member_id is not None


def test_emulator_forged_delivery_is_refused(live, fm, emulated):
    receiver = FeedbackReceiver("the-real-token")
    with served(receiver.app) as url:
        live().ensure_webhooks(f"{url}/feedback")  # registered with another token
        fm.retry_delays = ()
        httpx.post(f"{emulated[0]}/_sandbox/flexmail/click", json={"email": AN})
        fm.wait_for_deliveries()
    assert receiver.answers == [401] and receiver.feedback == []


def test_emulator_legacy_bounces_match_the_webhook(live, fm, emulated, monkeypatch):
    # one moment for the record (seconds) and the webhook (milliseconds), after the seed's bounce
    monkeypatch.setattr(fm, "clock", lambda: 1_800_000_000.456)
    receiver = FeedbackReceiver(FLEXMAIL_WEBHOOK_TOKEN)
    with served(receiver.app) as url:
        live().ensure_webhooks(f"{url}/feedback")
        httpx.post(
            f"{emulated[0]}/_sandbox/flexmail/bounce",
            json={"email": JAN, "bounce_type": "hard", "campaign_id": 5102},
        )
        fm.wait_for_deliveries()
    monkeypatch.undo()
    bounces = list(live().iter_feedback(None))
    assert sorted(b.email for b in bounces) == sorted([MARIE, JAN])  # the seeded one too
    (pushed,) = receiver.feedback
    (read,) = [b for b in bounces if b.email == JAN]
    assert read.key == pushed.key and read.detail == {"bounce_type": "hard", "campaign_id": "5102"}
    since = datetime.fromtimestamp(1_800_000_000.0, UTC)
    assert [b.email for b in live().iter_feedback(since)] == [JAN]
    with pytest.raises(VendorError) as refused:
        list(live(legacy_token="wrong").iter_feedback(since))
    assert refused.value.status == 401 and "wrong" not in str(refused.value)


def test_emulator_monthly_cap_is_final(live, fm, sleeps):
    fm.set_monthly(cap=100, used=100)
    client = live()
    with pytest.raises(VendorError) as stopped:
        write(client, [change("a@kantoor.be"), change("b@kantoor.be")])
    assert stopped.value.status == 429 and MONTHLY_DETAIL in stopped.value.message
    assert fm.request_count("POST /contacts") == 1 and sleeps.waits == []


def test_emulator_budget_stops_before_the_cap(live, fm):
    client = live(monthly_call_budget=3)
    with pytest.raises(MonthlyBudgetSpent):
        write(client, [change(f"lid{n}@kantoor.be") for n in range(5)])
    assert fm.request_count("POST /contacts") == 3
    assert client.rate_budget().left == 0


def test_emulator_per_minute_limit_paced_or_waited_out(live, fm):
    now = [1_795_000_000.0]

    def advance(seconds: float) -> None:
        now[0] += seconds

    fm.limiter.clock = lambda: now[0]
    try:
        fm.set_per_minute(3)
        waited = live(sleep=advance)
        acks = write(waited, [change(f"w{n}@kantoor.be") for n in range(5)])
        assert {a.outcome for a in acks.values()} == {"created"}
        assert waited.calls.throttled >= 1  # the server's 429s, waited out by Retry-After
        fm.set_per_minute(3)
        paced = live(sleep=advance, clock=lambda: now[0], requests_per_minute=3)
        acks = write(paced, [change(f"p{n}@kantoor.be") for n in range(5)])
        assert {a.outcome for a in acks.values()} == {"created"}
        assert paced.calls.throttled == 0  # our own window kept under theirs
    finally:
        fm.limiter.clock = __import__("time").time
