"""Amilia -> Cyberimpact end to end over real sockets (AC1-AC10): the first sync of 24 months,
contacts per AC2, the 14 custom fields created and typed, AC7 groups, consent, webhooks of every
context through the receiver and the webhook sensor, archival, unregistration, a cancelled
activity, a subscription disabled after retries, unsubscribes and bounces read back."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from typing import Any

import httpx
import pytest

from tests.asgi import served
from tests.harness import Harness

pytestmark = pytest.mark.e2e
NAME = "demo_amilia_cyberimpact"
START = date(2024, 11, 2)  # history_start is 1 November 2024; a day's margin for time zones
FAST = {"target.poll_seconds": 0.05}
ALL = "Clients Amilia"
ARCHIVED = "Clients Amilia archivés"
TYPES = {
    "Amilia.AccountId": "integer",
    "Amilia.PersonId": "integer",
    "Amilia.IsArchived": "text",
    "Amilia.Skills": "text",
    "Amilia.JoinDate": "date",
    "Amilia.Membership.Name": "text",
    "Amilia.Membership.StartDate": "date",
    "Amilia.Membership.EndDate": "date",
    "Amilia.Address.Street": "text",
    "Amilia.Address.City": "text",
    "Amilia.Address.StateProvince": "text",
    "Amilia.ExternalId": "text",
    "Amilia.Telephone": "text",
    "Amilia.TelephoneMobile": "text",
}


# --- what the Amilia emulator holds, and what Cyberimpact should hold ---------------------------


def _amilia(harness: Harness) -> Any:
    return harness.sandbox.state.emulator("amilia")


def _cyber(harness: Harness) -> Any:
    return harness.sandbox.state.emulator("cyberimpact")


def _email(person: dict[str, Any] | None) -> str:
    return ((person or {}).get("Email") or "").strip().lower()


def _people(amilia: Any, person_id: int) -> list[dict[str, Any]]:
    """AC2: who a registration or membership of `person_id` brings: the account owner, and the
    person too when an adult with an email of their own."""
    person = amilia.persons.get(person_id)
    if person is None:
        return []
    owner = amilia.persons.get(person.get("AccountOwnerId"))
    out = [owner] if _email(owner) else []
    if not person["IsChild"] and _email(person) and _email(person) != _email(owner):
        out.append(person)
    return out


def _activity_titles(activity: dict[str, Any]) -> list[str]:
    parts = [
        activity["ProgramName"],
        activity["CategoryName"],
        activity["SubCategoryName"],
        activity["Name"],
    ]
    return [" \\ ".join(parts[:n]) for n in range(1, 5)]


def _live_registrations(amilia: Any) -> list[dict[str, Any]]:
    return [
        r
        for r in amilia.registrations.values()
        if not r["IsCancelled"] and r["Created"].date() >= START
    ]


def _expected(amilia: Any) -> dict[str, dict[str, Any]]:
    """email -> {groups, dates (consent date candidates by proof)} from live registrations and
    active memberships, for members who are not archived."""
    out: dict[str, dict[str, Any]] = {}
    for reg in _live_registrations(amilia):
        activity = amilia.activities[reg["ActivityId"]]
        for person in _people(amilia, reg["PersonId"]):
            entry = out.setdefault(_email(person), {"groups": set(), "dates": {}})
            entry["groups"].update(_activity_titles(activity))
            entry["dates"][f"AC-{reg['Number']}"] = reg["Created"].date().isoformat()
    today = date.today().isoformat()
    for held in amilia.account_memberships:
        if held["Status"] != "Active" or str(held["ExpirationDate"])[:10] < today:
            continue
        for person in _people(amilia, held["PersonId"]):
            entry = out.setdefault(_email(person), {"groups": set(), "dates": {}})
            entry["groups"].add(held["Name"])
            entry["dates"][held["Name"]] = str(held["PurchasedDate"])[:10]
    return out


def _consent(harness: Harness, email: str) -> dict[str, Any] | None:
    from sandbox.cyberimpact import CYBERIMPACT_API_TOKEN

    cyber = _cyber(harness)
    with cyber._lock:
        member = cyber.account(CYBERIMPACT_API_TOKEN).members.get(email.lower())
        return dict(member.consent) if member and member.consent else None


def _fields(harness: Harness) -> dict[str, dict[str, Any]]:
    return {f["name"]: f for f in _cyber(harness).custom_fields()}


def _custom(harness: Harness, email: str) -> dict[str, Any]:
    ids = {str(f["id"]): name for name, f in _fields(harness).items()}
    member = _cyber(harness).member(email) or {}
    return {ids[k]: v for k, v in member.get("customFields", {}).items()}


# --- AC1, AC2, AC7, AC8, AC9, AC10 -------------------------------------------------------------


def test_first_sync_brings_24_months_of_contacts_with_fields_groups_and_consent(harness):
    harness.load(NAME, edit={NAME: FAST})
    amilia, cyber = _amilia(harness), _cyber(harness)
    run = harness.tick(NAME)
    assert run.success, run.failures

    # AC1: 24 months read month by month (25 calendar months from 1 November 2024)
    months = (date.today().year - 2024) * 12 + date.today().month - 11 + 1
    # (reads start a day before the cursor's date, so any time zone's first day is covered)
    assert amilia.request_counts["GET registrations"] in (months, months + 1)
    expected = _expected(amilia)
    on_list = {m["email"].lower(): m for m in cyber.members()}
    missing = sorted(set(expected) - set(on_list))
    assert not missing, missing  # AC2: owners, and adults with an email of their own
    children = {_email(p) for p in amilia.persons.values() if p["IsChild"] and _email(p)}
    owners_or_adults = {
        _email(p)
        for p in amilia.persons.values()
        if not p["IsChild"] or _email(p) == _email(amilia.persons.get(p.get("AccountOwnerId")))
    }
    assert not (children - owners_or_adults) & set(on_list)  # a child brings only the owner

    # AC9/AC10: the 14 custom fields were created with their types, values typed (CI-A9)
    fields = _fields(harness)
    assert {name: fields[name]["type"] for name in TYPES} == TYPES
    delivered = run.assets[f"{_list(harness)}/members_delivered"]
    assert sorted(delivered["fields_created"]) == sorted(TYPES)
    person = next(
        p
        for p in amilia.persons.values()
        if _email(p) in expected and not p["IsArchived"] and p["Skills"] and p["JoinDate"]
    )
    custom = _custom(harness, _email(person))
    assert custom["Amilia.PersonId"] == person["Id"] and isinstance(custom["Amilia.PersonId"], int)
    assert custom["Amilia.AccountId"] == person["AccountId"]
    assert custom["Amilia.IsArchived"] == "False"
    assert custom["Amilia.JoinDate"] == str(person["JoinDate"])[:10]
    assert custom["Amilia.Skills"] == ", ".join(s["Name"] for s in person["Skills"])

    # AC7: the general group, activity, subcategory, category, program and membership groups
    checked = 0
    for email, want in expected.items():
        person = next(p for p in amilia.persons.values() if _email(p) == email)
        if person["IsArchived"]:
            assert ARCHIVED in cyber.member_groups(email)
            continue
        groups = cyber.member_groups(email)
        assert ALL in groups and ARCHIVED not in groups
        assert want["groups"] <= groups, (email, want["groups"] - groups)
        checked += 1
        # AC8: implied consent dated by the newest registration or membership, with its proof
        consent = _consent(harness, email)
        assert consent is not None and consent["relationType"] == "active-clients"
        newest = max(want["dates"].values())
        assert consent["consentDate"] == newest
        assert consent["consentProof"] in {k for k, v in want["dates"].items() if v == newest}
        assert consent["consentExpiration"] is not None  # 24 months, computed by Cyberimpact
    assert checked > 20
    static = [g for g in cyber.groups() if g["isDynamic"]]
    assert not static  # every group memberflow made is static (CI-A7)
    drop_ins = [r for r in _live_registrations(amilia) if r["DropIn"]]
    assert drop_ins, "the sandbox must hold drop-ins"
    for reg in drop_ins[:5]:  # a drop-in joins its activity's group
        title = _activity_titles(amilia.activities[reg["ActivityId"]])[-1]
        for person in _people(amilia, reg["PersonId"]):
            if not person["IsArchived"]:
                assert title in cyber.member_groups(_email(person))

    # a second run with nothing new sends nothing (only what changed goes out)
    posts = cyber.request_count("POST") + cyber.request_count("PATCH")
    again = harness.tick(NAME)
    assert again.success, again.failures
    assert again.assets[f"{_list(harness)}/members_delivered"]["sent_this_run"] == 0
    assert cyber.request_count("POST") + cyber.request_count("PATCH") == posts

    # any range can be backfilled later, month by month
    before = amilia.request_counts["GET registrations"]
    backfill = harness.backfill(NAME, days=40)
    assert backfill.success, backfill.failures
    assert amilia.request_counts["GET registrations"] - before in (2, 3)


def _list(harness: Harness) -> str:
    return harness.integrations[0].list_key


# --- webhooks: AC3, AC4, AC5, AC6, AC8 renewal --------------------------------------------------


@contextmanager
def _receiver(harness: Harness) -> Iterator[str]:
    from app.receiver import build_app, capabilities_of

    with served(build_app(capabilities_of(harness.integrations))) as url:
        yield url


def _webhook_tick(harness: Harness) -> Any:
    """One evaluation of the integration's webhook sensor, as the daemon would make it."""
    import dagster as dg

    sensor = harness.defs.get_sensor_def(f"{NAME}_webhook_sensor")
    with dg.build_sensor_context(
        instance=harness.instance,
        resources=harness.defs.resources,
        repository_def=harness.defs.get_repository_def(),
    ) as context:
        return sensor.evaluate_tick(context)


def _webhook_run(harness: Harness, amilia: Any) -> dict[str, Any]:
    """Wait for Amilia's deliveries, let the webhook sensor ask for its run, run it."""

    amilia.wait_for_deliveries()
    result = _webhook_tick(harness)
    assert result.run_requests, result.skip_message
    run = harness.tick(NAME, run_config=result.run_requests[0].run_config)
    assert run.success, run.failures
    return run.assets


def test_webhooks_of_every_context_reach_cyberimpact_in_one_run_each(harness, capsys):
    from app.receiver import register
    from memberflow.webhook_store import WebhookStore

    harness.load(NAME, edit={NAME: {**FAST, "source.webhooks.enabled": True}})
    amilia, cyber = _amilia(harness), _cyber(harness)
    assert harness.tick(NAME).success
    store = WebhookStore.for_integration(NAME)
    figures: list[float] = []
    with _receiver(harness) as url:
        lines = register(harness.integrations, url)
        assert "Registration/Create" in lines[0], lines
        subscribed = {(s["Context"], s["Action"]) for s in amilia.subscriptions.values()}
        assert ("Membership", "Delete") in subscribed and ("Account", "Delete") in subscribed

        # Person/Create + Registration/Create: a new adult in an existing account registers
        account = next(
            a
            for a in amilia.accounts.values()
            if not a["IsArchived"] and _email(amilia.persons.get(a["OwnerId"]))
        )
        activity = next(a for a in amilia.activities.values() if a["Status"] == "Normal")
        started = time.monotonic()
        newcomer = amilia.create_person(
            account["Id"], "Élodie", "Bélanger", Email="elodie.belanger@example.ca"
        )
        registration = amilia.register(newcomer["Id"], activity["Id"])
        assets = _webhook_run(harness, amilia)
        figures.append(time.monotonic() - started)
        email = "elodie.belanger@example.ca"
        groups = cyber.member_groups(email)
        assert {ALL, *_activity_titles(activity)} <= groups
        consent = _consent(harness, email)
        assert consent is not None and consent["consentProof"] == registration["RegistrationId"]
        assert consent["consentDate"] == registration["DateCreated"][:10]  # AC8 renewed
        assert assets[f"{NAME}/registrations_raw"]["webhook_events"] == 1

        # One run per batch of changes, as the sensor would make them:
        # AC5 Registration/Update (unregistered): out of that activity's groups only;
        # AC6 an activity cancelled for everyone keeps its group and contacts;
        # Membership/Create: the owner joins the membership's group
        owner = _email(amilia.persons[account["OwnerId"]])
        membership = next(
            m
            for m in amilia.memberships.values()
            if not any(
                held["AccountId"] == account["Id"] and held["Name"] == m["Name"]
                for held in amilia.account_memberships
            )
        )
        reg = next(
            r
            for r in _live_registrations(amilia)
            if r["ActivityId"] != activity["Id"] and _people(amilia, r["PersonId"])
        )
        kept = _activity_titles(amilia.activities[reg["ActivityId"]])[-1]
        holders = {_email(p) for p in _people(amilia, reg["PersonId"]) if not p["IsArchived"]}
        amilia.cancel_registration(registration["RegistrationId"])
        amilia.cancel_activity(reg["ActivityId"])
        bought = amilia.buy_membership(account["Id"], membership["Id"])
        _webhook_run(harness, amilia)
        groups = cyber.member_groups(email)
        assert _activity_titles(activity)[-1] not in groups and ALL in groups
        assert all(kept in cyber.member_groups(e) for e in holders)
        assert membership["Name"] in cyber.member_groups(owner)

        # Membership/Update (made Inactive): out of its group; Registration/Create: back in
        amilia.end_membership(bought["Id"])
        again = amilia.register(newcomer["Id"], activity["Id"])
        assets = _webhook_run(harness, amilia)
        assert membership["Name"] not in cyber.member_groups(owner)
        assert _activity_titles(activity)[-1] in cyber.member_groups(email)
        assert assets[f"{NAME}/memberships_raw"]["webhook_events"] == 1

        # Membership/Create again, Registration/Delete (only an Id): in; out of the activity
        bought = amilia.buy_membership(account["Id"], membership["Id"])
        amilia.delete_registration(again["RegistrationId"])
        _webhook_run(harness, amilia)
        assert membership["Name"] in cyber.member_groups(owner)
        assert _activity_titles(activity)[-1] not in cyber.member_groups(email)

        # Membership/Delete (only an Id): out of its group
        amilia.end_membership(bought["Id"], delete=True)
        _webhook_run(harness, amilia)
        assert membership["Name"] not in cyber.member_groups(owner)

        # AC4: Account/Delete (archived): IsArchived True, out of activity and membership
        # groups, kept in the general group, into the archived group
        amilia.buy_membership(account["Id"], membership["Id"])
        amilia.archive_account(account["Id"])
        _webhook_run(harness, amilia)
        groups = cyber.member_groups(owner)
        assert ALL in groups and ARCHIVED in groups
        assert not any(" \\ " in g for g in groups) and membership["Name"] not in groups
        assert _custom(harness, owner)["Amilia.IsArchived"] == "True"

        # Person/Delete (only an Id): the contact leaves Cyberimpact
        amilia.delete_person(newcomer["Id"])
        _webhook_run(harness, amilia)
        assert cyber.member(email) is None
    assert store.pending() == []
    with capsys.disabled():
        print(f"\nwebhook -> Cyberimpact (receiver, sensor evaluation, run): {figures[0]:.1f} s")


def _signed(body: bytes, secret: str) -> dict[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).digest()
    return {"X-Amilia-Signature": base64.b64encode(digest).decode()}


def test_forged_replayed_and_oversized_deliveries_are_refused_and_store_nothing(harness):
    from memberflow.webhook_store import WebhookStore

    harness.load(NAME, edit={NAME: {"source.webhooks.enabled": True}})
    store = WebhookStore.for_integration(NAME)
    secret = os.environ["AMILIA_WEBHOOK_SECRET"]
    body = json.dumps(
        {
            "Context": "Person",
            "Action": "Delete",
            "Name": "memberflow",
            "EventTime": "2026-09-25T12:46:00-04:00",
            "Payload": {"Id": 300001},
        }
    ).encode()
    with _receiver(harness) as url:
        hook = f"{url}/webhooks/{NAME}"
        assert httpx.post(hook, content=body, headers=_signed(body, "forged")).status_code == 401
        assert httpx.post(hook, content=body).status_code == 401  # no signature at all
        assert store.pending() == []
        assert httpx.post(hook, content=body, headers=_signed(body, secret)).status_code == 200
        replay = httpx.post(hook, content=body, headers=_signed(body, secret))
        assert replay.status_code == 200 and replay.json() == {
            "stored": 0
        }  # a 409 would be retried
        huge = body[:-1] + b', "x": "' + b"a" * 400_000 + b'"}'
        assert httpx.post(hook, content=huge, headers=_signed(huge, secret)).status_code == 413
    (event,) = store.pending()
    assert (event.kind, event.entity, event.record_id) == ("delete", "persons", "300001")

    # AM-A11's fallback: without a signing secret, the shared secret in ?token=
    harness.load(
        NAME,
        edit={
            NAME: {
                "source.webhooks.enabled": True,
                "source.webhooks.secret_env": None,
                "source.webhooks.token_env": "AMILIA_WEBHOOK_SECRET",
            }
        },
    )
    other = body.replace(b"300001", b"300002")
    with _receiver(harness) as url:
        hook = f"{url}/webhooks/{NAME}"
        assert httpx.post(f"{hook}?token=wrong", content=other).status_code == 401
        assert httpx.post(f"{hook}?token={secret}", content=other).status_code == 200
    assert [e.record_id for e in store.pending()] == ["300001", "300002"]


def test_a_subscription_disabled_after_retries_fails_the_webhook_sensor(harness):

    from app.receiver import register
    from pipelines.webhook_sensor import WebhookSubscriptionDisabled

    harness.load(NAME, edit={NAME: {"source.webhooks.enabled": True}})
    amilia = _amilia(harness)
    amilia.retry_delays = (0.01, 0.01, 0.01)  # AM-A13's 72 hours, compressed
    with socket.socket() as sock:  # a port nobody listens on: every delivery fails
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    register(harness.integrations, dead)
    account = next(iter(amilia.accounts))
    amilia.create_person(account, "Zoé", "Gagnon", Email="zoe.gagnon@example.ca")
    amilia.wait_for_deliveries()
    disabled = [s for s in amilia.subscriptions.values() if s["Status"] == "Disabled"]
    assert [(s["Context"], s["Action"]) for s in disabled] == [("Person", "Create")]

    with pytest.raises(WebhookSubscriptionDisabled) as failed:
        _webhook_tick(harness)
    assert "Person/Create" in str(failed.value) and "Disabled" in str(failed.value)

    with _receiver(harness) as url:  # registering again re-enables it
        register(harness.integrations, url)
    assert all(s["Status"] == "Active" for s in amilia.subscriptions.values())


def test_the_receiver_runs_as_its_own_process_and_keeps_what_it_stored_through_kill_9(
    harness, monkeypatch
):
    from memberflow.webhook_store import WebhookStore

    harness.load(NAME, edit={NAME: {"source.webhooks.enabled": True}})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "MEMBERFLOW_INTEGRATIONS": str(harness.tmp / "integrations")}
    receiver = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "receiver", "--port", str(port), "--integrations", NAME],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        hook = f"http://127.0.0.1:{port}/webhooks/{NAME}"
        body = json.dumps(
            {"Context": "Registration", "Action": "Delete", "Payload": {"Id": "AC-10001"}}
        ).encode()
        secret = os.environ["AMILIA_WEBHOOK_SECRET"]
        answer = _post_when_up(hook, body, _signed(body, secret))
        assert answer.status_code == 200, answer.text
    finally:
        receiver.send_signal(signal.SIGKILL)
        receiver.wait(10)
    (event,) = WebhookStore.for_integration(NAME).pending()
    assert (event.kind, event.entity, event.record_id) == ("delete", "registrations", "AC-10001")


def _post_when_up(url: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    """POST once the receiver process listens (it starts in a second or two)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return httpx.post(url, content=body, headers=headers, timeout=5)
        except httpx.ConnectError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


# --- AC10 up front, CI-A5 and CI-A11 ------------------------------------------------------------


def test_check_creates_the_custom_fields_or_fails_naming_those_without_room(harness, monkeypatch):
    from click.testing import CliRunner

    from app.cli import main

    monkeypatch.setenv("MEMBERFLOW_INTEGRATIONS", str(harness.tmp / "integrations"))
    harness.load(NAME)
    cyber = _cyber(harness)
    cyber.custom_field_limit = 5
    failed = CliRunner().invoke(main, ["check", NAME])
    assert failed.exit_code == 1, failed.output
    assert "Amilia.TelephoneMobile" in failed.output and "FAIL" in failed.output
    cyber.custom_field_limit = 25
    passed = CliRunner().invoke(main, ["check", NAME])
    assert passed.exit_code == 0, passed.output
    assert set(TYPES) <= set(_fields(harness))


def test_unsubscribes_and_bounces_are_read_back_and_an_unsubscribe_is_never_undone(harness):
    harness.load(NAME, edit={NAME: FAST})
    amilia, cyber = _amilia(harness), _cyber(harness)
    assert harness.tick(NAME).success
    emails = [m["email"] for m in cyber.members()]
    gone, bounced = emails[0], emails[1]
    cyber.unsubscribe(gone)
    cyber.bounce(bounced)
    person = next(p for p in amilia.persons.values() if _email(p) == gone.lower())
    activity = next(a for a in amilia.activities.values() if a["Status"] == "Normal")
    amilia.register(person["Id"], activity["Id"])  # new at Amilia: would update the contact
    run = harness.tick(NAME)
    assert run.success, run.failures
    delivered = run.assets[f"{_list(harness)}/members_delivered"]
    assert delivered["pulled_back"]["unsubscribed"] >= 1
    assert delivered["pulled_back"]["bounced"] >= 1
    assert delivered["skipped_unsubscribed"] >= 1
    from sandbox.cyberimpact import CYBERIMPACT_API_TOKEN

    assert gone.lower() in cyber.account(CYBERIMPACT_API_TOKEN).unsubscribed  # CI-A5


def _now() -> str:
    return datetime.now().isoformat()
