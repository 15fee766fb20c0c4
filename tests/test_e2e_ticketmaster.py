"""Ticketmaster -> Heyloyalty, and one list fed by FlexPOS and Ticketmaster (TM1-TM4, X6)."""

from __future__ import annotations

import pytest

from tests.harness import lower

pytestmark = pytest.mark.e2e
LIST = 4711
TRACKING = 99


def test_only_consenting_customers_become_members_with_their_ticket_events(harness):
    harness.load("demo_ticketmaster")
    run = harness.backfill("demo_ticketmaster")
    assert run.success, run.failures

    on_list = {lower(m["email"]) for m in harness.sandbox.heyloyalty.members(LIST)}
    consenting = {lower(c["email"]) for c in harness.sandbox.data.tm_customers if c["email"]}
    refused = {
        lower(c["email"])
        for c in harness.sandbox.data.tm_customers
        if c["email"] and not c["marketingConsent"]
    }
    consenting -= refused
    assert on_list and on_list <= consenting  # TM2: nobody without consent
    assert not on_list & refused

    events = harness.sandbox.heyloyalty.events(TRACKING)
    assert events and all(lower(e["email"]) in on_list for e in events)
    kinds = {e["event_type"] for e in events}
    assert kinds <= {"bought", "refunded"} and "bought" in kinds  # a refund is not a purchase
    sample = events[0]  # TM3: one event per ticket, with its ticket info
    for column in ("product_name", "venue", "section", "row", "seat", "amount", "date"):
        assert sample.get(column) not in (None, ""), column


def test_a_backfill_longer_than_a_year_is_split_into_one_year_requests(harness):
    harness.load(
        "demo_ticketmaster", edit={"demo_ticketmaster": {"schedule.history_start": "2024-06-01"}}
    )
    run = harness.backfill("demo_ticketmaster", days=800)  # the emulator refuses > 366 days
    assert run.success, run.failures
    calls = run.get("orders_raw", "api_calls_by_endpoint", {})
    assert sum(v for k, v in calls.items() if "orders" in k) >= 3  # 800 days = 3 windows


def test_one_list_fed_by_two_sources_has_one_member_per_person(harness):
    harness.load("demo_flexpos", "demo_ticketmaster")
    assert harness.backfill("demo_flexpos").success
    run = harness.backfill("demo_ticketmaster")
    assert run.success, run.failures

    members = harness.sandbox.heyloyalty.members(LIST)
    emails = [lower(m["email"]) for m in members]
    assert len(emails) == len(set(emails)), "a person is on the list twice"

    merged = harness.query("SELECT match_key FROM members WHERE len(sources) = 2 AND NOT withdrawn")
    assert merged, "the generator overlaps the sources on purpose; nobody was merged"
    events = harness.sandbox.heyloyalty.events(TRACKING)
    both = 0
    for (key,) in merged:
        mine = [e for e in events if lower(e["email"]) == key]
        from_tm = any(e.get("venue") for e in mine)
        from_fp = any(e.get("store") or e.get("zone") for e in mine)
        both += from_tm and from_fp
    assert both > 0, "no merged member has events from both sources"


def test_precedence_latest_modified_source_wins_per_field(harness):
    import copy
    import time

    harness.load("demo_flexpos", "demo_ticketmaster")
    assert harness.backfill("demo_flexpos").success
    assert harness.backfill("demo_ticketmaster").success
    (key,) = harness.query(
        "SELECT match_key FROM members WHERE len(sources) = 2 ORDER BY match_key LIMIT 1"
    )[0]
    tm = next(c for c in harness.sandbox.data.tm_customers if lower(c["email"]) == key)
    fp = next(c for c in harness.sandbox.data.flexpos_customers if lower(c.get("Email")) == key)

    changed = copy.deepcopy(harness.sandbox.ticketmaster.customer(tm["customerId"]))
    changed["lastName"] = "Ticketmastersen"  # TM is now the latest modified source
    harness.sandbox.ticketmaster.upsert_customer(changed)
    assert harness.tick("demo_ticketmaster").success
    member = harness.sandbox.heyloyalty.member_by_email(LIST, key)
    assert member["fields"]["lastname"] == "Ticketmastersen"
    assert (
        member["fields"]["cardnumber"]
        == harness.query("SELECT cardnumber FROM members WHERE match_key = ?", [key])[0][0]
    )  # a field only FlexPOS has is kept

    time.sleep(1.1)
    changed = copy.deepcopy(harness.sandbox.flexpos.customer(fp["CustomerId"]))
    changed["LastName"] = "Kassesen"  # now FlexPOS is the latest
    harness.sandbox.flexpos.upsert_customer(changed)
    assert harness.tick("demo_flexpos").success
    member = harness.sandbox.heyloyalty.member_by_email(LIST, key)
    assert member["fields"]["lastname"] == "Kassesen"


def test_same_mobile_in_different_spellings_is_one_member(harness):
    edit = {"match_on": "mobile"}
    harness.load(
        "demo_flexpos", "demo_ticketmaster", edit={"demo_flexpos": edit, "demo_ticketmaster": edit}
    )
    assert harness.backfill("demo_flexpos").success
    run = harness.backfill("demo_ticketmaster")
    assert run.success, run.failures
    mobiles = [str(m["mobile"]) for m in harness.sandbox.heyloyalty.members(LIST)]
    assert mobiles and len(mobiles) == len(set(mobiles))
    merged = harness.query("SELECT count(*) FROM members WHERE len(sources) = 2")[0][0]
    assert merged > 0
    # each update was preceded by a look-up by mobile (wire format, HL-A8) that found the member
    updated = run.get("members_delivered", "updated")
    assert updated > 0 and run.get("members_delivered", "unsubscribed_meanwhile") == 0
    guard = run.get("members_delivered", "unsubscribe_guard_calls")
    assert guard["checks_before_update"] >= updated


def test_a_consent_withdrawn_at_ticketmaster_takes_the_member_off_the_list(harness):
    harness.load("demo_ticketmaster")
    assert harness.backfill("demo_ticketmaster").success
    person = harness.listed_tm_customer(LIST)
    harness.sandbox.ticketmaster.withdraw_consent(person["customerId"])

    run = harness.tick("demo_ticketmaster")
    assert run.success, run.failures
    assert run.get("members_delivered", "removed") == 1
    assert harness.sandbox.heyloyalty.member_by_email(LIST, lower(person["email"])) is None
    quiet = harness.tick("demo_ticketmaster")  # and it is not sent again
    assert quiet.get("members_delivered", "created") == 0


def test_integrations_on_other_lists_never_see_each_others_members(harness):
    other = {
        "target.account": "other",
        "target.list_id": "5001",
        "target.tracking_id": "501",
        "target.api_key_env": "HEYLOYALTY_OTHER_API_KEY",
        "target.api_secret_env": "HEYLOYALTY_OTHER_API_SECRET",
    }
    harness.load("demo_flexpos", "demo_ticketmaster", edit={"demo_ticketmaster": other})
    assert harness.backfill("demo_flexpos").success
    assert harness.backfill("demo_ticketmaster").success
    fp_list = {lower(m["email"]) for m in harness.sandbox.heyloyalty.members(LIST)}
    tm_list = {lower(m["email"]) for m in harness.sandbox.heyloyalty.members(5001)}
    fp_people = {lower(c.get("Email")) for c in harness.sandbox.data.flexpos_customers}
    tm_people = {lower(c.get("email")) for c in harness.sandbox.data.tm_customers}
    assert fp_list and tm_list
    assert fp_list <= fp_people and tm_list <= tm_people  # C1: no client's data on another list
    assert not (tm_list - fp_people) & fp_list
