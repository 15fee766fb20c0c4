"""Hostile source data end to end: bad optional fields cost only themselves, poison records are
quarantined, the run succeeds, and every day's figures are its own (issue 6, items 2, 3, 10)."""

from __future__ import annotations

import copy
from collections import Counter
from datetime import date, timedelta

import dagster as dg
import pytest

from tests.harness import lower

pytestmark = pytest.mark.e2e
LIST = 4711
TRACKING = 99


def _buyers(harness, count: int) -> list[dict]:
    """Customers with an email and at least one sale in the sandbox."""
    buying = Counter(j["CustomerId"] for j in harness.sandbox.data.journals if j["CustomerId"])
    found = [
        c
        for c in harness.sandbox.data.flexpos_customers
        if buying.get(c["CustomerId"]) and "@" in (c.get("Email") or "") and c["IsActive"]
    ]
    return found[:count]


def test_bad_fields_are_dropped_poison_records_quarantined_and_the_run_succeeds(harness):
    flexpos = harness.sandbox.flexpos
    short_mobile, ancient, long_name = _buyers(harness, 3)
    for customer, change in (
        (short_mobile, {"Mobile": "123"}),
        (ancient, {"BirthDate": "0001-01-01T00:00:00"}),
        (long_name, {"FirstName": "Å" * 300}),
    ):
        changed = copy.deepcopy(flexpos.customer(customer["CustomerId"]))
        changed.update(change)
        flexpos.upsert_customer(changed)
    template = next(j for j in harness.sandbox.data.journals if j["CustomerId"])
    poison = {
        "yesterday": {**template, "JournalId": 990001, "Modified": "yesterday"},
        "null modified": {**template, "JournalId": 990002, "Modified": None},
        "month 13": {**template, "JournalId": 990003, "Modified": "2026-13-01T10:00:00"},
        "null id": {**template, "JournalId": None},
    }
    flexpos.raw_extras["journals"] = list(poison.values())

    harness.load("demo_flexpos")
    run = harness.backfill("demo_flexpos")
    assert run.success, run.failures

    # the members reached the list without their bad field, and their purchases were sent
    listed = {lower(m["email"]): m for m in harness.sandbox.heyloyalty.members(LIST)}
    events = Counter(lower(e["email"]) for e in harness.sandbox.heyloyalty.events(TRACKING))
    for customer, field in ((short_mobile, "mobile"), (ancient, "birthdate")):
        member = listed[lower(customer["Email"])]
        assert not member["fields"].get(field), (field, member["fields"].get(field))
        assert events[lower(customer["Email"])] > 0
    member = listed[lower(long_name["Email"])]
    assert not member["fields"].get("firstname")
    assert member["fields"].get("lastname") == long_name["LastName"].strip()
    assert events[lower(long_name["Email"])] > 0

    # the quarantine table lists each problem with its field, action and reason
    rows = harness.query(
        "SELECT stage, record_id, field, action, reason FROM quarantine "
        "WHERE integration = 'demo_flexpos' AND stage IN ('land', 'stage')"
    )
    dropped = {
        (rid, field): reason for stage, rid, field, action, reason in rows
        if action == "field dropped"
    }  # fmt: skip
    assert dropped[(str(short_mobile["CustomerId"]), "mobile")].startswith(
        "mobile: invalid mobile '*23'"
    )
    # staged fields carry their canonical names (the list's names appear from the model on)
    assert dropped[(str(ancient["CustomerId"]), "birthday")].startswith(
        "birthday: implausible date '0001-01-01T00:00:00'"
    )
    long_reason = dropped[(str(long_name["CustomerId"]), "first_name")]
    assert long_reason.startswith("first_name: longer than 255 characters (300)")
    assert len(long_reason) < 120
    land = {reason: (rid, field) for stage, rid, field, _, reason in rows if stage == "land"}
    assert land["unreadable record: Modified: 'yesterday' is not a date"] == ("990001", "Modified")
    assert land["unreadable record: Modified: None is not a date"] == ("990002", "Modified")
    assert land["unreadable record: Modified: '2026-13-01T10:00:00' is not a date"] == (
        "990003",
        "Modified",
    )
    assert land["unreadable record: JournalId: None is not a record id"] == (None, "JournalId")
    assert run.get("journals_raw", "run_unreadable_records") == 4

    # a tick sees the same poison again: still one quarantine row each, and the run succeeds
    tick = harness.tick("demo_flexpos")
    assert tick.success, tick.failures
    (count,) = harness.query("SELECT count(*) FROM quarantine WHERE stage = 'land'")[0]
    assert count == 4


def test_each_day_of_a_single_run_backfill_gets_its_own_figures(harness):
    harness.load("demo_flexpos")
    run = harness.backfill("demo_flexpos", days=30)
    assert run.success, run.failures
    integration = harness.integration("demo_flexpos")
    table = "stg_demo_flexpos_journals"
    staged = dict(
        harness.query(f"SELECT business_date, count(*) FROM {table} GROUP BY ALL")  # noqa: S608
    )
    assert len(staged) > 3, "too few days with sales to tell days apart"

    key = dg.AssetKey([integration.name, "journals_staged"])
    by_day: dict[str, dict] = {}
    for record in harness.instance.fetch_materializations(key, limit=1000).records:
        mat = record.asset_materialization
        if mat is not None and mat.partition and record.run_id == run.run_id:
            by_day[mat.partition] = {k: v.value for k, v in mat.metadata.items()}
    assert by_day, "no per-partition materializations"
    for day, rows in staged.items():
        figures = by_day[date.isoformat(day)]
        assert figures["dagster/row_count"] == rows  # that day's rows, not the run's total
        assert figures["rows_this_run"] == rows
    # the run's totals once, on the range's last day, which every day names (issue 10)
    last = max(by_day)
    assert by_day[last]["run_rows_staged"] == sum(staged.values())
    assert {f["run_figures_on"] for f in by_day.values()} == {last}
    assert all("run_rows_staged" not in f for d, f in by_day.items() if d != last)
    quiet_days = [d for d, f in by_day.items() if f["dagster/row_count"] == 0]
    assert all(by_day[d]["rows_this_run"] == 0 for d in quiet_days)

    raw_key = dg.AssetKey([integration.name, "journals_raw"])
    landed = {}
    for record in harness.instance.fetch_materializations(raw_key, limit=1000).records:
        mat = record.asset_materialization
        if mat is not None and mat.partition and record.run_id == run.run_id:
            landed[mat.partition] = mat.metadata["records_this_run"].value
    assert sum(landed.values()) == run.get("journals_raw", "run_records_landed")
    assert len(set(landed.values())) > 1  # days differ: not one total repeated


def test_quarantine_sample_shows_only_this_runs_rows_masked(harness):
    harness.load("demo_flexpos")
    first = harness.backfill("demo_flexpos", days=30)
    assert first.success, first.failures
    sample = first.get("customers_staged", "quarantine_sample")
    assert "row withheld" in sample
    for customer in harness.sandbox.data.flexpos_customers:  # every address masked
        for value in (customer.get("Email"), customer.get("Mobile")):
            if value and len(value.strip()) > 4:
                assert value.strip().lower() not in sample.lower()
    quiet = harness.tick("demo_flexpos")
    assert quiet.success, quiet.failures
    assert quiet.get("customers_staged", "quarantine_sample") == "nothing quarantined in this run"
    (table_rows,) = harness.query("SELECT count(*) FROM stg_demo_flexpos_customers")[0]
    assert quiet.get("customers_staged", "dagster/row_count") == table_rows
    # this run re-read only what changed since the cursor (the boundary record, inclusively)
    this_run = quiet.get("customers_staged", "rows_this_run")
    assert this_run == quiet.get("customers_staged", "run_rows_staged") < table_rows


def test_an_incremental_run_credits_the_business_day_it_landed_records_in(harness):
    harness.load("demo_flexpos")
    assert harness.backfill("demo_flexpos", days=30).success
    day = date.today() - timedelta(days=10)
    customer = next(c for c in harness.sandbox.data.flexpos_customers if c.get("Email"))
    harness.sandbox.flexpos.add_journal(
        {
            "CustomerId": customer["CustomerId"],
            "Date": f"{day.isoformat()}T11:00:00",
            "Lines": [{"LineNo": 1, "ProductId": 101, "ProductName": "Kaffe", "Amount": 42.0}],
        }
    )
    tick = harness.tick("demo_flexpos")
    assert tick.success, tick.failures

    integration = harness.integration("demo_flexpos")
    for asset, key in (("journals_raw", "records_this_run"), ("journals_staged", "rows_this_run")):
        records = harness.instance.fetch_materializations(
            dg.AssetRecordsFilter(
                asset_key=dg.AssetKey([integration.name, asset]), asset_partitions=[str(day)]
            ),
            limit=10,
        ).records
        mine = [r.asset_materialization for r in records if r.run_id == tick.run_id]
        assert mine, f"{asset}: the tick did not credit {day}"
        figures = {k: v.value for k, v in mine[0].metadata.items()}
        assert figures[key] >= 1
    (rows,) = harness.query(
        "SELECT count(*) FROM stg_demo_flexpos_journals WHERE business_date = ?", [day]
    )[0]
    assert figures["dagster/row_count"] == rows
