"""Admin <-> Flexmail end to end over real sockets (AF1-AF8): unique newsletter relations with
their custom fields, duplicates withheld and reported, contacts only on Flexmail created in Admin
(opt-in on) and not (off), an unsubscribe unticking the box for good, a click delivered three
times making one communication, bounce and summary mails through a local SMTP server, CRM
interests off / per run / on, the monthly call budget and Flexmail's monthly cap stopping a run,
and a forged webhook refused."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest

from app import runner
from app.receiver import build_app, feedback_hooks_of, register
from assets.write_back import feedback_key
from memberflow import landing
from pipelines.list_jobs import sync_job_name
from tests.asgi import served
from tests.harness import Harness
from tests.smtp_inbox import smtp_inbox

pytestmark = pytest.mark.e2e
NAME = "demo_admin_flexmail"
FAST = {"target.poll_seconds": 0.05, "target.requests_per_minute": None}
SHARED = "info@kantoor-peeters.be"


def _admin(harness: Harness) -> Any:
    return harness.sandbox.state.emulator("admin")


def _flex(harness: Harness) -> Any:
    return harness.sandbox.state.emulator("flexmail")


def _load(harness: Harness, **edit: Any) -> None:
    # Admin's own pacing (RateLimit calls a minute, AD-A3) would make the per-relation interest
    # reads take minutes: this test's server allows more
    _admin(harness).settings["RateLimit"] = 100_000
    _flex(harness).import_delay = 0
    _flex(harness).webhooks.retry_delays = (0.05, 0.05, 0.05)
    harness.load(NAME, edit={NAME: {**FAST, **edit}})


def _email(customer: dict[str, Any]) -> str:
    return (customer.get("Email") or "").strip().lower()


def _selected(harness: Harness) -> dict[str, list[dict[str, Any]]]:
    """email -> the active relations with the newsletter box that carry it (AF1)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for customer in _admin(harness).customers.values():
        if customer["IsActive"] and customer["Newsletter"] and _email(customer):
            out.setdefault(_email(customer), []).append(customer)
    return out


def _on_flexmail(harness: Harness) -> set[str]:
    return {c.email for c in _flex(harness).visible()}


def _relation(harness: Harness, email: str) -> dict[str, Any]:
    (customer,) = _selected(harness)[email]
    return customer


def _unique(harness: Harness) -> list[str]:
    return sorted(e for e, rs in _selected(harness).items() if len(rs) == 1)


def _wait(condition: Callable[[], bool], what: str, seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextmanager
def _receiver(harness: Harness) -> Iterator[str]:
    """`memberflow receiver` for the integration, its Flexmail webhooks registered to it."""
    integration = harness.integration(NAME)
    app = build_app({}, feedback=feedback_hooks_of([integration]))
    with served(app) as url:
        lines = register([integration], url)
        assert any("feedback hooks to" in line for line in lines), lines
        yield url


def _feedback_run(harness: Harness) -> dg.ExecuteInProcessResult:
    """What the feedback sensor starts when the receiver stored feedback."""
    assert harness.defs is not None
    integration = harness.integration(NAME)
    job = harness.defs.resolve_job_def(sync_job_name(harness.defs, integration))
    tags = {
        "memberflow/list": integration.list_key,
        "memberflow/integration": NAME,
        "memberflow/changed": "feedback",
    }
    result = job.execute_in_process(
        instance=harness.instance,
        asset_selection=[feedback_key(integration)],
        tags=tags,
        raise_on_error=False,
    )
    assert result.success, runner.failure_messages(result)
    return result


def _pending_feedback(harness: Harness) -> int:
    from memberflow.webhook_store import WebhookStore

    return len(WebhookStore.for_feedback(NAME).pending())


# --- AF1, AF2, AF3: the first sync ------------------------------------------------------------


def test_first_sync_unique_relations_fields_duplicates_and_flexmail_only_contacts(harness):
    _load(harness, **{"target.bulk_threshold": 50})
    flexmail_only = _on_flexmail(harness)
    run = harness.tick(NAME)
    assert run.success, run.failures
    unique, selected = _unique(harness), _selected(harness)
    shared = sorted(e for e, rs in selected.items() if len(rs) > 1)
    assert SHARED in shared
    on_list = _on_flexmail(harness)
    assert set(unique) <= on_list and not set(shared) & on_list
    assert run.get("members_delivered", "imports") == 1  # FM-A8: a first sync over the threshold
    # AF2: names, language through the map, the custom fields under their placeholders
    email = next(
        e
        for e in unique
        if _admin(harness).extradata[_relation(harness, e)["CustomerId"]]["acc_software"]
    )
    customer = _relation(harness, email)
    extra = _admin(harness).extradata[customer["CustomerId"]]
    contact = _flex(harness).contact(email)
    assert contact["name"] == customer["Name"] and contact["first_name"] == customer["Firstname"]
    assert contact["language"] == {"N": "nl", "F": "fr", "E": "en", "D": "de"}[customer["Language"]]
    assert contact["custom_fields"]["acc_software"] == extra["acc_software"]
    assert contact["custom_fields"]["klant_sinds"] == extra["klant_sinds"][:10]
    # AF1: the shared addresses, as an asset check and a report the office can work through
    check = _check_result(harness, run.run_id, "no_shared_match_keys")
    assert check is not None and not check.passed
    report = Path(landing.data_dir()) / "reports" / harness.integration(NAME).list_key
    text = (report / "shared_match_keys.csv").read_text()
    assert SHARED in text and str(selected[SHARED][0]["CustomerId"]) in text
    # AF3: each contact only on Flexmail is now an Admin relation with the newsletter box
    created = {
        _email(c): c for c in _admin(harness).customers.values() if _email(c) in flexmail_only
    }
    assert set(created) == flexmail_only - {"pieter.janssens@janssens-transport.be"}  # blacklisted
    assert all(c["Newsletter"] and c["CustomerCrmType"] == 3 for c in created.values())
    # ... and comes back through the change log as a relation, never as a second contact
    contacts_before = len(_flex(harness).contacts)
    again = harness.tick(NAME)
    assert again.success, again.failures
    assert again.get("members_delivered", "created") == 0
    assert len(_flex(harness).contacts) == contacts_before
    assert Counter(_email(c) for c in _admin(harness).customers.values())[next(iter(created))] == 1
    # a tick with nothing new spends a handful of calls on either side
    quiet = harness.tick(NAME)
    assert quiet.get("members_delivered", "sent_this_run") == 0
    assert quiet.get("members_delivered", "api_calls") <= 3


def _check_result(harness: Harness, run_id: str, name: str) -> Any:
    records = harness.instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    for record in records:
        evaluation = record.dagster_event.event_specific_data
        if evaluation.check_name == name:
            return evaluation
    return None


def test_with_opt_in_off_flexmail_feedback_stays_on_flexmail(harness):
    _load(harness, **{"feedback.write_back": False})
    flexmail_only = _on_flexmail(harness)
    assert harness.tick(NAME).success
    assert not {_email(c) for c in _admin(harness).customers.values()} & flexmail_only
    email = _unique(harness)[0]
    _flex(harness).unsubscribe(email)  # no receiver: found by the listing, then the write
    run = harness.tick(NAME)
    assert run.success, run.failures
    assert _relation(harness, email)["Newsletter"] is True
    assert harness.query(
        "SELECT d.decided FROM feedback f JOIN feedback_decisions d USING (key)"
        " WHERE f.kind = 'unsubscribed' AND f.email = ?",
        [email],
    ) == [("write-back off",)]


# --- AF4, AF5: feedback by webhook ------------------------------------------------------------


def test_an_unsubscribe_unticks_the_box_and_the_relation_is_never_readded(harness):
    _load(harness)
    assert harness.tick(NAME).success
    email = _unique(harness)[1]
    cid = _relation(harness, email)["CustomerId"]
    with _receiver(harness) as url:
        forged = httpx.post(
            f"{url}/webhooks/{NAME}/feedback",
            json={
                "event_name": "contact.unsubscribed",
                "verification_token": "guess",
                "occurred_at": "2026-11-30T10:00:00Z",
                "data": {"contact_id": 1, "email": email},
            },
        )
        assert forged.status_code == 401
        _flex(harness).unsubscribe(email)
        _wait(lambda: _pending_feedback(harness) == 1, "the unsubscribe webhook")
    _feedback_run(harness)
    assert _admin(harness).customers[cid]["Newsletter"] is False
    run = harness.tick(NAME)  # the unticked box comes back through the change log
    assert run.success, run.failures
    assert email not in _on_flexmail(harness)
    # the office ticks the box again: Flexmail keeps its blacklist, memberflow never lifts it
    _admin(harness).update_relation(cid, {"Newsletter": True})
    posts = _flex(harness).request_count("POST /contacts")
    run = harness.tick(NAME)
    assert run.success, run.failures
    assert run.get("members_delivered", "created") == 0
    # memberflow's own guard, not Flexmail's blacklist: the contact was not even tried
    assert run.get("members_delivered", "skipped_unsubscribed") == 1
    assert _flex(harness).request_count("POST /contacts") == posts
    assert email not in _on_flexmail(harness) and email in _flex(harness).blacklist


def test_a_click_delivered_three_times_makes_one_communication(harness):
    _load(harness)
    assert harness.tick(NAME).success
    email = _unique(harness)[2]
    cid = _relation(harness, email)["CustomerId"]
    flex = _flex(harness)
    with _receiver(harness) as url:
        flex.click(email, 7001, "Nieuwsbrief december", "https://kantoor.be/btw-2027")
        flex.redeliver("last", 2)
        _wait(lambda: sum(d.outcome == "delivered" for d in flex.deliveries) == 3, "3 deliveries")
        # the same event once more, serialised another way (a vendor's retry need not repeat the
        # bytes): a new body for the receiver, the same feedback key for the warehouse
        event = json.loads(flex.deliveries[-1].body)
        again = json.dumps(event, indent=2, sort_keys=True).encode()
        answer = httpx.post(
            f"{url}/webhooks/{NAME}/feedback",
            content=again,
            headers={"Content-Type": "application/json"},
        )
        assert answer.json() == {"stored": 1}
    _feedback_run(harness)
    harness.tick(NAME)
    mine = [c for c in _admin(harness).communications.values() if c["CustomerId"] == cid]
    assert len(mine) == 1
    assert mine[0]["Description"] == "Click: https://kantoor.be/btw-2027"
    assert mine[0]["Subject"] == "Nieuwsbrief december"
    # stored twice (the byte-identical redeliveries were answered `stored: 0`), one feedback row
    assert harness.query("SELECT seen FROM feedback WHERE kind = 'clicked'") == [(2,)]
    assert _admin(harness).request_counts["POST communications"] == 1


# --- AF6: bounces and the summary mail ---------------------------------------------------------


def _body(message: Any) -> str:
    part = message.get_payload()[0] if message.is_multipart() else message
    return part.get_payload(decode=True).decode()


def test_bounces_are_mailed_each_run_and_a_summary_after_a_full_sync(harness, monkeypatch):
    _load(harness)
    with smtp_inbox(monkeypatch) as received:
        assert harness.tick(NAME).success
        _wait(lambda: len(received) == 2, "the bounce mail and the summary")
        by_to = {m["To"]: m for m in received}
        summary = _body(by_to["owner@boekhouding-demo.be"])
        assert "full sync" in summary and "duplicates" in summary and "calls this month" in summary
        assert "marie.lambert@lambert-conseil.be" in _body(by_to["office@boekhouding-demo.be"])
        email = _unique(harness)[3]
        _flex(harness).bounce(email, "hard", 7002)
        received.clear()
        assert harness.tick(NAME).success  # an incremental run: bounces, no summary
        _wait(lambda: len(received) == 1, "the second bounce mail")
    mail = _body(received[0])
    assert email in mail and "marie.lambert" not in mail and received[0]["To"].startswith("office")


# --- AF6: CRM interests --------------------------------------------------------------------------


def _admin_interests(harness: Harness, cid: int) -> set[str]:
    """The relation's CRM interests that Flexmail has an interest of the same name for (FM-A7;
    the others are dropped from the member and reported)."""
    admin = _admin(harness)
    known = {i["name"] for i in _flex(harness).interests.values()}
    return {admin.interests[i]["Description"] for i in admin.links.get(cid, [])} & known


def test_crm_interests_off_then_one_manual_run_then_on(harness):
    _load(harness)
    assert harness.tick(NAME).success
    admin, flex = _admin(harness), _flex(harness)
    email = next(
        e
        for e in _unique(harness)
        if _admin_interests(harness, _relation(harness, e)["CustomerId"])
    )
    cid = _relation(harness, email)["CustomerId"]
    assert flex.interest_names(email) == set()  # off: not read, not sent
    manual = harness.tick(
        NAME, run_config=runner.optional_entities_config(harness.integration(NAME))
    )
    assert manual.success, manual.failures
    assert flex.interest_names(email) == _admin_interests(harness, cid)
    assert harness.tick(NAME).get("interests_raw", "skipped")  # automatic runs leave them
    assert flex.interest_names(email) == _admin_interests(harness, cid)
    _load(harness, **{"source.crm_interests": True, "source.interests_every_minutes": 1})
    dropped = admin.links[cid].pop()
    time.sleep(0)  # the scan is due: interests_every_minutes has passed since no scan of this file
    run = harness.tick(NAME, full=True)
    assert run.success, run.failures
    assert admin.interests[dropped]["Description"] not in flex.interest_names(email)
    assert flex.interest_names(email) == _admin_interests(harness, cid)


# --- AF8: the call budget ------------------------------------------------------------------------


def test_the_monthly_budget_stops_a_run_before_sending(harness):
    _load(harness)
    first = harness.tick(NAME)
    assert first.success
    used = first.get("members_delivered", "api_calls_this_month")
    _load(harness, **{"target.monthly_call_budget": used + 5})
    for email in _unique(harness)[:8]:
        cid = _relation(harness, email)["CustomerId"]
        _admin(harness).update_relation(cid, {"Firstname": "Gewijzigd"})
    run = harness.tick(NAME)
    assert not run.success
    (message,) = [m for m in run.failures if "members_delivered" in m]
    assert "monthly budget" in message and "Nothing was sent" in message
    assert all(_flex(harness).contact(e)["first_name"] != "Gewijzigd" for e in _unique(harness)[:8])


def test_flexmails_monthly_cap_is_not_retried(harness):
    _load(harness)
    assert harness.tick(NAME).success
    flex = _flex(harness)
    flex.set_monthly(cap=flex.monthly_used[flex.month()])
    before = sum(flex.requests.values())
    run = harness.tick(NAME)
    assert not run.success
    assert any("Monthly API call limit reached" in m for m in run.failures), run.failures
    assert sum(flex.requests.values()) - before <= 2  # one refused call per step, no retries


# --- AF2, AF8 up front ---------------------------------------------------------------------


def test_check_verifies_both_ends_the_placeholders_and_the_months_budget(harness, monkeypatch):
    from click.testing import CliRunner

    from app.cli import main

    monkeypatch.setenv("MEMBERFLOW_INTEGRATIONS", str(harness.tmp / "integrations"))
    _load(harness)
    passed = CliRunner().invoke(main, ["check", NAME])
    assert passed.exit_code == 0, passed.output
    assert "PASS" in passed.output and "/month" in passed.output, passed.output
    # a custom field mapped to a placeholder Flexmail does not have: FAIL before any send
    _load(harness, **{"mapping.customers.cupboard": "CupboardNumber"})
    failed = CliRunner().invoke(main, ["check", NAME])
    assert failed.exit_code == 1 and "cupboard" in failed.output, failed.output
    run = harness.tick(NAME)
    assert not run.success and not _flex(harness).request_count("POST /contacts")
