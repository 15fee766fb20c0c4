"""AmiliaClient against the Amilia emulator over real sockets: both auth kinds and a refused one
(AM-A1/A2), one re-auth after a 401, paging (AM-A4) and 429s (AM-A14), children left out and
skill names (AC2, AM-A6), monthly windows (AC1), the registrations cursor, re-reads with
tombstones and `account:<id>` (AC3/AC4), memberships read whole (AM-A8), webhook subscriptions
(AM-A12) and a Disabled one (AM-A13); then the `source:` section. Paging and link edge cases
the emulator never produces run against a scripted Amilia (httpx.MockTransport)."""

from __future__ import annotations

import json
import math
import socket
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from itertools import count

import httpx
import pytest
from pydantic import ValidationError

from memberflow.mapping import load_mapping
from memberflow.normalize import date_parser
from resources.amilia import (
    HOOKS,
    AmiliaClient,
    AmiliaSource,
    account_purchases,
    month_windows,
    parse_moment,
    with_owner_id,
)
from resources.amilia_webhook import AmiliaWebhook
from resources.auth import forget_shared_tokens
from resources.base import VendorError
from resources.source import is_tombstone
from sandbox.credentials import SANDBOX_ENV

USER = SANDBOX_ENV["AMILIA_USERNAME"]
PASSWORD = SANDBOX_ENV["AMILIA_PASSWORD"]
KEY = SANDBOX_ENV["AMILIA_API_KEY"]
KEY_SECRET = SANDBOX_ENV["AMILIA_API_SECRET"]
ORG = SANDBOX_ENV["AMILIA_ORG"]
_names = count()


@pytest.fixture(autouse=True)
def _fresh_tokens():
    """Tokens are kept per credential for the process; each test counts its own logins."""
    forget_shared_tokens()
    yield


@pytest.fixture(scope="module")
def sandbox():
    from sandbox.server import SandboxServer

    with SandboxServer(seed=5, customers=100, days=60, rate_limits=True) as server:
        yield server


@pytest.fixture(scope="module")
def amilia(sandbox):
    state = sandbox.emulator("amilia")
    state.retry_delays = (0.01, 0.01)  # AM-A13 compressed: a failing receiver is Disabled fast
    return state


@pytest.fixture
def make(sandbox):
    made: list[AmiliaClient] = []

    def build(**kwargs) -> AmiliaClient:
        options = {
            "base_url": f"{sandbox.url}/amilia",
            "org": ORG,
            "username": USER,
            "password": PASSWORD,
            "integration": f"test{next(_names)}",
            **kwargs,
        }
        client = AmiliaClient(**options)
        made.append(client)
        return client

    yield build
    for client in made:
        client.close()


def delta(amilia, before: dict[str, int]) -> dict[str, int]:
    after = dict(amilia.request_counts)
    return {k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)}


def records(pages) -> list[dict]:
    return [record for page in pages for record in page]


def closed_port_url(path: str) -> str:
    """A loopback URL nothing listens on: every delivery to it fails at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


# -- auth (AM-A1, A2) ------------------------------------------------------------------------------
@pytest.mark.parametrize("user, secret", [(USER, PASSWORD), (KEY, KEY_SECRET)])
def test_user_credentials_or_an_api_key_pair_authenticate_once(make, amilia, user, secret):
    before = dict(amilia.request_counts)
    client = make(username=user, password=secret)
    client.check_connection()
    client.check_connection()
    assert delta(amilia, before) == {"authenticate GET": 1, "GET persons": 2}


def test_refused_credentials_name_the_host_and_never_the_password(make, sandbox):
    client = make(password="not-the-password")
    with pytest.raises(VendorError) as refused:
        client.check_connection()
    host = sandbox.url.split("//", 1)[1]
    assert refused.value.status == 401 and host in refused.value.message
    assert "denied" in refused.value.message and "environment variables" in refused.value.message
    assert "not-the-password" not in str(refused.value)


def test_an_expired_token_costs_one_new_authentication(make, amilia):
    client = make()
    client.check_connection()
    amilia.expire_tokens()
    before = dict(amilia.request_counts)
    client.check_connection()
    # the emulator counts admitted reads only; the client counts the refused one too
    assert delta(amilia, before) == {"authenticate GET": 1, "GET persons": 1}
    assert client.calls.by_endpoint() == {"authenticate": 2, "persons": 3}


def test_paced_persons_wait_for_room_instead_of_meeting_429s(make, amilia):
    """AM-A14: paced to 10 requests/s per credential, the same pages come without a 429, and
    the waits are counted for the run's metadata."""
    client = make(page_size=7)
    before = dict(amilia.request_counts)
    records(client.iter_changed("persons", None))
    assert delta(amilia, before)["GET persons"] == math.ceil(len(amilia.persons) / 7)
    assert client.calls.throttled == 0 and client.calls.retries == 0
    waits = client.calls.pacing()  # counted, whatever this machine's speed made them last
    assert waits["throttled_waits"] >= 1 and set(waits) == {"throttled_waits", "throttled_seconds"}


def test_another_org_is_refused_with_amilias_message_and_the_host(make, sandbox):
    with pytest.raises(VendorError) as refused:
        make(org="another-org").check_connection()
    assert refused.value.status == 403
    assert "another-org" in refused.value.message and sandbox.url.split("//")[1] in str(
        refused.value
    )


# -- persons (AM-A4, A6, AC2) ----------------------------------------------------------------------
def test_persons_are_paged_whole_through_429s_without_children(make, amilia):
    client = make(page_size=7, requests_per_second=0)  # unpaced: the 429s come
    before = dict(amilia.request_counts)
    persons = records(client.iter_changed("persons", None))
    pages = math.ceil(len(amilia.persons) / 7)
    assert delta(amilia, before)["GET persons"] == pages  # 429s are not counted as reads
    assert client.calls.throttled >= 1  # 10 req/s per token (AM-A14), Retry-After honoured
    adults = {pid for pid, p in amilia.persons.items() if not p["IsChild"]}
    assert {p["Id"] for p in persons} == adults and len(persons) == len(adults)
    assert client.scan_complete("persons")
    archived = [p for p in persons if p["IsArchived"]]
    assert archived, "archived persons are read too (showArchived=true)"
    for person in persons:
        names = [s["Name"] for s in amilia.persons[person["Id"]]["Skills"]]
        assert person["SkillNames"] == ", ".join(names)
    assert any(p["SkillNames"] for p in persons)


def test_a_scan_stopped_early_is_not_complete(make):
    client = make(page_size=5)
    pages = client.iter_changed("persons", None)
    next(pages)
    assert not client.scan_complete("persons")


def test_persons_scan_again_once_the_last_scan_is_older_than_the_interval(make, amilia):
    client = make(full_scan_minutes=60)
    before = dict(amilia.request_counts)
    now = datetime.now(UTC)
    assert client.has_changes("persons", None)
    assert not client.has_changes("persons", (now - timedelta(minutes=10)).isoformat())
    assert client.has_changes("persons", (now - timedelta(minutes=61)).isoformat())
    assert client.has_changes("memberships", (now - timedelta(minutes=61)).isoformat())
    assert delta(amilia, before) == {}  # no call spent
    assert client.cursor_after("persons", None, None, now) == now.isoformat()


def test_person_meta_uses_join_date_as_its_modified_time(make):
    client = make()
    meta = client.record_meta("persons", {"Id": 7, "JoinDate": "2024-03-01"})
    assert (meta.record_id, meta.modified, meta.business_date) == (
        "7",
        datetime(2024, 3, 1, tzinfo=UTC),
        None,
    )
    assert client.record_meta("persons", {"Id": 8, "JoinDate": None}).modified.tzinfo is UTC


# -- registrations (AM-A5, AC1) --------------------------------------------------------------------
def test_a_24_month_range_is_read_as_monthly_windows(make, amilia):
    client = make()
    end = date.today()
    start = (end.replace(day=1) - timedelta(days=730)).replace(day=1)
    windows = list(month_windows(start, end))
    assert len(windows) == 25 and windows[0] == (
        start,
        (start + timedelta(days=31)).replace(day=1) - timedelta(days=1),
    )
    before = dict(amilia.request_counts)
    got = records(client.iter_range("registrations", start, end))
    assert delta(amilia, before) == {
        "authenticate GET": 1,
        "GET registrations": len(windows),  # one page per month
    }
    expected = {
        f"AC-{n}" for n, r in amilia.registrations.items() if start <= r["Created"].date() <= end
    }
    assert {r["RegistrationId"] for r in got} == expected
    for record in got:
        meta = client.record_meta("registrations", record)
        assert meta.business_date == date.fromisoformat(record["DateCreated"][:10])
        assert meta.modified == parse_moment(record["DateCreated"])
        assert record["AccountOwnerId"] == record["AccountOwner"]["Id"]
        assert record["DateCreatedLocal"] == record["DateCreated"][:10]


def test_month_windows_cut_at_month_ends_inclusively():
    assert list(month_windows(date(2026, 1, 15), date(2026, 3, 2))) == [
        (date(2026, 1, 15), date(2026, 1, 31)),
        (date(2026, 2, 1), date(2026, 2, 28)),
        (date(2026, 3, 1), date(2026, 3, 2)),
    ]
    assert list(month_windows(date(2026, 5, 5), date(2026, 5, 5))) == [
        (date(2026, 5, 5), date(2026, 5, 5))
    ]


def test_an_evening_registration_lands_on_the_orgs_own_calendar_day(make):
    meta = make().record_meta(
        "registrations", {"RegistrationId": "AC-1", "DateCreated": "2026-09-25T22:46:00-04:00"}
    )
    assert meta.business_date == date(2026, 9, 25)
    assert meta.modified == datetime(2026, 9, 26, 2, 46, tzinfo=UTC)


def test_registrations_cursor_probe_and_incremental_read(make, amilia):
    client = make(recheck_days=0)  # recent registrations are not read again (next test)
    newest = max(
        parse_moment(r["DateCreated"]) for r in records(client.iter_changed("registrations", None))
    )
    cursor = client.cursor_after("registrations", None, newest, datetime.now(UTC))
    assert cursor == newest.isoformat()
    before = dict(amilia.request_counts)
    assert not client.has_changes("registrations", cursor)
    assert delta(amilia, before) == {"GET registrations": 1}
    assert not [
        r
        for r in records(client.iter_changed("registrations", cursor))
        if parse_moment(r["DateCreated"]) > newest
    ]
    adult = next(p for p in amilia.persons.values() if not p["IsChild"])
    made = amilia.register(adult["Id"], next(iter(amilia.activities)))
    assert client.has_changes("registrations", cursor)
    again = records(client.iter_changed("registrations", cursor))
    assert made["RegistrationId"] in {r["RegistrationId"] for r in again}
    # an hour back from the cursor: a registration committed late is not missed
    assert all(parse_moment(r["DateCreated"]) >= newest - timedelta(hours=1) for r in again)


def test_recent_registrations_are_read_again_every_scan_interval_so_unregistrations_show(
    make, amilia
):
    """AC5 without webhooks: a cancellation changes no creation date, so the last
    `recheck_days` are read again once per `full_scan_minutes`, tracked in the cursor."""
    adult = next(p for p in amilia.persons.values() if not p["IsChild"])
    made = amilia.register(adult["Id"], next(iter(amilia.activities)))
    client = make(recheck_days=30, full_scan_minutes=60)
    created = parse_moment(made["DateCreated"]) + timedelta(hours=2)  # read past it already
    amilia.cancel_registration(made["RegistrationId"])
    assert client.has_changes("registrations", created.isoformat())  # never re-read: due
    again = {
        r["RegistrationId"]: r
        for r in records(client.iter_changed("registrations", created.isoformat()))
    }
    assert again[made["RegistrationId"]]["IsCancelled"] is True
    cursor = client.cursor_after("registrations", created.isoformat(), None, datetime.now(UTC))
    newest, rechecked = cursor.split("|")
    assert datetime.fromisoformat(newest) == created and datetime.fromisoformat(rechecked)
    later = make(recheck_days=30, full_scan_minutes=60)  # the next run, within the hour
    assert not [
        r
        for r in records(later.iter_changed("registrations", cursor))
        if r["RegistrationId"] == made["RegistrationId"]
    ]


def test_registrations_are_read_again_by_id_and_a_deleted_one_is_a_tombstone(make, amilia):
    client = make()
    number, row = next((n, r) for n, r in sorted(amilia.registrations.items()))
    gone = sorted(amilia.registrations)[-1]
    amilia.delete_registration(f"AC-{gone}")
    got = records(client.fetch_records("registrations", [f"AC-{number}", f"AC-{gone}"]))
    assert got[0]["RegistrationId"] == f"AC-{number}" and "AccountOwnerId" in got[0]
    assert got[1] == {"RegistrationId": f"AC-{gone}", "_memberflow_deleted": True}
    meta = client.tombstone_meta("registrations", got[1], datetime.now(UTC))
    assert meta.business_date is None  # lands on the day it was seen


# -- persons by id (AM-A6, AC3, AC4) ---------------------------------------------------------------
def test_persons_by_id_skip_children_and_tombstone_the_deleted(make, amilia):
    client = make()
    adults = [p for p in amilia.persons.values() if not p["IsChild"] and not p["IsArchived"]]
    child = next(p for p in amilia.persons.values() if p["IsChild"])
    keep, removed = adults[0], adults[-1]
    amilia.delete_person(removed["Id"])
    before = dict(amilia.request_counts)
    got = records(client.fetch_records("persons", [keep["Id"], removed["Id"], child["Id"]]))
    assert delta(amilia, before) == {"authenticate GET": 1, "GET persons/{}": 3}
    assert got[0]["Id"] == keep["Id"] and "SkillNames" in got[0]
    assert is_tombstone(got[1]) and got[1]["Id"] == str(removed["Id"])
    assert len(got) == 2


def test_an_archived_account_brings_back_its_persons_archived(make, amilia):
    client = make()
    account = next(
        a
        for a in amilia.accounts.values()
        if not a["IsArchived"] and any(amilia.persons[p]["IsChild"] for p in a["MemberIds"])
    )
    amilia.archive_account(account["Id"])
    got = records(client.fetch_records("persons", [f"account:{account['Id']}"]))
    adults = {p for p in account["MemberIds"] if not amilia.persons[p]["IsChild"]}
    assert {p["Id"] for p in got} == adults
    assert all(p["IsArchived"] is True for p in got)
    assert records(client.fetch_records("persons", ["account:1"])) == []  # no such account


# -- memberships (AM-A8) ---------------------------------------------------------------------------
def test_memberships_are_read_whole_one_record_per_purchase_with_ended(make, amilia):
    client = make(today=lambda: amilia.today)
    got = records(client.iter_changed("memberships", None))
    assert client.scan_complete("memberships")
    active = {
        (m["AccountId"], m["MembershipId"])
        for m in amilia.account_memberships
        if m["Status"] == "Active"
    }
    expected = {
        f"{m['AccountId']}-{m['MembershipId']}-{m['PersonId']}"
        for m in amilia.account_memberships
        if (m["AccountId"], m["MembershipId"]) in active
    }
    assert {r["Key"] for r in got} == expected and len(got) == len(expected)
    for record in got:
        assert record["Ended"] == (
            record["Status"] != "Active" or record["ExpirationDate"] < amilia.today.isoformat()
        )
        owner = amilia.accounts[record["AccountId"]]["OwnerId"]
        assert record["AccountOwnerId"] == owner
        meta = client.record_meta("memberships", record)
        assert meta.record_id == record["Key"]
        assert meta.business_date == date.fromisoformat(record["PurchasedDate"][:10])
    assert any(not r["Ended"] for r in got)

    account = next(a for a in amilia.accounts.values() if not a["IsArchived"])
    bought = amilia.buy_membership(account["Id"], 60)
    key = f"{account['Id']}-60-{account['OwnerId']}"
    (new,) = [r for r in records(client.iter_changed("memberships", None)) if r["Key"] == key]
    assert new["Ended"] is False and new["PurchasedDate"] == bought["PurchasedDate"]
    day = date.fromisoformat(bought["PurchasedDate"][:10])
    in_range = records(client.iter_range("memberships", day, day))
    assert key in {r["Key"] for r in in_range}
    assert all(r["PurchasedDateLocal"] == day.isoformat() for r in in_range)


# -- webhook subscriptions (AM-A9, A12, A13) -------------------------------------------------------
def test_ensure_webhooks_subscribes_every_pair_once(make, amilia):
    client = make()
    url = closed_port_url(f"/webhooks/{client.integration}")
    added = client.ensure_webhooks(url)
    assert added == [
        "Person/Create",
        "Person/Delete",
        "Account/Delete",
        "Registration/Create",
        "Registration/Update",
        "Registration/Delete",
        "Membership/Create",
        "Membership/Update",
        "Membership/Delete",
    ]
    assert client.ensure_webhooks(url) == []
    ours = [s for s in amilia.subscriptions.values() if s["Url"] == url]
    assert len(ours) == 9
    assert {s["Name"] for s in ours} >= {f"memberflow-{client.integration}-Person-Create"}
    for sub in ours:  # tidy: no later change is pushed to this url
        del amilia.subscriptions[sub["Id"]]


def test_token_mode_registers_the_url_with_its_token(make, amilia):
    client = make(webhook_token="shared-s3cret")
    url = closed_port_url(f"/webhooks/{client.integration}")
    assert len(client.ensure_webhooks(url)) == 9
    urls = {
        s["Url"]
        for s in amilia.subscriptions.values()
        if s["Name"].startswith(f"memberflow-{client.integration}-")
    }
    assert urls == {f"{url}?token=shared-s3cret"}
    assert client.ensure_webhooks(url) == []
    for sid in [s["Id"] for s in amilia.subscriptions.values() if s["Url"] in urls]:
        del amilia.subscriptions[sid]


def test_a_disabled_subscription_is_reported_then_registered_again(make, amilia):
    client = make(webhook_token="tok-123")
    url = closed_port_url(f"/webhooks/{client.integration}")
    client.ensure_webhooks(url)
    assert client.webhook_problems() == []
    account = next(a for a in amilia.accounts.values() if not a["IsArchived"])
    amilia.create_person(account["Id"], "Léa", "Tremblay")  # delivered to nobody: retried, given up
    amilia.wait_for_deliveries()
    (problem,) = client.webhook_problems()
    assert "Person/Create" in problem and "Disabled" in problem and "dropped" in problem
    assert "memberflow receiver --register-url http://127.0.0.1:" in problem
    assert "tok-123" not in problem
    before = {s["Id"] for s in amilia.subscriptions.values()}
    assert client.ensure_webhooks(url) == ["Person/Create"]
    assert client.webhook_problems() == []
    assert len({s["Id"] for s in amilia.subscriptions.values()} - before) == 1
    for sid in [s["Id"] for s in amilia.subscriptions.values() if "tok-123" in s["Url"]]:
        del amilia.subscriptions[sid]


# -- the `source:` section -------------------------------------------------------------------------
def section(**fields) -> AmiliaSource:
    return AmiliaSource.model_validate({"kind": "amilia", "org": 8008, **fields})


def test_section_takes_exactly_one_credential_pair():
    user = section(username_env="AM_USER", password_env="AM_PASS")
    assert user.org == "8008" and user.env_vars() == ["AM_USER", "AM_PASS"]
    key = section(api_key_env="AM_KEY", api_secret_env="AM_SECRET", language="fr")
    assert key.env_vars() == ["AM_KEY", "AM_SECRET"]
    for bad in (
        {},
        {"username_env": "AM_USER"},
        {
            "username_env": "AM_USER",
            "password_env": "AM_PASS",
            "api_key_env": "AM_KEY",
            "api_secret_env": "AM_SECRET",
        },
    ):
        with pytest.raises(ValidationError, match="credential pair|together"):
            section(**bad)
    with pytest.raises(ValidationError):
        section(username_env="AM_USER", password_env="AM_PASS", language="de")


def test_section_webhooks_take_a_signing_secret_or_a_token(monkeypatch):
    base = {"username_env": "AM_USER", "password_env": "AM_PASS"}
    assert section(**base).webhook() is None
    with pytest.raises(ValidationError, match="exactly one"):
        section(**base, webhooks={"enabled": True})
    with pytest.raises(ValidationError, match="exactly one"):
        section(**base, webhooks={"enabled": True, "secret_env": "A", "token_env": "B"})
    signed = section(**base, webhooks={"enabled": True, "secret_env": "AM_HOOK"})
    assert signed.env_vars() == ["AM_USER", "AM_PASS", "AM_HOOK"]
    monkeypatch.setenv("AM_HOOK", "s")
    assert isinstance(signed.webhook(), AmiliaWebhook)


def test_section_resource_builds_a_working_client(monkeypatch, sandbox):
    monkeypatch.setenv("AM_KEY", KEY)
    monkeypatch.setenv("AM_SECRET", KEY_SECRET)
    monkeypatch.setenv("AM_TOKEN", "t0k")
    source = section(
        base_url=f"{sandbox.url}/amilia",
        org=ORG,
        api_key_env="AM_KEY",
        api_secret_env="AM_SECRET",
        webhooks={"enabled": True, "token_env": "AM_TOKEN"},
        page_size=500,
    )
    source.bind("club", 5)
    client = source.resource().client()
    try:
        client.check_connection()
        assert client.integration == "club"
    finally:
        client.close()
    assert source.resource().username.env_var_name == "AM_KEY"  # a name, never the value


# -- default mappings ------------------------------------------------------------------------------
def test_the_default_mappings_load_with_their_customers_and_cancelled_flags():
    persons = load_mapping("amilia", "persons")
    assert (persons.role, persons.record_id) == ("members", "Id")
    assert persons.field("telephone_mobile").type == "text"  # the target has no phone field
    registrations = load_mapping("amilia", "registrations")
    assert registrations.customer_ids == ("Person.Id", "AccountOwnerId")
    assert registrations.cancelled == "IsCancelled"
    memberships = load_mapping("amilia", "memberships")
    assert (memberships.record_id, memberships.cancelled) == ("Key", "Ended")
    assert memberships.customer_ids == ("PersonId", "AccountOwnerId")


def test_dates_normalise_to_the_orgs_calendar_day():
    """An ISO datetime with an offset read as a date becomes its UTC date (the next day for an
    evening registration), so event dates are read from the client's `...Local` date keys."""
    rule = load_mapping("amilia", "registrations").field("date")
    parse = date_parser(rule.format, False)
    assert parse("2026-09-25T12:46:00-04:00") == ("2026-09-25", None)
    assert parse("2026-09-25T22:46:00-04:00") == ("2026-09-26", None)  # why DateCreatedLocal
    assert rule.path == "DateCreatedLocal"
    persons = load_mapping("amilia", "persons")
    assert persons.field("birthday").path == "DateOfBirthLocal"
    assert persons.field("join_date").path == "JoinDateLocal"
    memberships = load_mapping("amilia", "memberships")
    assert memberships.field("membership_start").path == "EffectiveDateLocal"
    assert memberships.field("membership_end").path == "ExpirationDateLocal"
    local = date.fromisoformat("2026-09-25")
    record = {"RegistrationId": "AC-1", "DateCreated": "2026-09-25T22:46:00-04:00"}
    assert parse(with_owner_id(record)["DateCreatedLocal"]) == (local.isoformat(), None)
    birthday = load_mapping("amilia", "persons").field("birthday")
    parse_birthday = date_parser(birthday.format, False)
    assert parse_birthday("2001-04-09") == ("2001-04-09", None)
    assert parse_birthday("2001-04-09T00:00:00-04:00") == ("2001-04-09", None)
    assert load_mapping("amilia", "memberships").field("date").path == "PurchasedDateLocal"


# -- review fixes against the emulator -------------------------------------------------------------
def test_a_no_route_404_is_an_error_not_a_tombstone(make):
    """AM-A14: ASP.NET's routing 404 means a wrong URL (here an unknown language), never that the
    person or registration is gone: a tombstone would delete a live record."""
    client = make(language="xx")
    for entity, rid in (("persons", "300001"), ("registrations", "AC-10001")):
        with pytest.raises(VendorError) as wrong:
            records(client.fetch_records(entity, [rid]))
        assert wrong.value.status == 404 and "No HTTP resource" in wrong.value.message


def test_an_archived_account_is_asked_for_with_show_archived(make, amilia):
    account = next(
        a for a in amilia.accounts.values() if a["IsArchived"] and len(a["MemberIds"]) > 0
    )
    adults = {p for p in account["MemberIds"] if not amilia.persons[p]["IsChild"]}
    amilia.archived_accounts_hidden = True
    try:
        got = records(make().fetch_records("persons", [f"account:{account['Id']}"]))
    finally:
        amilia.archived_accounts_hidden = False
    assert {p["Id"] for p in got} == adults and adults


def test_persons_and_purchases_carry_their_dates_as_written(make, amilia):
    client = make(page_size=2000, today=lambda: amilia.today)
    persons = records(client.iter_changed("persons", None))
    for person in persons:
        assert person["DateOfBirthLocal"] == ((person.get("DateOfBirth") or "")[:10] or None)
        assert person["JoinDateLocal"] == ((person.get("JoinDate") or "")[:10] or None)
    assert any(p["DateOfBirthLocal"] for p in persons)
    for row in records(client.iter_changed("memberships", None)):
        assert row["EffectiveDateLocal"] == row["EffectiveDate"][:10]
        assert row["ExpirationDateLocal"] == row["ExpirationDate"][:10]


def test_only_exactly_our_subscription_names_are_ours(make, amilia):
    """Integration `x` must not take `x-2`'s subscriptions (same prefix) for its own and delete
    them as moved."""
    client = make()
    other = make(integration=f"{client.integration}-2")
    other_url = closed_port_url(f"/webhooks/{other.integration}")
    assert len(other.ensure_webhooks(other_url)) == 9
    url = closed_port_url(f"/webhooks/{client.integration}")
    assert len(client.ensure_webhooks(url)) == 9
    assert len([s for s in amilia.subscriptions.values() if s["Url"] == other_url]) == 9
    for sid in [s["Id"] for s in amilia.subscriptions.values() if s["Url"] in (url, other_url)]:
        del amilia.subscriptions[sid]


def test_subscriptions_match_whatever_the_case_of_their_fields(make, amilia):
    client = make()
    url = closed_port_url(f"/webhooks/{client.integration}")
    shouted = url.replace("http://", "HTTP://")
    for context, action in HOOKS:
        sid = 900_000 + len(amilia.subscriptions)
        amilia.subscriptions[sid] = {
            "Id": sid,
            "Context": context.lower(),
            "Action": action.upper(),
            "Name": f"memberflow-{client.integration}-{context}-{action}",
            "Url": shouted,
            "Status": "active",
        }
    assert client.ensure_webhooks(url) == []
    amilia.subscriptions[sid]["Status"] = "DISABLED"
    assert len(client.webhook_problems()) == 1
    assert client.ensure_webhooks(url) == ["Membership/Delete"]
    for sid in [s["Id"] for s in amilia.subscriptions.values() if s["Url"] in (url, shouted)]:
        del amilia.subscriptions[sid]


def test_a_context_the_server_refuses_is_reported_and_the_others_added(make, amilia):
    client = make()
    url = closed_port_url(f"/webhooks/{client.integration}")
    every = amilia.webhook_contexts
    amilia.webhook_contexts = tuple(c for c in every if c != "Membership")
    try:
        added = client.ensure_webhooks(url)
    finally:
        amilia.webhook_contexts = every
    assert added[:6] == [
        "Person/Create",
        "Person/Delete",
        "Account/Delete",
        "Registration/Create",
        "Registration/Update",
        "Registration/Delete",
    ]
    assert added[6] == (
        "Membership/Create: not supported (The value 'Membership' is not valid for Context.)"
    )
    assert len(added) == 9 and all("not supported" in line for line in added[6:])
    assert len([s for s in amilia.subscriptions.values() if s["Url"] == url]) == 6
    for sid in [s["Id"] for s in amilia.subscriptions.values() if s["Url"] == url]:
        del amilia.subscriptions[sid]


# -- membership rows -------------------------------------------------------------------------------
def test_a_purchase_ends_only_on_a_status_other_than_active_or_expiry():
    today = date(2026, 6, 1)
    entries = [
        {"MembershipId": "60", "PersonId": 1, "ExpirationDate": "2026-12-31"},  # no Status
        {"MembershipId": 60, "PersonId": 2, "Status": "ACTIVE", "ExpirationDate": "2026-12-31"},
        {"MembershipId": 60, "PersonId": 3, "Status": "Inactive", "ExpirationDate": "2026-12-31"},
        {"MembershipId": 60, "PersonId": 4, "Status": "Active", "ExpirationDate": "2026-01-31"},
        {"MembershipId": 61, "PersonId": 5, "Status": "Active"},
    ]
    account = {"Id": 7, "Owners": [{"Id": 1}], "AccountMemberships": entries}
    rows = account_purchases(account, 60, today)
    assert [(r["PersonId"], r["Ended"]) for r in rows] == [
        (1, False),
        (2, False),
        (3, True),
        (4, True),
    ]


# -- a scripted Amilia for paging and link edge cases (httpx.MockTransport) ------------------------
BASE = "https://amilia.test"
ORG_PATH = "/api/v3/en/org/8008"


class Scripted:
    """An Amilia whose list answers a test writes: `lists[path]` maps the request to a body."""

    def __init__(self) -> None:
        self.lists: dict[str, Callable[[httpx.Request], dict]] = {}
        self.sent: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.sent.append(request)
        if request.url.path == "/api/V3/authenticate":
            return httpx.Response(200, json={"Token": "jwt"})
        path = request.url.path.removeprefix(ORG_PATH + "/")
        answer = self.lists.get(path)
        if answer is None:
            return httpx.Response(404, json={"Message": "Not found"})
        return httpx.Response(200, json=answer(request))

    def client(self, **kwargs) -> AmiliaClient:
        options = {"base_url": BASE, "org": "8008", "username": "key-123", "password": "s"}
        return AmiliaClient(
            **options | kwargs, transport=httpx.MockTransport(self), sleep=lambda _: None
        )


def person(pid: int) -> dict:
    return {"Id": pid, "IsChild": False, "DateOfBirth": "2001-04-09T00:00:00-04:00"}


def paged(pages: list[list[dict]], total, next_of: Callable[[int], str] | None = None):
    """Pages of persons; `total` as TotalCount (None -> null, ... -> absent); `Next` by default
    the absolute url of the next page."""

    def answer(request: httpx.Request) -> dict:
        page = int(request.url.params.get("page", "1"))
        more = page < len(pages)
        following = ""
        if more:
            following = next_of(page) if next_of else f"{BASE}{ORG_PATH}/persons?page={page + 1}"
        paging = {"Next": following}
        if total is not ...:
            paging["TotalCount"] = total
        return {"Items": pages[page - 1] if page <= len(pages) else [], "Paging": paging}

    return answer


@pytest.mark.parametrize("total", [..., None, "n/a", 6])
def test_paging_follows_next_whatever_total_count_says(total):
    """A missing, null or unreadable TotalCount neither ends the read after page 1 nor makes
    it complete by itself: the empty Next does."""
    amilia = Scripted()
    amilia.lists["persons"] = paged([[person(1), person(2)], [person(3), person(4)]], total)
    client = amilia.client()
    got = records(client.iter_changed("persons", None))
    assert [p["Id"] for p in got] == [1, 2, 3, 4]
    assert client.scan_complete("persons") is (total != 6)
    assert got[0]["DateOfBirthLocal"] == "2001-04-09"


def test_a_server_that_links_on_forever_is_stopped_and_the_scan_not_complete():
    amilia = Scripted()
    endless = paged([[person(n)] for n in range(1, 50)], 2)
    amilia.lists["persons"] = endless
    client = amilia.client()
    got = records(client.iter_changed("persons", None))
    assert len(got) == 3 and not client.scan_complete("persons")  # ceil(2/1) + 1 pages
    again = Scripted()
    again.lists["persons"] = paged(
        [[person(1)], [person(2)], [person(3)]], None, lambda p: "?page=2"
    )
    client = again.client()
    assert [p["Id"] for p in records(client.iter_changed("persons", None))] == [1, 2]
    assert not client.scan_complete("persons")  # page 2 links to itself


def test_relative_and_http_next_links_stay_on_our_https_host():
    amilia = Scripted()
    links = {1: "?page=2", 2: f"http://amilia.test{ORG_PATH}/persons?page=3", 3: "persons?page=4"}
    pages = [[person(n)] for n in range(1, 5)]
    amilia.lists["persons"] = paged(pages, 4, links.get)
    client = amilia.client()
    assert [p["Id"] for p in records(client.iter_changed("persons", None))] == [1, 2, 3, 4]
    assert client.scan_complete("persons")
    with_token = [r for r in amilia.sent if "authorization" in r.headers]
    assert {(r.url.scheme, r.url.host) for r in with_token} == {("https", "amilia.test")}


def test_a_next_link_to_another_host_is_an_error_and_never_followed():
    amilia = Scripted()
    amilia.lists["persons"] = paged([[person(1)], [person(2)]], 2, lambda p: "https://evil.test/x")
    with pytest.raises(VendorError) as refused:
        records(amilia.client().iter_changed("persons", None))
    assert refused.value.status == 0 and "amilia.test" in refused.value.message
    assert "answered 200" not in str(refused.value)
    assert all(r.url.host == "amilia.test" for r in amilia.sent)


def registration(number: int, created: str) -> dict:
    return {"RegistrationId": f"AC-{number}", "DateCreated": created, "AccountOwner": {"Id": 1}}


def utc_filtered(rows: list[dict]) -> Callable[[httpx.Request], dict]:
    """A server that filters from/to on the UTC date of DateCreated (one possible basis)."""

    def answer(request: httpx.Request) -> dict:
        params = request.url.params
        kept = []
        for row in rows:
            try:
                day = parse_moment(row["DateCreated"]).date().isoformat()
            except ValueError:
                day = None
            low, high = params.get("from"), params.get("to")
            if day is None or ((not low or day >= low) and (not high or day <= high)):
                kept.append(row)
        return {"Items": kept, "Paging": {"TotalCount": len(kept), "Next": ""}}

    return answer


def test_month_windows_are_asked_a_day_wider_and_cut_back_to_the_orgs_days():
    evening = registration(1, "2026-01-31T22:00:00-05:00")  # 03:00 UTC on February 1
    morning = registration(2, "2026-02-01T08:00:00-05:00")
    unreadable = registration(3, "yesterday")
    amilia = Scripted()
    amilia.lists["registrations"] = utc_filtered([evening, morning, unreadable])
    client = amilia.client()
    got = records(client.iter_range("registrations", date(2026, 1, 1), date(2026, 2, 28)))
    assert sorted(r["RegistrationId"] for r in got) == ["AC-1", "AC-2", "AC-3"]
    asked = [
        (r.url.params["from"], r.url.params["to"])
        for r in amilia.sent
        if r.url.path.endswith("/registrations")
    ]
    assert asked == [("2025-12-31", "2026-02-01"), ("2026-01-31", "2026-03-01")]
    with pytest.raises(ValueError):  # kept, and quarantined by landing
        client.record_meta("registrations", next(r for r in got if r["RegistrationId"] == "AC-3"))


def test_an_incremental_read_looks_an_hour_back_and_hands_each_registration_out_once():
    since = datetime.now(UTC) - timedelta(days=40)
    late = registration(1, (since - timedelta(minutes=30)).isoformat())
    older = registration(2, (since - timedelta(hours=2)).isoformat())
    amilia = Scripted()
    amilia.lists["registrations"] = lambda request: {  # ignores from/to: every window has both
        "Items": [late, older],
        "Paging": {"TotalCount": 2, "Next": ""},
    }
    client = amilia.client(recheck_days=0)
    got = records(client.iter_changed("registrations", since.isoformat()))
    assert [r["RegistrationId"] for r in got] == ["AC-1"]
    windows = [r for r in amilia.sent if r.url.path.endswith("/registrations")]
    assert len(windows) >= 2 and "to" not in windows[-1].url.params
    first_to = date.fromisoformat(windows[0].url.params["to"])
    assert first_to.day == 1  # the month's last day + 1


def test_memberships_without_an_id_are_skipped_and_ids_compare_as_text():
    amilia = Scripted()
    purchase = {
        "MembershipId": "60",
        "PersonId": 5,
        "Status": "Active",
        "PurchasedDate": "2026-03-01T10:00:00-05:00",
        "EffectiveDate": "2026-03-01",
        "ExpirationDate": "2099-03-01T00:00:00-05:00",
    }
    account = {"Id": 7, "Owners": [{"Id": 5}], "AccountMemberships": [purchase]}
    amilia.lists["memberships"] = lambda r: {
        "Items": [{"Name": "no id"}, {"Id": 60, "Name": "Adult"}],
        "Paging": {"TotalCount": 2, "Next": ""},
    }
    amilia.lists["memberships/60/accounts"] = lambda r: {
        "Items": [account],
        "Paging": {"TotalCount": 1, "Next": ""},
    }
    client = amilia.client(today=lambda: date(2026, 6, 1))
    (row,) = records(client.iter_changed("memberships", None))
    assert row["Key"] == "7-60-5" and row["Ended"] is False
    assert row["ExpirationDateLocal"] == "2099-03-01"
    assert client.scan_complete("memberships")
    assert not [r for r in amilia.sent if "None" in r.url.path]


def test_the_username_is_masked_too_as_an_api_key_is_one():
    """AM-A2: in API-key mode the username is the key, a secret like the password."""

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(400, json={"Message": "Key key-123 has no Api Token module"})

    client = AmiliaClient(
        base_url=BASE,
        org="8008",
        username="key-123",
        password="s3cret",
        transport=httpx.MockTransport(echo),
        sleep=lambda _: None,
    )
    with pytest.raises(VendorError) as refused:
        client.check_connection()
    assert "key-123" not in str(refused.value) and "key-123" not in json.dumps(refused.value.body)
