"""CyberimpactClient against the Cyberimpact emulator over real sockets (CI-A1..CI-A13): ping and
the account check, fields and their creation up to the plan's limit, the one-by-one path (PATCH,
404 -> POST, unsubscribes never undone, the 1 POST/s throttle), the batch path (chunks, polling,
per-member errors, batch-level groups), group titles, removals, consent, read-back, and the wire
conversion of canonical values."""

from __future__ import annotations

import json
import random
import unicodedata
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from resources.base import VendorError
from resources.cyberimpact import (
    AccountMismatch,
    CyberimpactClient,
    CyberimpactTarget,
    group_cover,
)
from resources.cyberimpact_wire import CustomField, wire_member
from resources.registry import parse_target, target_sections
from resources.target import MemberChange, WritePolicy
from sandbox.cyberimpact import (
    CYBERIMPACT_API_TOKEN,
    CYBERIMPACT_OTHER_API_TOKEN,
    EMULATOR,
    CyberimpactState,
)
from tests.asgi import served

ACCOUNT = "Centre sportif démo"  # what GET /ping reports as `account` for the demo token
POLICY = WritePolicy(match_on="email", import_type="create_and_update", reimport_unsubscribed=False)
CLIENTS = "Clients Amilia"
DUCKS = "Natation \\ Enfants \\ Débutant \\ Canards"


def app(state: CyberimpactState) -> Starlette:
    """The emulator's API under /cyberimpact and its control routes under /_sandbox."""
    control = Mount("/_sandbox/cyberimpact", routes=EMULATOR.control_routes(state))
    return Starlette(routes=[*EMULATOR.routes(state), control])


@pytest.fixture(scope="module")
def shared() -> Iterator[tuple[str, CyberimpactState]]:
    state = CyberimpactState(rate_limits=False)
    with served(app(state)) as url:
        yield url, state


@pytest.fixture
def ci(shared) -> CyberimpactState:
    state = shared[1]
    state.reset()
    state.custom_field_limit = 25
    state.batch_polls = 1
    return state


class Sleeps:
    """A sleep that only records: no test waits on the wall clock."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def make(shared, ci, sleeps) -> Iterator:
    made: list[CyberimpactClient] = []

    def build(**kwargs: Any) -> CyberimpactClient:
        options = {
            "base_url": shared[0] + "/cyberimpact",
            "api_token": CYBERIMPACT_API_TOKEN,
            "account": ACCOUNT,
            "poll_seconds": 0.01,
            "sleep": sleeps,
            **kwargs,
        }
        client = CyberimpactClient(**options)
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


@pytest.fixture
def client(make) -> CyberimpactClient:
    return make()


def change(email: str, action: str = "create", **kwargs: Any) -> MemberChange:
    """A member with a consent date of its own (only such members go in a bulk job)."""
    values = kwargs.pop(
        "values",
        {"email": email, "firstname": "Léa", "consentDate": "2024-05-01", "consentProof": "AC-1"},
    )
    return MemberChange(match_key=email, action=action, values=values, **kwargs)


def write(client: CyberimpactClient, changes: list[MemberChange], policy=POLICY) -> dict:
    acks = list(client.write_members(changes, policy))
    assert len(acks) == len(changes)
    return {ack.match_key: ack for ack in acks}


def api(shared, token: str = CYBERIMPACT_API_TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=shared[0] + "/cyberimpact", headers=headers, timeout=10)


# --- CI-A1 connection check ----------------------------------------------------------------------


def test_ping_passes_for_the_configured_account(client, ci):
    client.check_connection()
    assert ci.request_count("GET", "/ping") == 1
    assert client.label == f"cyberimpact account {ACCOUNT}"


def test_ping_fails_naming_both_accounts_and_never_the_token(make):
    wrong = make(api_token=CYBERIMPACT_OTHER_API_TOKEN)
    with pytest.raises(AccountMismatch) as caught:
        wrong.check_connection()
    assert "'Other account'" in str(caught.value) and repr(ACCOUNT) in str(caught.value)
    bad = make(api_token="forged-token-123")
    with pytest.raises(VendorError) as refused:
        bad.check_connection()
    assert refused.value.status == 401 and "Invalid token" in str(refused.value)
    assert "forged-token-123" not in str(refused.value)


# --- CI-A8 custom fields -------------------------------------------------------------------------


def test_target_fields_are_standard_custom_by_name_and_consent_inputs(client, shared):
    with api(shared) as http:
        http.post("/customfields", json={"name": "Amilia.IsArchived", "type": "text"})
        http.post("/customfields", json={"name": "Amilia.LastVisit", "type": "date"})
    fields = client.target_fields()
    assert {"email", "firstname", "lastname", "gender", "birthdate", "postalCode"} <= set(fields)
    assert {"country", "company", "note", "language"} <= set(fields)
    assert fields["Amilia.LastVisit"].format == "date"
    assert fields["Amilia.IsArchived"].format == "text"
    assert {"consentDate", "consentProof"} <= set(fields)
    assert fields["gender"].options == {"m": "m", "f": "f", "o": "o"}


def test_create_fields_until_the_limit_then_an_error_naming_the_rest(client, ci):
    ci.custom_field_limit = 3
    assert client.create_fields({"Amilia.A": "text"}) == ["Amilia.A"]
    wanted = {"Amilia.A": "text", "Amilia.B": "date", "Amilia.C": "integer", "Amilia.D": "decimal"}
    with pytest.raises(VendorError) as caught:
        client.create_fields(wanted | {"Amilia.E": "text"})
    message = str(caught.value)
    assert "Custom field limit reached" in message
    assert "not created: Amilia.D, Amilia.E" in message and "Amilia.A," not in message
    assert [f["name"] for f in ci.custom_fields()] == ["Amilia.A", "Amilia.B", "Amilia.C"]
    assert ci.request_count("POST", "/customfields") == 4  # A, B, C, then D's 422; never E
    assert "Amilia.C" in client.target_fields()


# --- CI-A4/CI-A5 one by one ----------------------------------------------------------------------


def test_single_path_patches_then_posts_with_groups_and_acks_each(client, ci):
    acks = write(
        client,
        [
            change("lea@example.com", groups=(CLIENTS, DUCKS), groups_added=(CLIENTS, DUCKS)),
            change("Max@Example.com", groups=(CLIENTS,), groups_added=(CLIENTS,)),
        ],
    )
    assert {a.outcome for a in acks.values()} == {"created"}
    assert acks["lea@example.com"].member_id == str(ci.member("lea@example.com")["id"])
    assert ci.member_groups("lea@example.com") == {CLIENTS, DUCKS}
    assert ci.member_groups("max@example.com") == {CLIENTS}
    assert ci.request_count("PATCH", "/members/{key}") == 2  # both looked for first (404)
    assert ci.request_count("POST", "/members") == 2
    assert ci.request_count("POST", "/groups") == 2

    again = write(
        client,
        [change("lea@example.com", "update", values={"email": "lea@example.com", "lastname": "B"})],
    )
    assert again["lea@example.com"].outcome == "updated"
    assert ci.member("lea@example.com")["lastname"] == "B"
    assert ci.request_count("POST", "/members") == 2  # an update is a PATCH alone

    joined = change("max@example.com", "update", groups=(CLIENTS, DUCKS), groups_added=(DUCKS,))
    assert write(client, [joined])["max@example.com"].outcome == "updated"
    assert ci.member_groups("max@example.com") == {CLIENTS, DUCKS}
    assert ci.request_count("POST", "/members/{key}/groups") == 1  # additive, CSV of ids
    assert ci.request_count("POST", "/groups") == 2  # both titles known by now


def test_none_is_left_out_and_a_bad_date_is_dropped_not_the_member(client, ci):
    write(client, [change("lea@example.com", values={"firstname": "Léa", "postalCode": "H2X"})])
    values = {"firstname": None, "lastname": "Roy", "birthdate": "1990-02-31", "country": "ca"}
    acks = write(client, [change("lea@example.com", "update", values=values)])
    ack = acks["lea@example.com"]
    assert ack.outcome == "updated"
    assert [name for name, _ in ack.dropped] == ["birthdate"]
    stored = ci.member("lea@example.com")
    assert stored["firstname"] == "Léa" and stored["lastname"] == "Roy"  # None kept Léa
    assert stored["country"] == "CA" and stored["birthdate"] == "" and stored["postalCode"] == "H2X"


def test_an_unsubscribed_email_is_never_resubscribed(client, ci, shared):
    httpx.post(f"{shared[0]}/_sandbox/cyberimpact/unsubscribe", json={"email": "gone@example.com"})
    acks = write(client, [change("gone@example.com")])
    assert acks["gone@example.com"].outcome == "unsubscribed"
    assert "unsubscribed" in (acks["gone@example.com"].reason or "")
    assert ci.member("gone@example.com") is None


def test_a_refusal_is_an_ack_with_the_vendors_words(client, ci):
    acks = write(client, [change("not-an-email"), change("ok@example.com")])
    refused = acks["not-an-email"]
    assert refused.outcome == "refused"
    assert "email: must be an email address" in (refused.reason or "")
    assert acks["ok@example.com"].outcome == "created"


class CreatedMeanwhile(httpx.HTTPTransport):
    """Another writer creates the member between our PATCH's 404 and our POST."""

    def __init__(self, state: CyberimpactState) -> None:
        super().__init__()
        self.state = state

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and request.url.path.endswith("/members"):
            account = self.state.account(CYBERIMPACT_API_TOKEN)
            if "race@example.com" not in account.members:
                self.state.create(account, {"email": "race@example.com", "firstname": "Other"})
        return super().handle_request(request)


def test_a_409_already_exists_on_post_goes_back_to_patch(make, ci):
    client = make(transport=CreatedMeanwhile(ci))
    acks = write(client, [change("race@example.com")])
    assert acks["race@example.com"].outcome == "updated"
    assert ci.member("race@example.com")["firstname"] == "Léa"
    assert ci.request_count("PATCH", "/members/{key}") == 2


def test_create_only_posts_first_and_leaves_an_existing_member(client, ci):
    write(client, [change("lea@example.com")])
    policy = WritePolicy(match_on="email", import_type="create_only", reimport_unsubscribed=False)
    acks = write(client, [change("lea@example.com", values={"firstname": "Autre"})], policy)
    assert acks["lea@example.com"].outcome == "import_type"
    assert ci.member("lea@example.com")["firstname"] == "Léa"


def test_a_host_that_fails_gives_error_acks_without_trying_every_member(sleeps):
    client = CyberimpactClient(
        base_url="http://127.0.0.1:9/cyberimpact",
        api_token=CYBERIMPACT_API_TOKEN,
        account=ACCOUNT,
        max_tries=2,
        sleep=sleeps,
    )
    acks = write(client, [change("a@example.com"), change("b@example.com")])
    client.close()
    assert {a.outcome for a in acks.values()} == {"error"}
    assert "127.0.0.1" in (acks["b@example.com"].reason or "")
    assert client.calls.total == 2  # one PATCH, tried twice; b@ not tried


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.mark.parametrize("paced", [True, False])
def test_post_members_is_paced_and_a_429_is_waited_out(paced):
    """CI-A6 on a throttled emulator whose clock only the client's waits move: paced, no POST
    is refused; unpaced, the 429s come and their Retry-After is honoured. No wall clock read."""
    clock = FakeClock()
    state = CyberimpactState(rate_limits=True, clock=clock)
    with served(app(state)) as url:
        client = CyberimpactClient(
            base_url=url + "/cyberimpact",
            api_token=CYBERIMPACT_API_TOKEN,
            account=ACCOUNT,
            post_interval=1.0 if paced else 0.0,
            sleep=clock.sleep,
            clock=clock,
        )
        emails = [f"t{n}@example.com" for n in range(3)]
        acks = write(client, [change(email) for email in emails])
        client.close()
    assert {a.outcome for a in acks.values()} == {"created"}
    assert len(state.members()) == 3
    refused = state.request_count("POST", "/members") - 3
    if paced:
        assert refused == 0 and client.calls.throttled == 0
    else:
        assert refused >= 1 and client.calls.throttled == refused


# --- CI-A4 batches -------------------------------------------------------------------------------


def test_batch_path_chunks_polls_and_acks_per_member(client, ci, shared, sleeps):
    with api(shared) as http:
        http.post("/members", json={"email": "known@example.com", "firstname": "Kim"})
    httpx.post(f"{shared[0]}/_sandbox/cyberimpact/unsubscribe", json={"email": "u@example.com"})
    creates = [
        change(f"m{n}@example.com", groups=(CLIENTS,) + ((DUCKS,) if n % 2 else ()))
        for n in range(1003)
    ]
    extra = [
        change("known@example.com", "update", groups_added=(DUCKS,)),
        change("u@example.com"),
        change("bad-email"),
    ]
    acks = write(client, creates + extra)
    # chunk 1: fields + Clients (all gain it), then Canards; chunk 2 (known@ gains only
    # Canards): fields alone, then Clients, then Canards
    assert ci.request_count("POST", "/batches") == 5
    assert client.run_figures()["batches"] == 5
    assert ci.request_count("GET", "/batches/{batch_id}") == 10  # each PROCESSING once
    # the chunks' own batches polled together (two rounds), then their group batches (two)
    assert sleeps.waits.count(0.01) == 4
    assert ci.request_count("POST", "/members") == 1  # the test's own known@ only
    assert acks["m0@example.com"].outcome == "created"
    assert acks["m0@example.com"].member_id == str(ci.member("m0@example.com")["id"])
    assert acks["known@example.com"].outcome == "updated"
    assert acks["u@example.com"].outcome == "unsubscribed" and acks["u@example.com"].checked
    assert acks["bad-email"].outcome == "refused"
    assert "must be an email address" in (acks["bad-email"].reason or "")
    assert ci.member_groups("m0@example.com") == {CLIENTS}
    assert ci.member_groups("m1001@example.com") == {CLIENTS, DUCKS}
    assert ci.member_groups("known@example.com") == {DUCKS}
    assert ci.member("known@example.com")["firstname"] == "Léa"
    assert ci.member("u@example.com") is None


# --- CI-A7 groups, removals ----------------------------------------------------------------------


def test_group_titles_are_matched_exactly_created_once_and_reused(client, ci, shared):
    with api(shared) as http:
        existing = http.post("/groups", json={"title": CLIENTS, "isPublic": False}).json()["id"]
    ci.add_dynamic_group(DUCKS)  # a dynamic group is no target: a static one is made
    write(client, [change("a@example.com", groups=(CLIENTS, DUCKS))])
    write(client, [change("b@example.com", groups=(CLIENTS, DUCKS))])
    assert ci.request_count("POST", "/groups") == 2  # the test's own + one for Canards
    assert ci.request_count("GET", "/groups") == 1
    statics = [g for g in ci.groups() if not g["isDynamic"]]
    assert sorted(g["title"] for g in statics) == sorted([CLIENTS, DUCKS])
    assert next(g for g in statics if g["title"] == CLIENTS)["id"] == existing
    assert next(g for g in statics if g["title"] == DUCKS)["membersCount"] == 2


def test_removals_delete_members_and_groups(client, ci):
    write(client, [change("a@example.com", groups=(CLIENTS, DUCKS))])
    update = change("a@example.com", "update", groups=(CLIENTS,), groups_removed=(DUCKS,))
    assert write(client, [update])["a@example.com"].outcome == "updated"
    assert ci.member_groups("a@example.com") == {CLIENTS}
    assert ci.request_count("DELETE", "/members/{key}/groups/{group_id}") == 1
    gone = [change("a@example.com", "remove", values={}), change("x@example.com", "remove")]
    acks = write(client, gone)
    assert {a.outcome for a in acks.values()} == {"removed"}  # 404: already gone
    assert ci.member("a@example.com") is None


# --- CI-A10 consent ------------------------------------------------------------------------------


def consent_values(day: str, proof: str = "REG-1") -> dict[str, Any]:
    return {"firstname": "Léa", "consentDate": day, "consentProof": proof}


def test_consent_is_put_only_when_its_inputs_changed(client, ci, shared):
    write(client, [change("a@example.com", values=consent_values("2024-05-01"))])
    assert ci.request_count("PUT", "/members/{key}/consent") == 1
    with api(shared) as http:
        stored = http.get("/members/a%40example.com/consent").json()
    assert stored["relationType"] == "active-clients" and stored["consentDate"] == "2024-05-01"
    assert stored["consentProof"] == "REG-1"
    same = change(
        "a@example.com",
        "update",
        values=consent_values("2024-05-01"),
        changed=frozenset({"firstname"}),
    )
    write(client, [same])
    assert ci.request_count("PUT", "/members/{key}/consent") == 1
    moved = change(
        "a@example.com",
        "update",
        values=consent_values("2025-01-02T10:00:00-05:00", "REG-2"),
        changed=frozenset({"consentProof"}),
    )
    write(client, [moved])
    assert ci.request_count("PUT", "/members/{key}/consent") == 2
    assert client.run_figures() == {"consents_sent": 2, "consents_kept_stronger": 0, "batches": 0}


def test_a_stronger_stored_consent_is_kept_and_counted(client, ci, shared):
    write(client, [change("a@example.com", values={"email": "a@example.com"})])
    with api(shared) as http:
        body = {"relationType": "express-consent", "consentDate": "2024-01-01"}
        assert http.put("/members/a%40example.com/consent", json=body).status_code == 200
    acks = write(client, [change("a@example.com", "update", values=consent_values("2024-05-01"))])
    assert acks["a@example.com"].outcome == "updated" and not acks["a@example.com"].dropped
    assert client.run_figures()["consents_kept_stronger"] == 1
    assert client.run_figures()["consents_sent"] == 1


# --- CI-A11 read-back, member_count --------------------------------------------------------------


def test_unsubscribes_and_bounces_are_read_back_once_per_email(client, ci, shared):
    write(client, [change(f"m{n}@example.com") for n in range(4)])
    before = datetime.now(UTC) - timedelta(seconds=5)
    control = f"{shared[0]}/_sandbox/cyberimpact"
    httpx.post(f"{control}/unsubscribe", json={"email": "m1@example.com"})
    httpx.post(f"{control}/bounce", json={"email": "m1@example.com"})
    httpx.post(f"{control}/bounce", json={"email": "m2@example.com"})
    changed = {m.email: m for m in client.iter_members(before)}
    assert set(changed) == {"m1@example.com", "m2@example.com"}
    assert changed["m1@example.com"].status == "unsubscribed"
    assert changed["m1@example.com"].email_status == "hard_bounce"
    assert changed["m1@example.com"].unsubscribed_at is not None
    assert changed["m2@example.com"].status == "active"
    assert changed["m2@example.com"].email_status == "hard_bounce"
    everyone = list(client.iter_members(None))
    assert sorted(m.email for m in everyone) == [f"m{n}@example.com" for n in range(4)]
    assert client.has_member_changes(before)
    # the lists filter by day: an unsubscribe earlier today is no change after a later mark
    later = datetime.now(UTC) + timedelta(seconds=2)
    assert not client.has_member_changes(later)
    assert client.member_count() == 3  # the unsubscribed member is not listed


def test_listing_pages_until_page_times_limit_covers_the_total(make, ci, shared):
    """CI-A2: page by page, stopping once `page * limit >= totalCount` (no empty last page)."""
    write(make(), [change(f"m{n}@example.com") for n in range(5)])
    import resources.cyberimpact as module

    original = module.PAGE_SIZE
    module.PAGE_SIZE = 2
    try:
        found = sorted(m.email for m in make().iter_members(None))
    finally:
        module.PAGE_SIZE = original
    assert found == [f"m{n}@example.com" for n in range(5)]
    assert ci.request_count("GET", "/members") == 3


# --- wire conversion (CI-A9) ---------------------------------------------------------------------


def test_canonical_values_become_cyberimpact_wire_values():
    custom = {
        name: CustomField(n, name, kind)
        for n, (name, kind) in enumerate(
            [
                ("Amilia.IsArchived", "text"),
                ("Amilia.Skills", "text"),
                ("Amilia.Count", "integer"),
                ("Amilia.Balance", "decimal"),
                ("Amilia.Since", "date"),
                ("Amilia.Flag", "text"),
            ],
            start=10,
        )
    }
    values = {
        "email": "Lea@Example.com",
        "gender": "F",
        "language": "fr",
        "birthdate": datetime(1990, 5, 1, 23, 0),
        "Amilia.IsArchived": False,
        "Amilia.Skills": ["Nage", "Plongeon"],
        "Amilia.Count": "12",
        "Amilia.Balance": "12.50",
        "Amilia.Since": "2024-05-01T13:45:00-04:00",
        "Amilia.Flag": "true",
        "consentDate": date(2024, 5, 1),
        "city": "Montréal",
        "lastname": None,
    }
    member = wire_member("lea@example.com", values, custom)
    assert member.fields == {"gender": "f", "language": "fr_ca", "birthdate": "1990-05-01"}
    assert member.custom == {
        "10": "False",
        "11": "Nage,Plongeon",
        "12": 12,
        "13": 12.5,
        "14": "2024-05-01",
        "15": "True",
    }
    assert member.consent == {"consentDate": "2024-05-01"}
    assert member.dropped == [("city", "no such field on the Cyberimpact account")]
    bad = wire_member("x@example.com", {"Amilia.Count": "1.5", "country": "CAN"}, custom)
    assert [name for name, _ in bad.dropped] == ["Amilia.Count", "country"]


# --- integration file section --------------------------------------------------------------------


def test_section_parses_with_defaults_and_builds_a_resource():
    assert target_sections()["cyberimpact"] is CyberimpactTarget
    section = parse_target(
        {"kind": "cyberimpact", "account": ACCOUNT, "api_token_env": "CYBERIMPACT_API_TOKEN"}
    )
    assert isinstance(section, CyberimpactTarget)
    assert section.base_url == "https://api.cyberimpact.com"
    assert section.destination == ACCOUNT and section.env_vars() == ["CYBERIMPACT_API_TOKEN"]
    polling = (section.poll_seconds, section.batch_threshold)
    assert polling == (5.0, 50)
    resource = section.resource()
    assert resource.account == ACCOUNT and resource.batch_threshold == 50
    with pytest.raises(ValueError):
        parse_target({"kind": "cyberimpact", "account": ACCOUNT, "api_token_env": "not a name"})


# --- review fixes: answers the emulator does not give, through a rewriting transport -----------


class Rewrite(httpx.HTTPTransport):
    """Forwards to the emulator; `before` may answer instead of it, `after` may change its
    answer (both get the request; `after` also gets the answer's JSON body or None)."""

    def __init__(self, before=None, after=None) -> None:
        super().__init__()
        self.before, self.after = before, after
        self.sent: list[tuple[str, str, Any]] = []  # method, path, JSON body

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.sent.append((request.method, request.url.path, body))
        if self.before is not None and (early := self.before(request)) is not None:
            return early
        response = super().handle_request(request)
        if self.after is None:
            return response
        response.read()
        data = response.json() if response.content else None
        changed = self.after(request, response.status_code, data)
        return response if changed is None else changed


def answer(request: httpx.Request, status: int, body: Any = None, raw: bytes = b"") -> Any:
    if body is not None:
        return httpx.Response(status, json=body, request=request)
    return httpx.Response(status, content=raw, request=request)


def route(request: httpx.Request, method: str, suffix: str) -> bool:
    return request.method == method and request.url.path.endswith(suffix)


def as_text_ids(data: Any) -> Any:
    """Every `id` (and `totalCount`/`limit`) as a digit string, recursively."""
    if isinstance(data, list):
        return [as_text_ids(item) for item in data]
    if isinstance(data, dict):
        keys = ("id", "totalCount", "limit")
        return {
            k: str(v) if k in keys and isinstance(v, int) else as_text_ids(v)
            for k, v in data.items()
        }
    return data


BATCHED = dict(batch_threshold=2)  # the batch path from two members on


@pytest.mark.parametrize("shape", ["json text", "not json", "errors not a list"])
def test_a_batch_result_that_is_no_object_never_crashes(make, ci, shape):
    """Finding 1: `result` as a JSON string is read; anything else names no member."""

    def after(request, status, data):
        if request.method == "GET" and "/batches/" in request.url.path and data["result"]:
            result = data["result"]
            data["result"] = {
                "json text": json.dumps(result),
                "not json": "{oops",
                "errors not a list": {**result, "errors": 5},
            }[shape]
            return answer(request, status, data)
        return None

    client = make(transport=Rewrite(after=after), **BATCHED)
    acks = write(client, [change("a@example.com"), change("b@example.com")])
    expected = "error" if shape == "not json" else "created"
    assert {a.outcome for a in acks.values()} == {expected}


def test_ids_as_digit_strings_are_read_and_rows_without_an_id_skipped(make, ci, shared):
    """Findings 2 and 6: groups, custom fields, batches and members with ids as text."""
    with api(shared) as http:
        http.post("/customfields", json={"name": "Amilia.Count", "type": "integer"})

    def after(request, status, data):
        if data is None or status >= 400:
            return None
        if route(request, "GET", "/groups"):
            data["groups"].append({"title": "No id", "isDynamic": False})
            data["groups"].append({"id": "x1", "title": "Bad id", "isDynamic": False})
        return answer(request, status, as_text_ids(data))

    client = make(transport=Rewrite(after=after), **BATCHED)
    values = {"email": "a@example.com", "Amilia.Count": 3}
    one = write(client, [change("a@example.com", values=values, groups=(CLIENTS,))])
    assert one["a@example.com"].outcome == "created"
    assert one["a@example.com"].member_id == str(ci.member("a@example.com")["id"])
    assert ci.member("a@example.com")["customFields"] == {str(ci.custom_fields()[0]["id"]): 3}
    batch = write(client, [change(f"b{n}@example.com", groups=(DUCKS,)) for n in range(2)])
    assert {a.outcome for a in batch.values()} == {"created"}
    assert ci.member_groups("b1@example.com") == {DUCKS}
    fresh = make(transport=Rewrite(after=after))  # reads the groups again
    later = write(fresh, [change("c@example.com", groups=("No id",))])
    assert later["c@example.com"].outcome == "created"
    assert sorted(g["title"] for g in ci.groups()) == sorted([CLIENTS, DUCKS, "No id"])


def test_a_group_post_whose_answer_was_lost_is_not_made_twice(make, ci):
    """Finding 6: after an uncertain POST /groups the titles are read again."""

    def after(request, status, data):
        if route(request, "POST", "/groups") and ci.request_count("POST", "/groups") == 1:
            return answer(request, 502, {"message": "Bad gateway", "errors": {}})
        return None

    client = make(transport=Rewrite(after=after))
    first = write(client, [change("a@example.com", groups=(CLIENTS,))])
    assert first["a@example.com"].outcome == "error"
    again = write(client, [change("a@example.com", groups=(CLIENTS,))])
    assert again["a@example.com"].outcome == "created"
    assert [g["title"] for g in ci.groups()] == [CLIENTS]
    assert ci.request_count("POST", "/groups") == 1 and ci.request_count("GET", "/groups") == 2


@pytest.mark.parametrize("status", [204, 200])
def test_an_empty_write_answer_is_success(make, ci, status):
    """Finding 3: a PATCH or POST answered 204 or an empty 200 is done, not retried."""

    def after(request, code, data):
        if code < 300 and (route(request, "PATCH", ".com") or route(request, "POST", "/members")):
            return answer(request, status)
        return None

    client = make(transport=Rewrite(after=after))
    write(client, [change("old@example.com")])
    acks = write(client, [change("old@example.com", "update"), change("new@example.com")])
    assert acks["old@example.com"].outcome == "updated"
    assert acks["new@example.com"].outcome == "created"
    assert ci.request_count("PATCH", "/members/{key}") == 3  # no retry of an empty answer
    assert client.calls.retries == 0


def test_an_update_whose_member_was_gone_is_created_with_its_consent(client, ci):
    """Finding 4: PATCH 404 then POST: the new member gets its consent, changed or not."""
    gone = change(
        "a@example.com",
        "update",
        values=consent_values("2024-05-01"),
        changed=frozenset({"firstname"}),
    )
    assert write(client, [gone])["a@example.com"].outcome == "created"
    assert ci.request_count("PUT", "/members/{key}/consent") == 1


def test_a_batch_refused_whole_is_written_one_by_one(make, ci):
    """Finding 5: a 400 on POST /batches: each member of the chunk gets its own verdict."""

    def before(request):
        if route(request, "POST", "/batches"):
            return answer(request, 400, {"message": "Invalid data", "errors": {"members": ["?"]}})
        return None

    client = make(transport=Rewrite(before=before), **BATCHED)
    acks = write(client, [change("a@example.com"), change("bad-email"), change("b@example.com")])
    assert acks["a@example.com"].outcome == acks["b@example.com"].outcome == "created"
    assert acks["bad-email"].outcome == "refused"
    assert ci.request_count("POST", "/members") == 3


def test_unsubscribed_emails_are_read_once_and_never_written(make, ci, shared):
    """Findings 7 and 8 (CI-A5): no call for an unsubscribed email, and no delete of it."""
    control = f"{shared[0]}/_sandbox/cyberimpact"
    write(make(), [change("kept@example.com")])
    for email in ("kept@example.com", "other@example.com", "third@example.com"):
        httpx.post(f"{control}/unsubscribe", json={"email": email})
    before = len(ci.requests())
    client = make(page_size=2)
    acks = write(
        client,
        [
            change("KEPT@example.com", "update", values=consent_values("2024-05-01")),
            change("third@example.com", groups=(CLIENTS,)),
            change("new@example.com"),
        ],
    )
    kept = acks["KEPT@example.com"]
    assert kept.outcome == "unsubscribed" and kept.checked and kept.remote is not None
    assert kept.remote.status == "unsubscribed" and kept.remote.email == "kept@example.com"
    assert acks["third@example.com"].outcome == "unsubscribed"
    assert acks["new@example.com"].outcome == "created"
    removed = write(client, [change("kept@example.com", "remove")])["kept@example.com"]
    assert removed.outcome == "removed" and "unsubscribe stays" in (removed.reason or "")
    assert ci.member("kept@example.com") is not None
    sent = [(r.method, r.path) for r in ci.requests()[before:]]
    assert not [s for s in sent if "kept" in s[1] or "third" in s[1]]
    lists = [s for s in sent if s == ("GET", "/cyberimpact/members/unsubscribed")]
    assert len(lists) == 2  # its two pages, read once for the client's two calls
    assert ci.request_count("POST", "/groups") == 0


def test_a_409_unsubscribed_on_patch_or_in_errors_email_is_unsubscribed(make, ci):
    """Findings 7 and 20: a PATCH 409 "unsubscribed"; the word in `errors.email` alone."""

    def before(request):
        if route(request, "PATCH", ".com"):
            body = {"message": "Conflict", "errors": {"email": ["Unsubscribed"]}}
            return answer(request, 409, body)
        return None

    acks = write(make(transport=Rewrite(before=before)), [change("a@example.com")])
    assert acks["a@example.com"].outcome == "unsubscribed"
    assert ci.request_count("POST", "/members") == 0
    from resources.cyberimpact import _is_unsubscribed

    body = {"message": "Conflict", "errors": {"email": ["unsubscribed"]}}
    assert _is_unsubscribed(VendorError("cyberimpact", 409, "Conflict", body))
    assert not _is_unsubscribed(VendorError("cyberimpact", 409, "Member already exists", {}))


def test_group_batches_follow_their_batch_and_only_for_accepted_members(make, ci):
    """Finding 10: the emails-only group batch goes after the chunk's batch finished, without
    the member that batch refused."""
    transport = Rewrite()
    client = make(transport=transport, **BATCHED)
    changes = [
        change("a@example.com", groups=(CLIENTS, DUCKS)),
        change("b@example.com", groups=(CLIENTS,)),
        change("bad-email", groups=(CLIENTS, DUCKS)),
    ]
    acks = write(client, changes)
    assert acks["a@example.com"].outcome == "created" and acks["bad-email"].outcome == "refused"
    calls = [(m, p, b) for m, p, b in transport.sent if "/batches" in p]
    posts = [n for n, (m, _, _) in enumerate(calls) if m == "POST"]
    assert len(posts) == 2 and calls[posts[1] - 1][0] == "GET"  # polled before the group batch
    assert calls[posts[1]][2]["members"] == [{"email": "a@example.com"}]
    assert ci.member_groups("a@example.com") == {CLIENTS, DUCKS}


def test_nested_groups_go_in_one_batch_and_no_member_gets_a_group_it_does_not_gain(make, ci):
    """Batch-level groups are additive and apply to every member of the batch: members who
    all gain an activity and its parents get them in one batch; a member gaining only the
    parent is not given the activity."""
    swim, kids = "Natation", "Natation \\ Enfants"
    changes = [change(f"k{n}@example.com", groups=(CLIENTS, swim, kids, DUCKS)) for n in range(3)]
    changes += [change("adult@example.com", groups=(CLIENTS, swim))]
    changes += [change("solo@example.com", groups=(CLIENTS,))]
    acks = write(make(**BATCHED), changes)
    assert {ack.outcome for ack in acks.values()} == {"created"}
    # the chunk's own batch (fields + Clients), the three groups the children share, then
    # Natation for the adult: 3 batches, not 1 + one per group (4)
    assert ci.request_count("POST", "/batches") == 3
    for n in range(3):
        assert ci.member_groups(f"k{n}@example.com") == {CLIENTS, swim, kids, DUCKS}
    assert ci.member_groups("adult@example.com") == {CLIENTS, swim}
    assert ci.member_groups("solo@example.com") == {CLIENTS}


@pytest.mark.parametrize("seed", range(5))
def test_group_cover_gives_each_member_exactly_its_groups(seed):
    rng = random.Random(seed)
    titles = [f"g{n}" for n in range(30)]
    needs = [set(rng.sample(titles, rng.randint(0, 6))) for _ in range(200)]
    batches = group_cover(needs)
    given: list[set[str]] = [set() for _ in needs]
    for members, groups in batches:
        assert members and groups
        for n in members:
            assert set(groups) <= needs[n]  # never a group the member does not gain
            given[n] |= set(groups)
    assert given == needs
    assert len(batches) <= len(set().union(*needs))  # never more than one batch per group


def test_update_only_and_create_only_never_go_as_batches(make, ci):
    """Finding 11: a batch cannot be told "update only": such imports go one by one."""
    client = make(**BATCHED)
    write(client, [change("a@example.com"), change("b@example.com")])
    policy = WritePolicy(match_on="email", import_type="update_only", reimport_unsubscribed=False)
    updates = [change(e, "update") for e in ("a@example.com", "b@example.com")]
    acks = write(client, [*updates, change("c@example.com")], policy)
    assert acks["a@example.com"].outcome == "updated"
    assert acks["c@example.com"].outcome == "import_type"
    assert ci.request_count("POST", "/batches") == 1  # the first, create_and_update call only


def test_polling_stops_at_its_deadline_with_error_acks(make, ci):
    """Finding 12: a batch still running at `poll_timeout` leaves its members in `error`."""
    clock = FakeClock()
    ci.batch_polls = 10_000
    client = make(clock=clock, sleep=clock.sleep, poll_seconds=5, poll_timeout=30, **BATCHED)
    acks = write(client, [change("a@example.com"), change("b@example.com")])
    assert {a.outcome for a in acks.values()} == {"error"}
    assert "did not finish in time" in (acks["a@example.com"].reason or "")
    assert ci.request_count("GET", "/batches/{batch_id}") == 6


@pytest.mark.parametrize("status", ["completed", "FAILED"])
def test_any_status_but_new_or_processing_is_finished(make, ci, status):
    """Finding 12: statuses compared upper-case; a finished batch without a result: errors."""

    def after(request, code, data):
        if request.method == "GET" and "/batches/" in request.url.path:
            if data["status"] == "COMPLETED":
                data["status"] = status
                if status == "FAILED":
                    data["result"] = None
                return answer(request, code, data)
        return None

    client = make(transport=Rewrite(after=after), poll_seconds=600, **BATCHED)
    acks = write(client, [change("a@example.com"), change("b@example.com")])
    if status == "FAILED":
        assert {a.outcome for a in acks.values()} == {"error"}
        assert "FAILED without a result" in (acks["a@example.com"].reason or "")
    else:
        assert {a.outcome for a in acks.values()} == {"created"}
    assert ci.request_count("GET", "/batches/{batch_id}") == 2


def test_paging_reads_text_counts_and_the_page_size_setting(make, ci):
    """Finding 14: `totalCount`/`limit` as digits; `page_size`; stop on rows seen or empty."""
    write(make(), [change(f"m{n}@example.com") for n in range(5)])

    def after(request, status, data):
        if route(request, "GET", "/members"):
            data["totalCount"] = str(data["totalCount"] + 10)  # off: the empty page stops it
            data["limit"] = str(data["limit"])
            return answer(request, status, data)
        return None

    found = make(transport=Rewrite(after=after), page_size=2).iter_members(None)
    assert sorted(m.email for m in found) == [f"m{n}@example.com" for n in range(5)]
    assert ci.request_count("GET", "/members") == 4  # 2 + 2 + 1, then the empty page


def test_bounces_read_hard_bounced_on_and_a_row_without_a_stamp_is_no_change(make, ci, shared):
    """Finding 15: `hardBouncedOn` counts as the bounce time; a row with none is no change."""
    write(make(), [change("m@example.com")])
    before = datetime.now(UTC) - timedelta(seconds=5)
    httpx.post(f"{shared[0]}/_sandbox/cyberimpact/bounce", json={"email": "m@example.com"})

    def after(request, status, data):
        if route(request, "GET", "/members/bounced"):
            rows = [{"hardBouncedOn": r.pop("bouncedOn"), **r} for r in data["members"]]
            rows.append({"email": "nostamp@example.com"})
            return answer(request, status, data | {"members": rows, "totalCount": len(rows)})
        return None

    client = make(transport=Rewrite(after=after))
    assert client.has_member_changes(before)
    later = datetime.now(UTC) + timedelta(seconds=2)
    assert not client.has_member_changes(later)
    bounced = {m.email: m for m in client.iter_members(before)}
    assert bounced["m@example.com"].email_status == "hard_bounce"


def test_the_account_name_is_compared_normalised(make):
    """Finding 17: NFC, surrounding spaces and case do not matter."""
    decomposed = unicodedata.normalize("NFD", "  centre SPORTIF démo ")
    make(account=decomposed).check_connection()
    with pytest.raises(AccountMismatch):
        make(account="Centre sportif demo").check_connection()


def test_true_false_text_only_in_custom_text_and_language_by_its_first_letters():
    """Findings 22 and 23."""
    custom = {"Amilia.Flag": CustomField(10, "Amilia.Flag", "text")}
    values = {"firstname": "true", "Amilia.Flag": "false", "language": "en-US"}
    member = wire_member("a@example.com", values, custom)
    assert member.fields == {"firstname": "true", "language": "en_ca"}
    assert member.custom == {"10": "False"}
    for given, wanted in [("English", "en_ca"), ("FR_ca", "fr_ca"), ("fra", "fr_ca")]:
        assert wire_member("a@example.com", {"language": given}, {}).fields["language"] == wanted
    assert wire_member("a@example.com", {"language": "de"}, {}).dropped[0][0] == "language"


def test_section_takes_a_page_size_and_a_poll_timeout():
    section = parse_target(
        {
            "kind": "cyberimpact",
            "account": ACCOUNT,
            "api_token_env": "CYBERIMPACT_API_TOKEN",
            "page_size": 100,
            "poll_timeout_seconds": 60,
        }
    )
    given = (section.page_size, section.poll_timeout_seconds)
    assert given == (100, 60)
    resource = section.resource()
    passed = (resource.page_size, resource.poll_timeout_seconds)
    assert passed == (100, 60)
    default = parse_target(
        {"kind": "cyberimpact", "account": ACCOUNT, "api_token_env": "CYBERIMPACT_API_TOKEN"}
    )
    defaults = (default.page_size, default.poll_timeout_seconds)
    assert defaults == (1000, 1800)
    with pytest.raises(ValueError):
        parse_target({**section.model_dump(), "page_size": 20_000})


def test_a_member_without_a_consent_date_never_goes_in_a_bulk_job(client, ci):
    """An addMembers batch sets a consent on whom it touches: one is never made up."""
    with_consent = [change(f"c{n}@example.com") for n in range(60)]
    without = change("none@example.com", values={"email": "none@example.com", "firstname": "X"})
    acks = write(client, [*with_consent, without])
    assert {a.outcome for a in acks.values()} == {"created"}
    batched = {
        m["email"].lower()
        for batch in ci.account(CYBERIMPACT_API_TOKEN).batches.values()
        for m in batch.body.get("members", [])
    }
    assert "none@example.com" not in batched and "c0@example.com" in batched
    with ci._lock:
        assert ci.account(CYBERIMPACT_API_TOKEN).members["none@example.com"].consent is None


def test_a_bounce_after_an_earlier_unsubscribe_is_read_as_unsubscribed(client, ci, shared):
    """A bounce row says nothing of the subscription: a member who unsubscribed before the
    window and bounced in it is not reported active (which would overwrite the unsubscribe in
    the warehouse)."""
    write(client, [change("m1@example.com"), change("m2@example.com")])
    control = f"{shared[0]}/_sandbox/cyberimpact"
    httpx.post(f"{control}/unsubscribe", json={"email": "m1@example.com"})
    clock = ci.clock
    ci.clock = lambda: clock() + 3600  # the bounces come an hour later
    try:
        httpx.post(f"{control}/bounce", json={"email": "m1@example.com"})
        httpx.post(f"{control}/bounce", json={"email": "m2@example.com"})
    finally:
        ci.clock = clock
    window = datetime.now(UTC) + timedelta(minutes=30)

    changed = {m.email: m for m in client.iter_members(window)}

    assert set(changed) == {"m1@example.com", "m2@example.com"}
    assert changed["m1@example.com"].status == "unsubscribed"
    assert changed["m1@example.com"].email_status == "hard_bounce"
    assert changed["m2@example.com"].status == "active"
