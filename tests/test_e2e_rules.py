"""End-to-end guards of the rules a user relies on: refunds reach the feed, create_only never
reactivates, and a manual full fetch never hides a consent withdrawal from the next tick."""

from __future__ import annotations

import copy
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tests.harness import lower

pytestmark = pytest.mark.e2e
LIST = 4711
TRACKING = 99


def test_a_ticket_refunded_after_it_was_sent_reaches_the_feed_as_a_refund(harness):
    harness.load("demo_flexpos")
    assert harness.backfill("demo_flexpos").success
    on_list = {lower(m["email"]) for m in harness.sandbox.heyloyalty.members(LIST)}
    customers = harness.sandbox.data.flexpos_customers
    by_id = {c["CustomerId"]: lower(c.get("Email")) for c in customers}
    ticket = next(
        t
        for t in harness.sandbox.data.tickets
        if t["Status"] == "Sold" and by_id.get(t["CustomerId"]) in on_list
    )
    refunded = copy.deepcopy(ticket)
    refunded["Status"] = "Refunded"
    now = datetime.now(ZoneInfo("Europe/Copenhagen")).replace(tzinfo=None, microsecond=0)
    refunded["Modified"] = now.isoformat()
    harness.sandbox.flexpos.add_ticket(refunded)

    run = harness.tick("demo_flexpos")
    assert run.success, run.failures
    assert run.get("events_delivered", "sent") == 1
    refunds = [
        e
        for e in harness.sandbox.heyloyalty.events(TRACKING)
        if e.get("event_type") == "refunded" and str(e.get("product_id")) == str(ticket["EventId"])
    ]
    assert refunds


def test_create_only_never_reactivates_an_unsubscribed_member(harness):
    edit = {"import.type": "create_only", "import.reimport_unsubscribed": True}
    harness.load("demo_flexpos", edit={"demo_flexpos": edit})
    assert harness.backfill("demo_flexpos").success
    member = harness.sandbox.heyloyalty.members(LIST)[0]
    harness.sandbox.heyloyalty.unsubscribe(LIST, email=member["email"])
    customer = next(
        c
        for c in harness.sandbox.data.flexpos_customers
        if lower(c.get("Email")) == member["email"]
    )
    changed = copy.deepcopy(harness.sandbox.flexpos.customer(customer["CustomerId"]))
    changed["City"] = "Odense"
    harness.sandbox.flexpos.upsert_customer(changed)

    assert harness.tick("demo_flexpos").success
    assert harness.sandbox.heyloyalty.member_by_email(LIST, member["email"])["status"] == (
        "unsubscribed"
    )


def test_a_manual_full_fetch_does_not_hide_a_withdrawal_from_the_next_tick(harness):
    harness.load("demo_ticketmaster")
    assert harness.backfill("demo_ticketmaster").success
    person = harness.listed_tm_customer(LIST)
    harness.sandbox.ticketmaster.withdraw_consent(person["customerId"])
    # a manual run: its customer fetch asks for consent=true only, so it cannot see the withdrawal
    assert harness.backfill("demo_ticketmaster", days=10).success
    run = harness.tick("demo_ticketmaster")
    assert run.success, run.failures
    assert harness.sandbox.heyloyalty.member_by_email(LIST, lower(person["email"])) is None


def test_a_member_removed_for_a_withdrawal_comes_back_when_consent_is_given_again(harness):
    harness.load("demo_ticketmaster", edit={"demo_ticketmaster": {"import.type": "create_only"}})
    assert harness.backfill("demo_ticketmaster").success
    person = harness.listed_tm_customer(LIST)
    harness.sandbox.ticketmaster.withdraw_consent(person["customerId"])
    assert harness.tick("demo_ticketmaster").success
    assert harness.sandbox.heyloyalty.member_by_email(LIST, lower(person["email"])) is None

    again = copy.deepcopy(harness.sandbox.ticketmaster.customer(person["customerId"]))
    again["marketingConsent"] = True
    harness.sandbox.ticketmaster.upsert_customer(again)
    run = harness.tick("demo_ticketmaster")
    assert run.success, run.failures
    assert run.get("members_delivered", "created") == 1
    assert harness.sandbox.heyloyalty.member_by_email(LIST, lower(person["email"])) is not None


def test_refusals_are_reported_by_the_run_that_saw_them(harness):
    harness.load("demo_flexpos")
    reason = "Member blocked by list policy"
    harness.sandbox.faults.add("members/upsert", 400, times=2, body={"error": reason})
    first = harness.backfill("demo_flexpos")
    assert first.success, first.failures
    assert first.get("members_delivered", "refused") == 2

    harness.sandbox.faults.add("members/upsert", 400, times=1, body={"error": reason})
    again = harness.tick("demo_flexpos")  # both are sent again; the list refuses one of them
    assert again.success, again.failures
    assert again.get("members_delivered", "refused") == 1
    assert again.get("members_delivered", "created") == 1
    rows = harness.query(
        "SELECT match_key, run_id FROM quarantine WHERE stage = 'deliver' AND entity = 'members'"
    )
    assert [r[1] for r in rows] == [again.run_id]  # the first run's verdicts are replaced
    (sample,) = again.get("members_delivered", "refused_sample")
    assert sample["reason"] == reason
    assert "***" in sample["match_key"] and sample["match_key"] != rows[0][0]
