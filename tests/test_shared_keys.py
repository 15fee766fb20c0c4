"""AF1: match keys shared by several records of a withholding integration are not synced, and are
reported (table, CSV, asset check); the default `merge` keeps merging them into one member.

Two integrations feed one list: `fp` (records without a consent field) and `tm` (records with a
marketing consent). Landing files are written by the stand-in sources of tests/test_model.py, so
staging and the model run as in production, on a tmp_path warehouse.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from typing import Any

import dagster as dg
import duckdb
import pytest
import yaml
from dagster_duckdb import DuckDBResource

from assets import model as model_assets
from assets import naming
from memberflow import model, shared_keys, staging
from memberflow.config import INTEGRATIONS_DIR, load_all
from tests.test_model import (
    FP_CUSTOMERS,
    FP_SETTINGS,
    TM_CUSTOMERS,
    TM_SETTINGS,
    FakeSource,
    feed_fp,
    feed_tm,
    fp_customer,
    members,
    tm_customer,
    tombstone,
)

MERGE = [model.Feed("fp", FP_CUSTOMERS, ()), model.Feed("tm", TM_CUSTOMERS, ())]
WITHHOLD = [replace(MERGE[0], shared_match_keys="withhold"), MERGE[1]]
SHARED = "famille.peeters@example.be"


@pytest.fixture()
def conn(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    connection = duckdb.connect(str(tmp_path / "w.duckdb"))
    yield connection
    connection.close()


def build(conn, feeds: list[model.Feed]) -> dict[str, int]:
    staging.stage_members(conn, FP_CUSTOMERS, FP_SETTINGS)
    staging.stage_members(conn, TM_CUSTOMERS, TM_SETTINGS)
    return model.build_members(conn, feeds)


def shared_rows(conn) -> list[tuple]:
    return conn.execute(
        "SELECT integration, match_key, record_ids, names, records FROM shared_match_keys "
        "ORDER BY ALL"
    ).fetchall()


def a_shared_mailbox() -> None:
    """Two relations of one family share a mailbox; a third has its own address."""
    feed_fp(
        fp_customer(1, "2025-01-01T10:00:00", Email=SHARED, FirstName="Jan", LastName="Peeters"),
        fp_customer(2, "2025-01-02T10:00:00", Email=SHARED, FirstName="An", LastName="Peeters"),
        fp_customer(3, "2025-01-01T10:00:00", FirstName="Élise", LastName="Dubois"),
    )


def test_merge_makes_one_member_of_a_shared_key_as_before(conn):
    a_shared_mailbox()
    counts = build(conn, MERGE)
    assert "withheld_shared_keys" not in counts  # unchanged counts for lists that merge
    assert counts["members"] == 2
    assert members(conn, "source_records", "first_name") == {
        SHARED: (2, "An"),  # the newest record's value wins (X6)
        "fp3@example.dk": (1, "Élise"),
    }
    assert shared_rows(conn) == []


def test_withhold_syncs_no_member_for_a_shared_key_and_reports_its_records(conn):
    a_shared_mailbox()
    counts = build(conn, WITHHOLD)
    assert counts["withheld_shared_keys"] == 1
    assert counts["members"] == 1 and counts["source_records"] == 1
    assert set(members(conn, "source_records")) == {"fp3@example.dk"}
    assert conn.execute("SELECT count(*) FROM member_profile").fetchall()[0][0] == 1
    assert shared_rows(conn) == [("fp", SHARED, ["1", "2"], ["Jan Peeters", "An Peeters"], 2)]


def test_a_key_shared_by_a_consented_and_a_never_consented_record_is_not_shared(conn):
    feed_tm(
        tm_customer("t1", "2025-01-01T10:00:00Z", email=SHARED, consent=True),
        tm_customer("t2", "2025-01-01T10:00:00Z", email=SHARED, consent=False),
    )
    withhold_tm = [MERGE[0], replace(MERGE[1], shared_match_keys="withhold")]
    counts = build(conn, withhold_tm)
    assert counts["withheld_shared_keys"] == 0
    assert members(conn, "sources", "source_records") == {SHARED: (["tm"], 1)}

    feed_tm(tm_customer("t2", "2025-01-03T10:00:00Z", email=SHARED, consent=True))
    assert build(conn, withhold_tm)["withheld_shared_keys"] == 1  # now both qualify
    assert members(conn, "source_records") == {}


def test_a_deleted_record_does_not_count_and_its_key_is_synced_again(conn):
    a_shared_mailbox()
    build(conn, WITHHOLD)
    feed_fp(tombstone(1))  # the office deleted the duplicate relation
    counts = build(conn, WITHHOLD)
    assert counts["withheld_shared_keys"] == 0
    assert members(conn, "source_records", "first_name", "withdrawn")[SHARED] == (1, "An", False)


def test_tombstones_of_a_withheld_key_withdraw_nothing(conn):
    """Records 1 and 2 share the key, record 4 (same key) was deleted: the key stays withheld
    and is not a withdrawn member (which would plan a removal)."""
    a_shared_mailbox()
    feed_fp(fp_customer(4, "2025-01-01T10:00:00", Email=SHARED))
    feed_fp(tombstone(4))
    counts = build(conn, WITHHOLD)
    assert (counts["withheld_shared_keys"], counts["withdrawn"]) == (1, 0)
    assert SHARED not in members(conn, "withdrawn")
    assert shared_rows(conn)[0][2] == ["1", "2"]


def test_another_integration_on_the_list_still_supplies_a_withheld_key(conn):
    a_shared_mailbox()
    feed_tm(tm_customer("t1", "2025-01-01T10:00:00Z", email=SHARED, firstName="Jan"))
    counts = build(conn, WITHHOLD)
    assert counts["withheld_shared_keys"] == 1
    assert members(conn, "sources", "source_records", "first_name")[SHARED] == (["tm"], 1, "Jan")


WITHHOLD_TM = [MERGE[0], replace(MERGE[1], shared_match_keys="withhold")]


def delivery_to(feeds: list[model.Feed]):
    """A fake target and the delivery settings of a list fed by `feeds` (email as match key)."""
    from memberflow.delivery import DeliverySettings
    from resources.base import UpsertFlags
    from tests.fake_target import FakeTarget

    settings = DeliverySettings("email", "create_and_update", False, UpsertFlags(), run_id="r")
    return FakeTarget(model.member_fields(feeds)), settings


def test_unticking_a_duplicate_releases_the_key_to_the_record_left(conn):
    """A and B share a mailbox; the office unticks B to clean up: A is synced, and the report
    no longer lists the key (a deactivated relation arrives the same way: consent false)."""
    from memberflow.delivery import deliver_members

    target, settings = delivery_to(WITHHOLD_TM)
    fields = model.member_fields(WITHHOLD_TM)
    feed_tm(
        tm_customer("t1", "2025-01-01T10:00:00Z", email=SHARED, firstName="Jan"),
        tm_customer("t2", "2025-01-02T10:00:00Z", email=SHARED, firstName="An"),
    )
    assert build(conn, WITHHOLD_TM)["withheld_shared_keys"] == 1
    assert members(conn, "source_records") == {}

    feed_tm(tm_customer("t2", "2025-01-03T10:00:00Z", email=SHARED, firstName="An", consent=False))
    counts = build(conn, WITHHOLD_TM)
    assert (counts["withheld_shared_keys"], counts["withdrawn"]) == (0, 0)
    assert shared_rows(conn) == []
    # A's alone: B's newer name is not lent to it, and B's withdrawal does not withdraw it
    assert members(conn, "sources", "source_records", "first_name", "withdrawn") == {
        SHARED: (["tm"], 1, "Jan", False)
    }
    assert deliver_members(conn, target, settings, fields).created == 1
    [member] = target.members.values()
    assert member["values"]["first_name"] == "Jan"


def test_unticking_one_of_three_keeps_the_key_withheld_and_lists_the_two_left(conn):
    feed_tm(
        tm_customer("t1", "2025-01-01T10:00:00Z", email=SHARED),
        tm_customer("t2", "2025-01-01T10:00:00Z", email=SHARED, consent=False),
        tm_customer("t3", "2025-01-01T10:00:00Z", email=SHARED),
    )
    feed_tm(tm_customer("t2", "2025-01-01T09:00:00Z", email=SHARED))  # t2 consented once
    assert build(conn, WITHHOLD_TM)["withheld_shared_keys"] == 1
    assert [row[2] for row in shared_rows(conn)] == [["t1", "t3"]]
    assert members(conn, "source_records") == {}


def test_a_withheld_key_whose_records_are_all_unticked_is_withdrawn_from_the_target(conn):
    """A was synced alone; B gets the same email (withheld: A stays on the target); then the
    office unticks both: the key is a withdrawn member and delivery takes it off the target."""
    from memberflow.delivery import deliver_members

    target, settings = delivery_to(WITHHOLD_TM)
    fields = model.member_fields(WITHHOLD_TM)
    feed_tm(tm_customer("t1", "2025-01-01T10:00:00Z", email=SHARED))
    build(conn, WITHHOLD_TM)
    assert deliver_members(conn, target, settings, fields).created == 1

    feed_tm(tm_customer("t2", "2025-01-02T10:00:00Z", email=SHARED))
    assert build(conn, WITHHOLD_TM)["withheld_shared_keys"] == 1
    report = deliver_members(conn, target, settings, fields)
    assert (report.created, report.updated, report.removed) == (0, 0, 0)
    assert len(target.members) == 1

    feed_tm(
        tm_customer("t1", "2025-01-03T10:00:00Z", email=SHARED, consent=False),
        tm_customer("t2", "2025-01-03T10:00:00Z", email=SHARED, consent=False),
    )
    counts = build(conn, WITHHOLD_TM)
    assert (counts["withheld_shared_keys"], counts["withdrawn"]) == (0, 1)
    assert shared_rows(conn) == []
    assert members(conn, "source_records", "withdrawn") == {SHARED: (2, True)}
    assert deliver_members(conn, target, settings, fields).removed == 1
    assert target.members == {}
    assert deliver_members(conn, target, settings, fields).removed == 0  # once, not every run


def test_only_the_withholding_integration_withholds(conn):
    feed_tm(
        tm_customer("t1", "2025-01-01T10:00:00Z", email=SHARED),
        tm_customer("t2", "2025-01-01T10:00:00Z", email=SHARED),
    )
    counts = build(conn, WITHHOLD)  # fp withholds, tm merges
    assert counts["withheld_shared_keys"] == 0
    assert members(conn, "source_records") == {SHARED: (2,)}


def test_names_are_first_and_last_name_else_a_company_name_else_empty():
    conn = duckdb.connect()
    conn.execute(
        """CREATE TEMP TABLE candidates AS SELECT * FROM (VALUES
            ('x', '1', 'k1', true, NULL, 1, 'Marie', 'Claes', NULL),
            ('x', '2', 'k1', true, true, 2, NULL, 'Bakkerij Janssens', NULL),
            ('x', '3', 'k1', true, true, 3, '  ', '', 'Brasserie du Coin'),
            ('x', '4', 'k1', true, true, 4, NULL, NULL, NULL),
            ('x', '5', 'k1', false, false, 5, 'Gone', 'Record', NULL),
            ('x', '6', 'k2', true, true, 6, 'Solo', 'Record', NULL),
            ('x', '7', 'k1', true, false, 7, 'Unticked', 'Record', NULL),
            ('x', '8', 'k2', true, false, 8, 'Unticked', 'Too', NULL))
           t(integration, record_id, match_key, live, consent, rank, first_name, last_name,
             company_name)"""
    )
    assert shared_keys.build_table(conn, "candidates", ["x"]) == 1  # k2: only record 6 consents
    [key] = shared_keys.rows(conn)
    assert key.record_ids == ("1", "2", "3", "4")  # deleted 5 and unticked 7 do not count
    assert key.names == ("Marie Claes", "Bakkerij Janssens", "Brasserie du Coin", "")
    assert shared_keys.build_table(conn, "candidates", []) == 0  # nobody withholds: no rows


def test_the_csv_report_lists_full_keys_for_the_office_and_is_replaced_each_run(conn):
    keys = [
        shared_keys.SharedKey("fp", SHARED, ("1", "2"), ("Jan Peeters", "An Peeters")),
        shared_keys.SharedKey("fp", "info@bakkerij.be", ("7", "9"), ("=HYPERLINK(x)", "A;B")),
    ]
    path = shared_keys.write_report("list_a", keys)
    assert path == shared_keys.landing.data_dir() / "reports" / "list_a" / "shared_match_keys.csv"
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")  # a BOM: Excel reads the accents as UTF-8
    with path.open(encoding="utf-8-sig", newline="") as handle:
        assert list(csv.reader(handle)) == [
            ["integration", "shared key", "record ids", "names"],
            ["fp", SHARED, "1; 2", "Jan Peeters; An Peeters"],
            ["fp", "info@bakkerij.be", "7; 9", "'=HYPERLINK(x); A,B"],  # no formula, no `;`
        ]
    assert [k.record_ids for k in shared_keys.read_report("list_a")] == [("1", "2"), ("7", "9")]
    assert shared_keys.read_report("list_a")[0] == keys[0]

    shared_keys.write_report("list_a", [])  # cleaned up at the source: a header only
    assert path.read_text(encoding="utf-8-sig").splitlines() == [
        "integration,shared key,record ids,names"
    ]
    assert [p.name for p in path.parent.iterdir()] == ["shared_match_keys.csv"]  # no temp left
    assert shared_keys.read_report("no_such_list") == []


def test_a_key_already_on_the_target_that_becomes_shared_is_withheld_not_removed(conn):
    from memberflow.delivery import DeliverySettings, deliver_members, plan_members
    from resources.base import UpsertFlags
    from tests.fake_target import FakeTarget

    settings = DeliverySettings("email", "create_and_update", False, UpsertFlags(), run_id="r")
    fields = model.member_fields(WITHHOLD)
    target = FakeTarget(fields)
    feed_fp(fp_customer(1, "2025-01-01T10:00:00", Email=SHARED, FirstName="Jan"))
    build(conn, WITHHOLD)
    assert deliver_members(conn, target, settings, fields).created == 1

    feed_fp(fp_customer(2, "2025-01-02T10:00:00", Email=SHARED, FirstName="An"))
    assert build(conn, WITHHOLD)["withheld_shared_keys"] == 1
    plan_members(conn, settings)
    assert conn.execute("SELECT count(*) FROM member_plan").fetchall()[0][0] == 0
    written = len(target.written)
    report = deliver_members(conn, target, settings, fields)
    assert (report.created, report.updated, report.removed) == (0, 0, 0)
    assert len(target.written) == written and len(target.members) == 1  # left as it was
    kept = "SELECT match_key FROM sync_state WHERE NOT coalesce(removed, false)"
    assert conn.execute(kept).fetchall() == [(SHARED,)]  # still known as acknowledged


# --- the asset check, through a Dagster materialization ------------------------------------------


def load_demo(tmp_path, withhold: bool):
    """The demo POS integration, optionally withholding shared keys (the only edit)."""
    raw = yaml.safe_load((INTEGRATIONS_DIR / "demo_flexpos.yaml").read_text())
    if withhold:
        raw["shared_match_keys"] = "withhold"
    path = tmp_path / "integrations" / "demo_flexpos.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    [integration] = load_all([path])
    return integration


def materialize_members(tmp_path, integration, records: list[dict[str, Any]]):
    from memberflow import landing
    from pipelines.factory import feed_of

    source = FakeSource("CustomerId", "Modified")
    landing.land_pages(source, integration.name, "customers", [records])
    database = str(tmp_path / "list.duckdb")
    settings = replace(FP_SETTINGS, integration=integration.name)
    with duckdb.connect(database) as conn:
        staging.stage_members(conn, FP_CUSTOMERS, settings)
    feed = replace(feed_of(integration), events=())  # members only: no event tables needed
    list_key = integration.list_key
    members_asset, _ = model_assets.build_model_assets(list_key, [integration], [feed])
    result = dg.materialize(
        [members_asset],
        resources={naming.warehouse_resource_key(list_key): DuckDBResource(database=database)},
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    return members_asset, {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_the_asset_check_warns_with_a_masked_preview_and_the_reports_path(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    integration = load_demo(tmp_path, withhold=True)
    records = [
        fp_customer(1, "2025-01-01T10:00:00", Email=SHARED, FirstName="Jan", LastName="Peeters"),
        fp_customer(2, "2025-01-01T10:00:00", Email=SHARED, FirstName="An", LastName="Peeters"),
        fp_customer(3, "2025-01-01T10:00:00"),
    ]
    asset, checks = materialize_members(tmp_path, integration, records)
    spec = next(s for s in asset.check_specs if s.name == model_assets.SHARED_CHECK)
    assert spec.blocking is False
    check = checks[model_assets.SHARED_CHECK]
    assert check.passed is False and check.severity == dg.AssetCheckSeverity.WARN
    meta = {k: v.value for k, v in check.metadata.items()}
    assert meta["count"] == 1 and meta["records"] == 2
    assert "f***@example.be" in meta["preview"] and SHARED not in meta["preview"]
    assert "1, 2" in meta["preview"] and "Jan Peeters, An Peeters" in meta["preview"]
    report = shared_keys.report_path(integration.list_key)
    assert meta["report"] == str(report)
    assert (
        shared_keys.read_report(integration.list_key)[0].match_key == SHARED
    )  # full, for the office
    assert checks[model_assets.UNIQUE_CHECK].passed is True


def test_the_asset_check_passes_when_no_key_is_shared(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    integration = load_demo(tmp_path, withhold=True)
    _, checks = materialize_members(tmp_path, integration, [fp_customer(1, "2025-01-01T10:00:00")])
    check = checks[model_assets.SHARED_CHECK]
    assert check.passed is True
    assert {k: v.value for k, v in check.metadata.items()}["count"] == 0
    assert shared_keys.read_report(integration.list_key) == []


def test_a_list_that_merges_has_no_shared_keys_check(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    integration = load_demo(tmp_path, withhold=False)
    records = [
        fp_customer(1, "2025-01-01T10:00:00", Email=SHARED),
        fp_customer(2, "2025-01-01T10:00:00", Email=SHARED),
    ]
    asset, checks = materialize_members(tmp_path, integration, records)
    assert {s.name for s in asset.check_specs} == {model_assets.UNIQUE_CHECK}
    assert set(checks) == {model_assets.UNIQUE_CHECK}
    assert not shared_keys.report_path(integration.list_key).exists()
