"""FlexPOS -> Heyloyalty end to end with the bulk path: real Dagster runs against the sandbox."""

from __future__ import annotations

import copy

import pytest

pytestmark = pytest.mark.e2e
LIST = 4711
BULK = {"demo_flexpos": {"target.bulk_threshold": 50}}  # the sandbox has 150 customers


def test_initial_import_goes_as_one_member_import_and_the_list_holds_everyone(harness):
    harness.load("demo_flexpos", edit=BULK)
    run = harness.backfill("demo_flexpos")
    assert run.success, run.failures

    calls = run.get("members_delivered", "api_calls_by_endpoint")
    # new members hold nothing on the list, so whatever fields each carries they share one file
    # (an empty cell where the list holds nothing changes nothing); no single upserts
    imports, upserts = calls.get("members/import"), calls.get("members/upsert", 0)
    assert imports == run.get("members_delivered", "bulk_imports") == 1
    assert upserts == 0
    _reads_at_most_one_per_file_and_a_read_back(run, imports)
    values = {
        len({k for k, v in m["fields"].items() if v not in (None, "")})
        for m in harness.sandbox.heyloyalty.members(LIST)
    }
    assert len(values) > 1  # the members do carry different sets of fields
    hl = harness.sandbox.heyloyalty
    emails = {m["email"] for m in hl.members(LIST)}
    (members,) = harness.query("SELECT count(*) FROM members WHERE NOT withdrawn")[0]
    assert len(emails) == members == run.get("members_delivered", "created") > 50
    assert run.get("members_delivered", "bulk_rows_confirmed") == members - upserts > 50
    (acked,) = harness.query("SELECT count(*) FROM sync_state WHERE action = 'create'")[0]
    assert acked == members

    # a quiet run sends nothing; an unsubscribed member whose record changes stays unsubscribed
    member = hl.members(LIST)[0]
    hl.unsubscribe(LIST, email=member["email"])
    for customer in harness.sandbox.data.flexpos_customers[:80]:
        changed = copy.deepcopy(harness.sandbox.flexpos.customer(customer["CustomerId"]))
        changed["City"] = "Næstved"
        harness.sandbox.flexpos.upsert_customer(changed)
    target = next(
        c
        for c in harness.sandbox.data.flexpos_customers
        if (c.get("Email") or "").strip().lower() == member["email"]
    )
    changed = copy.deepcopy(harness.sandbox.flexpos.customer(target["CustomerId"]))
    changed["LastName"] += "sen"
    harness.sandbox.flexpos.upsert_customer(changed)
    run = harness.tick("demo_flexpos")
    assert run.success, run.failures
    assert hl.member_by_email(LIST, member["email"])["status"] == "unsubscribed"
    assert run.get("members_delivered", "created") == 0
    updated = run.get("members_delivered", "updated")
    assert updated >= 50
    imports = run.get("members_delivered", "api_calls_by_endpoint").get("members/import")
    assert 1 <= imports == run.get("members_delivered", "bulk_imports")
    _reads_at_most_one_per_file_and_a_read_back(run, imports)
    assert all(
        hl.member_by_email(LIST, e)["fields"]["city"] == "Næstved"
        for e in {m["email"] for m in hl.members(LIST)}
        if e in _emails(harness.sandbox.data.flexpos_customers[:80]) and e != member["email"]
    )


def _reads_at_most_one_per_file_and_a_read_back(run, imports: int) -> None:
    """The files' reads: one right before a file only when no read of the last second stands
    for it, and one read-back for the files since the last read (was a read before and a read
    back after every file: 2 per file)."""
    purposes = run.get("members_delivered", "api_calls_by_purpose")
    assert purposes["import"] == imports
    reads = purposes.get("guard read (import)", 0) + purposes["read-back"]
    assert 1 <= reads <= imports + 1


def _emails(customers) -> set[str]:
    return {(c.get("Email") or "").strip().lower() for c in customers}
