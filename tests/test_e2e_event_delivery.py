"""Event delivery in real Dagster runs against the sandbox: a throttled import is retried, the
retry is in the run's own log, and every event lands once; an import whose answer is uncertain is
held, reported (metadata, a failing check, a warning) and resent only when a user asks
(issue 6 items 4 and 10)."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e
TRACKING = 99
OP = "heyloyalty_demo_4711__events_delivered"


def on_list(harness) -> int:
    """Events in the list's activity feed (two sales may look alike, so they are counted)."""
    return len(harness.sandbox.heyloyalty.events(TRACKING))


def run_log(harness, run_id: str) -> list[str]:
    return [e.user_message for e in harness.instance.all_logs(run_id) if e.user_message]


def uncertain_check_passed(harness, run_id: str) -> bool:
    """The run's no_uncertain_event_batches check, as the UI shows it."""
    [passed] = [
        e.asset_check_evaluation.passed
        for e in harness.instance.all_logs(run_id)
        if e.asset_check_evaluation is not None
        and e.asset_check_evaluation.check_name == "no_uncertain_event_batches"
    ]
    return passed


def test_a_throttled_import_is_retried_in_the_run_log_and_sent_once(harness):
    harness.load("demo_flexpos")
    harness.sandbox.faults.add("/transaction/import/", 429, times=1, retry_after=0.2)
    harness.sandbox.faults.add("/members/upsert", 429, times=1, retry_after=0.2)
    run = harness.backfill("demo_flexpos")
    assert run.success, run.failures

    log = run_log(harness, run.run_id)
    retry = "heyloyalty POST /heyloyalty/bi/api/transaction/import/99: 429 Too Many Requests"
    assert [line for line in log if line.startswith(retry)] == [
        f"{retry}, waiting 0.2 s (try 2 of 5)"
    ]
    # upserts run in a thread pool; their retries reach the run's log all the same
    upsert = "heyloyalty POST /heyloyalty/loyalty/v1/lists/4711/members/upsert: 429 Too Many"
    assert sum(line.startswith(upsert) for line in log) == 1
    assert run.get("events_delivered", "api_throttled") == 1
    assert run.get("events_delivered", "api_retries") == 1

    events = harness.query("SELECT count(*) FROM tracking_events")[0][0]
    sent = run.get("events_delivered", "sent_this_run")
    assert 0 < sent == events == on_list(harness)  # each once: none missing, none twice
    acked = harness.query("SELECT count(*) FROM event_sync WHERE status = 'sent'")[0][0]
    assert run.get("events_delivered", "dagster/row_count") == acked == sent
    assert uncertain_check_passed(harness, run.run_id)


def test_an_uncertain_import_is_held_reported_and_resent_only_on_request(harness):
    harness.load("demo_flexpos")
    harness.sandbox.faults.add("/transaction/import/", 502, times=1)  # the list stored nothing
    first = harness.backfill("demo_flexpos")
    assert first.success, first.failures
    held = first.get("events_delivered", "held_uncertain")
    assert 0 < held <= 1000 and first.get("events_delivered", "uncertain_this_run") == held
    assert first.get("events_delivered", "held_uncertain_sample")
    assert not uncertain_check_passed(harness, first.run_id)
    assert any("resend_uncertain: true" in line for line in run_log(harness, first.run_id))

    quiet = harness.tick("demo_flexpos")  # a plain run does not resend what may be on the list
    assert quiet.success, quiet.failures
    assert quiet.get("events_delivered", "held_uncertain") == held
    assert quiet.get("events_delivered", "released_for_resend_this_run") == 0

    config = {"ops": {OP: {"config": {"resend_uncertain": True}}}}
    resent = harness.tick("demo_flexpos", run_config=config)
    assert resent.success, resent.failures
    assert resent.get("events_delivered", "released_for_resend_this_run") == held
    assert resent.get("events_delivered", "sent_this_run") == held
    assert resent.get("events_delivered", "held_uncertain") == 0
    assert uncertain_check_passed(harness, resent.run_id)

    events = harness.query("SELECT count(*) FROM tracking_events")[0][0]
    assert on_list(harness) == events  # each once: none missing, none twice
