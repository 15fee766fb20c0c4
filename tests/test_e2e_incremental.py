"""A tick after the initial import rebuilds only what changed at the source, and what it builds
is what a full build of the same warehouse builds (real Dagster runs against the sandbox)."""

from __future__ import annotations

import shutil

import duckdb
import pytest

from memberflow import model
from pipelines.factory import feed_of, warehouse_path

pytestmark = pytest.mark.e2e
LIST = 4711


def _rows(conn: duckdb.DuckDBPyConnection, table: str) -> list[tuple]:
    return sorted(conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)


def test_a_changed_customer_is_rebuilt_alone_and_reaches_the_list(harness, tmp_path):
    harness.load("demo_flexpos")
    assert harness.backfill("demo_flexpos").success
    listed = {m["email"]: m for m in harness.sandbox.heyloyalty.members(LIST)}
    customer = next(
        c
        for c in harness.sandbox.data.flexpos_customers
        if (c.get("Email") or "").strip().lower() in listed
    )
    harness.sandbox.emulator("flexpos").upsert_customer(
        {"CustomerId": customer["CustomerId"], "City": "Nyby"}
    )

    run = harness.tick("demo_flexpos")
    assert run.success, run.failures
    rebuilt = run.get("members", "rebuilt_keys")
    assert rebuilt != "all" and 1 <= int(rebuilt) <= 5  # the customer, plus any landed again
    assert run.get("tracking_events", "rebuilt") != "all"
    assert run.get("members_delivered", "updated") >= 1
    member = {m["email"]: m for m in harness.sandbox.heyloyalty.members(LIST)}[
        customer["Email"].strip().lower()
    ]
    assert member["fields"]["city"] == "Nyby"

    # the same warehouse built in full gives the same tables
    copy = tmp_path / "full.duckdb"
    integration = harness.integration("demo_flexpos")
    shutil.copy(warehouse_path(integration.list_key), copy)
    with duckdb.connect(str(warehouse_path(integration.list_key)), read_only=True) as built:
        ticked = {t: _rows(built, t) for t in ("members", "member_profile", "tracking_events")}
    with duckdb.connect(str(copy)) as conn:
        conn.execute(f"DELETE FROM {model.STATE}")  # no watermark: a full build
        feeds = [feed_of(integration)]
        model.build_members(conn, feeds)
        model.build_tracking_events(conn, feeds)
        assert model.rebuilt(conn, "members") == "all"
        for table, rows in ticked.items():
            assert _rows(conn, table) == rows, table


def test_after_a_settled_run_only_a_new_sale_is_sent_and_nothing_is_left_pending(harness):
    from assets.deliver import delivery_settings
    from memberflow import event_delivery

    harness.load("demo_flexpos")
    assert harness.backfill("demo_flexpos").success
    assert harness.tick("demo_flexpos").success  # everything pending went: the list is settled
    listed = {m["email"] for m in harness.sandbox.heyloyalty.members(LIST)}
    customer = next(
        c
        for c in harness.sandbox.data.flexpos_customers
        if (c.get("Email") or "").strip().lower() in listed
    )
    line = {"LineNo": 1, "ProductId": "P-NEW", "ProductName": "Ny vare", "ProductGroup": "X"}
    line |= {"Quantity": 1, "UnitPrice": 10.0, "Discount": 0.0, "Amount": 10.0}
    harness.sandbox.emulator("flexpos").add_journal(
        {"CustomerId": customer["CustomerId"], "Lines": [line]}
    )
    before = len(harness.sandbox.heyloyalty.events(99))

    run = harness.tick("demo_flexpos")
    assert run.success, run.failures
    assert run.get("events_delivered", "sent_this_run") == 1
    assert run.get("events_delivered", "looked_at") == "events changed since the last run"
    assert len(harness.sandbox.heyloyalty.events(99)) == before + 1

    # looking at every event, as a run after a full rebuild would, finds nothing left to send
    integration = harness.integration("demo_flexpos")
    columns = model.event_columns([feed_of(integration)])
    settings = delivery_settings(integration, "check")
    with duckdb.connect(str(warehouse_path(integration.list_key))) as conn:
        event_delivery._select_pending(conn, settings, columns, None)
        assert conn.execute("SELECT count(*) FROM pending_events").fetchone()[0] == 0
