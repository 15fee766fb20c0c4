"""FlexPOS -> Heyloyalty end to end: real Dagster runs against the sandbox over real sockets."""

from __future__ import annotations

import copy
import json
from collections import Counter

import pytest

pytestmark = pytest.mark.e2e
LIST = 4711
TRACKING = 99


def _list_emails(sandbox) -> list[str]:
    return [m["email"] for m in sandbox.heyloyalty.members(LIST)]


@pytest.fixture(scope="module")
def imported(module_harness):
    """The demo's initial import, made once for the tests below that only read its result."""
    module_harness.load("demo_flexpos")
    return module_harness, module_harness.backfill("demo_flexpos")


def test_initial_import_creates_members_events_and_quarantines_bad_rows(imported):
    harness, run = imported
    assert run.success, run.failures

    emails = _list_emails(harness.sandbox)
    assert emails, "no member reached the list"
    assert len(emails) == len({e.lower() for e in emails}), "duplicate members on the list"
    (members,) = harness.query("SELECT count(*) FROM members WHERE NOT withdrawn")[0]
    assert len(emails) == members == run.get("members_delivered", "created")

    # every bad email of the generated data is quarantined with a reason naming the field; only
    # a bad match key withholds the customer (a bad optional field costs only the field)
    bad = harness.query(
        """SELECT record_id, reason FROM quarantine WHERE entity = 'customers' AND stage = 'stage'
           AND coalesce(action, 'row withheld') = 'row withheld'"""
    )
    assert bad and all(reason for _, reason in bad)
    assert any(reason.startswith("email: invalid email") for _, reason in bad)
    quarantined_ids = {rid for rid, _ in bad}
    for customer in harness.sandbox.data.flexpos_customers:
        if str(customer["CustomerId"]) in quarantined_ids and customer.get("Email"):
            assert customer["Email"].strip().lower() not in emails

    # tracking events reached the activity feed, each for a member of the list
    events = harness.sandbox.heyloyalty.events(TRACKING)
    assert events and run.get("events_delivered", "sent") == len(events)
    listed = {e.lower() for e in emails}
    assert all(e["email"].lower() in listed for e in events)
    assert {e.get("event_type") for e in events} <= {"bought", "refunded"}
    assert any(e.get("event_type") == "bought" for e in events)


def test_member_fields_follow_the_default_mapping(imported):
    harness, run = imported
    assert run.success, run.failures
    by_email = {m["email"]: m for m in harness.sandbox.heyloyalty.members(LIST)}
    checked = 0
    for customer in harness.sandbox.data.flexpos_customers:
        member = by_email.get((customer.get("Email") or "").strip().lower())
        if member is None or len(customer.get("cards") or []) < 2:
            continue
        fields = member["fields"]
        assert fields["firstname"] == customer["FirstName"].strip()
        cards = ",".join(str(c["Cardnumber"]) for c in customer["cards"])
        assert fields["cardnumber"] == cards  # cards.Cardnumber over an array, C6 separator
        if member.get("mobile"):
            assert str(member["mobile"]).startswith("45")  # HL-A8: digits with country code
        checked += 1
    assert checked > 0


def test_second_run_sends_only_what_changed(harness):
    harness.load("demo_flexpos")
    assert harness.backfill("demo_flexpos").success
    before = harness.sandbox.heyloyalty.request_counts.get("upsert", 0)

    quiet = harness.tick("demo_flexpos")
    assert quiet.success, quiet.failures
    assert quiet.get("members_delivered", "created") == 0
    assert quiet.get("members_delivered", "updated") == 0
    assert harness.sandbox.heyloyalty.request_counts.get("upsert", 0) == before  # X2

    member = harness.sandbox.heyloyalty.members(LIST)[0]
    customer = next(
        c
        for c in harness.sandbox.data.flexpos_customers
        if (c.get("Email") or "").strip().lower() == member["email"]
    )
    changed = copy.deepcopy(harness.sandbox.flexpos.customer(customer["CustomerId"]))
    changed["City"] = "Næstved"
    harness.sandbox.flexpos.upsert_customer(changed)

    run = harness.tick("demo_flexpos")
    assert run.success, run.failures
    assert run.get("members_delivered", "updated") == 1
    assert run.get("members_delivered", "created") == 0
    assert (
        harness.sandbox.heyloyalty.member_by_email(LIST, member["email"])["fields"]["city"]
        == "Næstved"
    )


def test_unsubscribed_member_is_not_resubscribed_when_reimport_is_no(harness):
    harness.load("demo_flexpos")  # the demo file says reimport_unsubscribed: false
    assert harness.backfill("demo_flexpos").success
    member = harness.sandbox.heyloyalty.members(LIST)[0]
    harness.sandbox.heyloyalty.unsubscribe(LIST, email=member["email"])
    customer = next(
        c
        for c in harness.sandbox.data.flexpos_customers
        if (c.get("Email") or "").strip().lower() == member["email"]
    )
    changed = copy.deepcopy(harness.sandbox.flexpos.customer(customer["CustomerId"]))
    changed["LastName"] = changed["LastName"] + "sen"
    harness.sandbox.flexpos.upsert_customer(changed)

    run = harness.tick("demo_flexpos")
    assert run.success, run.failures
    assert run.get("members_delivered", "skipped_unsubscribed") >= 1
    assert run.get("members_delivered", "pulled_back", {}).get("unsubscribed", 0) >= 1
    after = harness.sandbox.heyloyalty.member_by_email(LIST, member["email"])
    assert after["status"] == "unsubscribed"


def test_backfill_twice_duplicates_nothing(harness):
    harness.load("demo_flexpos")
    assert harness.backfill("demo_flexpos", days=60).success
    events = len(harness.sandbox.heyloyalty.events(TRACKING))
    staged = harness.query("SELECT count(*) FROM stg_demo_flexpos_journals")[0][0]

    again = harness.backfill("demo_flexpos", days=60)
    assert again.success, again.failures
    assert len(harness.sandbox.heyloyalty.events(TRACKING)) == events
    assert harness.query("SELECT count(*) FROM stg_demo_flexpos_journals")[0][0] == staged
    assert again.get("events_delivered", "sent") == 0


def test_missing_list_field_stops_delivery_before_any_send(harness):
    harness.load("demo_flexpos")
    harness.sandbox.heyloyalty.remove_field(LIST, "cardnumber")
    run = harness.backfill("demo_flexpos")
    assert not run.success
    assert any("cardnumber" in f for f in run.failures)
    assert harness.sandbox.heyloyalty.members(LIST) == []
    assert harness.sandbox.heyloyalty.request_counts.get("upsert", 0) == 0


def test_update_only_creates_nobody(harness):
    harness.load("demo_flexpos", edit={"demo_flexpos": {"import.type": "update_only"}})
    run = harness.backfill("demo_flexpos")
    assert run.success, run.failures
    assert harness.sandbox.heyloyalty.members(LIST) == []
    assert run.get("members_delivered", "skipped_by_import_type") > 0


def test_mapping_change_replays_from_raw_without_calling_the_source(harness):
    harness.load("demo_flexpos")
    assert harness.backfill("demo_flexpos").success
    harness.load(
        "demo_flexpos",
        edit={"demo_flexpos": {"mapping.customers": {"birthday": None, "customer_no": None}}},
    )
    config = {"ops": {"demo_flexpos__customers_raw": {"config": {"fetch": False}}}}
    for entity in ("journals", "tickets"):
        config["ops"][f"demo_flexpos__{entity}_raw"] = {"config": {"fetch": False}}
    run = harness.tick("demo_flexpos", run_config=config)
    assert run.success, run.failures
    assert run.total("_raw", "api_calls") == 0
    assert run.get("customers_staged", "replayed_from_raw") is True
    columns = {r[0] for r in harness.query("DESCRIBE stg_demo_flexpos_customers")}
    assert "birthday" not in columns and "customer_no" not in columns


def test_secrets_never_reach_run_logs_or_metadata(imported):
    from sandbox.credentials import SANDBOX_ENV

    harness, run = imported
    assert run.success, run.failures
    secrets = [v for k, v in SANDBOX_ENV.items() if "SECRET" in k or "PASSWORD" in k]
    records = harness.instance.get_event_records(
        __import__("dagster").EventRecordsFilter(
            event_type=__import__("dagster").DagsterEventType.ASSET_MATERIALIZATION
        ),
        limit=1000,
    )
    text = json.dumps([str(r.event_log_entry) for r in records])
    logs = "\n".join(
        str(e.message)
        for run in harness.instance.get_runs()
        for e in harness.instance.all_logs(run.run_id)
    )
    for secret in secrets:
        assert secret not in text and secret not in logs


def test_import_flags_reach_the_list_and_run_overrides_win(harness):
    edit = {"import.send_automations": True, "import.send_webhooks": True}
    harness.load("demo_flexpos", edit={"demo_flexpos": edit})
    overrides = {
        "ops": {"heyloyalty_demo_4711__members_delivered": {"config": {"send_optin": True}}}
    }
    assert harness.backfill("demo_flexpos", run_config=overrides).success
    email = harness.sandbox.heyloyalty.members(LIST)[0]["email"]
    (flags,) = harness.sandbox.heyloyalty.upsert_flags(LIST, email)
    assert flags["trigger_autoresponder"] == 1  # C6 send automations (HL-A7)
    assert flags["trigger_webhooks"] == 1  # C6 send webhooks
    assert flags["skipOptIn"] == 0  # C5 per-run override: opt-in mail first


def test_memberships_are_one_more_tracked_entity(harness):
    edit = {"tracking": ["journals", "tickets", "memberships"]}
    harness.load("demo_flexpos", edit={"demo_flexpos": edit})
    run = harness.backfill("demo_flexpos")
    assert run.success, run.failures
    events = harness.sandbox.heyloyalty.events(TRACKING)
    memberships = [e for e in events if e.get("event_type") == "membership"]
    assert memberships, "no membership reached the activity feed"
    assert all(e.get("valid_to") and e.get("status") for e in memberships)


def test_gender_arrives_as_the_documented_option_id_and_refuses_nobody(imported):
    harness, run = imported
    assert run.success, run.failures
    assert run.get("members_delivered", "refused") == 0
    by_email = {m["email"]: m for m in harness.sandbox.heyloyalty.members(LIST)}
    wanted = {"M": "1", "F": "2"}  # HL 2.2: sex 1 = male, 2 = female; the list's labels are Danish
    checked = 0
    for customer in _one_record_per_email(harness):
        member = by_email.get((customer.get("Email") or "").strip().lower())
        if member is None or customer.get("Gender") not in wanted:
            continue
        assert str(member["fields"].get("sex")) == wanted[customer["Gender"]]
        checked += 1
    assert checked > 20


def test_a_choice_value_with_no_option_on_the_list_costs_only_that_field(harness):
    harness.load("demo_flexpos")
    harness.sandbox.heyloyalty.lists[LIST].fields["sex"]["options"] = {"1": "Mand"}  # no "2"
    run = harness.backfill("demo_flexpos")
    assert run.success, run.failures
    women = [k for (k,) in harness.query("SELECT match_key FROM members WHERE sex = '2'")]
    listed = {m["email"]: m for m in harness.sandbox.heyloyalty.members(LIST)}
    sent_without = [e for e in women if e in listed]  # on the list, without the field
    assert women and sent_without == women
    assert all(listed[e]["fields"].get("sex") is None for e in sent_without)
    assert run.get("members_delivered", "refused") == 0
    assert run.get("members_delivered", "fields_dropped") == len(sent_without)
    rows = harness.query(
        """SELECT match_key, field, action, reason, run_id FROM quarantine
           WHERE stage = 'deliver' AND entity = 'members'"""
    )
    assert sorted(r[0] for r in rows) == sorted(sent_without)
    assert all(r[1:3] == ("sex", "field dropped") and "'2'" in r[3] for r in rows)
    assert {r[4] for r in rows} == {run.run_id}


def _one_record_per_email(harness) -> list[dict]:
    """Customers whose email no other record has (merged people take the latest record's sex)."""
    customers = harness.sandbox.data.flexpos_customers
    seen = Counter((c.get("Email") or "").strip().lower() for c in customers)
    return [c for c in customers if seen[(c.get("Email") or "").strip().lower()] == 1]
