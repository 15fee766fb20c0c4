"""The five-minute sensor with its cursor, one run per list at a time, retries on vendor faults,
and the error report mailed to a local SMTP server."""

from __future__ import annotations

import copy
import json
import os
import time

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from tests.smtp_inbox import smtp_inbox

pytestmark = pytest.mark.e2e
LIST = 4711


def _evaluate(harness, cursor: str | None):
    sensor = harness.defs.resolve_sensor_def("demo_flexpos_sensor")
    context = dg.build_sensor_context(
        instance=harness.instance,
        cursor=cursor,
        resources=harness.defs.resources,
        repository_def=harness.defs.get_repository_def(),
    )
    return sensor.evaluate_tick(context)


def test_sensor_runs_only_when_something_changed_and_keeps_a_cursor(harness):
    harness.load("demo_flexpos")
    assert harness.backfill("demo_flexpos").success

    first = _evaluate(harness, None)  # no event cursor yet: the first tick runs
    assert len(first.run_requests) == 1
    request = first.run_requests[0]
    assert request.tags["memberflow/mode"] == "incremental"
    assert request.partition_key is not None
    # the list's job, on this integration's assets and the list's only
    assert harness.defs.resolve_sensor_def("demo_flexpos_sensor").job_name == (
        "sync_heyloyalty_demo_4711"
    )
    prefixes = {key.path[0] for key in request.asset_selection}
    assert prefixes == {"demo_flexpos", "heyloyalty_demo_4711"}
    assert request.tags["memberflow/integration"] == "demo_flexpos"
    assert harness.tick("demo_flexpos").success  # what the requested run does

    quiet = _evaluate(harness, first.cursor)
    assert not quiet.run_requests, [r.tags for r in quiet.run_requests]
    list_key = harness.integration("demo_flexpos").list_key
    assert sorted(e.asset_key.to_user_string() for e in quiet.asset_events) == [
        f"{list_key}/events_delivered",  # in sync: keeps the list's freshness checks green
        f"{list_key}/members_delivered",
    ]
    cursor = json.loads(quiet.cursor)
    assert cursor["high_water_marks"]["customers"] is not None
    assert cursor["high_water_marks"]["journals"] is not None

    customer = copy.deepcopy(harness.sandbox.flexpos.customer(1000))
    customer["FirstName"] = "Åse"
    time.sleep(1.1)  # FlexPOS datetimes have whole seconds (FP-A3)
    harness.sandbox.flexpos.upsert_customer(customer)
    changed = _evaluate(harness, quiet.cursor)
    assert len(changed.run_requests) == 1
    assert "customers" in changed.run_requests[0].tags["memberflow/changed"]


def test_sensor_skips_while_a_run_on_the_same_list_is_in_flight(harness):
    harness.load("demo_flexpos")
    create_run_for_test(
        harness.instance,
        job_name="sync_demo_flexpos",
        status=dg.DagsterRunStatus.STARTED,
        tags={"memberflow/list": harness.integration("demo_flexpos").list_key},
    )
    result = _evaluate(harness, None)
    assert not result.run_requests
    assert "in flight" in (result.skip_message or "")


def test_a_killed_in_process_run_does_not_block_the_sensor_or_the_next_run(harness):
    """Issue 6, item 6: a run whose process died is failed and its pool slot freed at the next
    tick, instead of the list being blocked forever."""
    import subprocess
    import sys

    from memberflow import recovery

    harness.load("demo_flexpos")
    list_key = harness.integration("demo_flexpos").list_key
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a process that ran the run and is gone
    tags = {recovery.HOST_TAG: recovery.hostname(), recovery.PID_TAG: str(child.pid)}
    dead = create_run_for_test(
        harness.instance,
        job_name="sync_demo_flexpos",
        status=dg.DagsterRunStatus.STARTED,
        tags={"memberflow/list": list_key, **tags},
    )
    pool = f"warehouse_{list_key}"
    harness.instance.event_log_storage.set_concurrency_slots(pool, 1)
    harness.instance.event_log_storage.claim_concurrency_slot(pool, dead.run_id, "members")

    result = _evaluate(harness, None)
    assert result.run_requests, result.skip_message  # not "a run is still in flight"
    assert harness.instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    assert harness.instance.event_log_storage.get_concurrency_info(pool).claimed_slots == []
    summary = harness.backfill("demo_flexpos", days=30)
    assert summary.success, summary.failures
    run = harness.instance.get_run_by_id(summary.run_id)
    assert run.tags[recovery.PID_TAG] == str(os.getpid())  # who runs it, for the next recovery


def test_transient_vendor_faults_are_retried_and_nothing_is_lost(harness):
    harness.load("demo_flexpos")
    harness.sandbox.faults.add("members/upsert", 503, times=2)
    harness.sandbox.faults.add("/api/v1/customers", 429, times=1, retry_after=1)
    run = harness.backfill("demo_flexpos")
    assert run.success, run.failures
    members = harness.query("SELECT count(*) FROM members WHERE NOT withdrawn")[0][0]
    assert len(harness.sandbox.heyloyalty.members(LIST)) == members


def test_refused_members_are_quarantined_and_mailed_as_an_error_report(harness, monkeypatch):
    with smtp_inbox(monkeypatch) as received:
        harness.load("demo_flexpos")
        reason = "Member blocked by list policy"
        harness.sandbox.faults.add("members/upsert", 400, times=2, body={"error": reason})
        run = harness.backfill("demo_flexpos")
        assert run.success, run.failures
        assert run.get("members_delivered", "refused") == 2
        refused = harness.query("SELECT reason FROM quarantine WHERE stage = 'deliver'")
        assert [r[0] for r in refused] == [reason, reason]
        deadline = time.time() + 60  # a hang guard: the loop ends as soon as the mail is in
        while not received and time.time() < deadline:
            time.sleep(0.05)
    assert len(received) == 1
    mail = received[0]
    assert mail["To"] == "data-team@example.com"
    body = mail.get_payload()[0].get_payload(decode=True).decode()
    assert "2 member(s) were not imported" in body and reason in body
