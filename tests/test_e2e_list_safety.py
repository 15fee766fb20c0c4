"""End-to-end guards of the list's own state: an unsubscribe made while a run sends is never
undone (issue 6, item 7), and a list that lost members gets them back (item 8).

The unsubscribes happen *during* delivery: a thin wrapper around the real Heyloyalty client
(every call still goes over HTTP to the sandbox) unsubscribes members on the sandbox list at the
moment the run sends its first upsert.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from typing import Any

import dagster as dg
import pytest

from memberflow import normalize
from resources.heyloyalty import HeyloyaltyClient, HeyloyaltyResource
from tests.harness import lower

pytestmark = pytest.mark.e2e
LIST = 4711
TRACKING = 99


def _on_first_upsert(monkeypatch, act: Callable[[set[str]], None]) -> set[str]:
    """Call `act(looked_up)` once, when the run's first upsert starts, before it is sent.

    `looked_up` holds the emails whose state delivery has read so far (find_member): those are
    in the one-round-trip window no client can close, so a test leaves them out.
    """
    lock = threading.Lock()
    looked_up: set[str] = set()
    fired: list[bool] = []
    build = HeyloyaltyResource.client

    def client(self: HeyloyaltyResource) -> HeyloyaltyClient:
        real = build(self)
        find, find_all, upsert = real.find_member, real.find_members, real.upsert_member

        def find_member(field: str, value: str) -> Any:
            with lock:
                looked_up.add(lower(value))
            return find(field, value)

        def find_members(field: str, values: list[str]) -> Any:  # a chunk of updates
            with lock:
                looked_up.update(lower(v) for v in values)
            return find_all(field, values)

        def upsert_member(*args: Any, **kwargs: Any) -> Any:
            with lock:
                if not fired:
                    fired.append(True)
                    act(set(looked_up))
            return upsert(*args, **kwargs)

        real.find_member, real.upsert_member = find_member, upsert_member  # type: ignore[method-assign]
        real.find_members = find_members  # type: ignore[method-assign]
        return real

    monkeypatch.setattr(HeyloyaltyResource, "client", client)
    return looked_up


def _change_city(harness, emails: list[str]) -> None:
    by_email = {lower(c.get("Email")): c for c in harness.sandbox.data.flexpos_customers}
    for email in emails:
        customer = harness.sandbox.flexpos.customer(by_email[email]["CustomerId"])
        changed = copy.deepcopy(customer)
        changed["City"] = "Svendborg"
        harness.sandbox.flexpos.upsert_customer(changed)


def test_members_unsubscribing_while_updates_are_sent_stay_unsubscribed(harness, monkeypatch):
    edit = {"import.reimport_unsubscribed": True}  # the permissive setting: still no undo
    # updates are read a chunk at a time right before their upserts: the first chunk's members
    # are in the window no client can close, the later chunks' are read after the unsubscribes
    monkeypatch.setattr(HeyloyaltyClient, "guard_batch", 5)
    harness.load("demo_flexpos", edit={"demo_flexpos": edit})
    assert harness.backfill("demo_flexpos").success
    changed = sorted(lower(m["email"]) for m in harness.sandbox.heyloyalty.members(LIST))[:30]
    _change_city(harness, changed)
    unsubscribed: set[str] = set()

    def unsubscribe_the_rest(looked_up: set[str]) -> None:
        for email in sorted(set(changed) - looked_up)[:20]:
            harness.sandbox.heyloyalty.unsubscribe(LIST, email=email)
            unsubscribed.add(email)

    _on_first_upsert(monkeypatch, unsubscribe_the_rest)
    run = harness.tick("demo_flexpos")
    assert run.success, run.failures

    assert len(unsubscribed) == 20
    still = {e: harness.sandbox.heyloyalty.member_by_email(LIST, e)["status"] for e in changed}
    assert all(still[e] == "unsubscribed" for e in unsubscribed), still
    assert run.get("members_delivered", "unsubscribed_meanwhile") == 20
    assert run.get("members_delivered", "updated") == 10
    # the price: one GET per chunk of 5 updates, measured (each member read before its write)
    calls = run.get("members_delivered", "unsubscribe_guard_calls")
    assert calls["checks_before_update"] == 30
    assert run.get("members_delivered", "guard_reads") == 6
    assert calls["refresh_calls"] == 0  # no creates, no refresh


def test_a_member_who_appears_and_unsubscribes_during_an_import_is_not_touched(
    harness, monkeypatch
):
    monkeypatch.setattr(HeyloyaltyClient, "batch_size", 20)  # creates go out in match-key order
    harness.load("demo_flexpos")
    emails = {
        normalize.email(c.get("Email") or "")[0] for c in harness.sandbox.data.flexpos_customers
    }
    late = sorted(e for e in emails if e)[-3:]  # in the last chunk of creates

    def sign_up_and_leave(_: set[str]) -> None:
        for email in late:  # e.g. a sign-up form, then the unsubscribe link
            harness.sandbox.heyloyalty.add_member(LIST, {"email": email})
            harness.sandbox.heyloyalty.unsubscribe(LIST, email=email)

    _on_first_upsert(monkeypatch, sign_up_and_leave)
    run = harness.backfill("demo_flexpos")
    assert run.success, run.failures

    assert (
        harness.query("SELECT count(*) FROM members WHERE list_contains(?, match_key)", [late])[0][
            0
        ]
        == 3
    )
    for email in late:
        assert harness.sandbox.heyloyalty.member_by_email(LIST, email)["status"] == "unsubscribed"
    touched = {lower(u["email"]) for u in harness.sandbox.heyloyalty.upserts}
    assert not touched & set(late)
    assert run.get("members_delivered", "unsubscribed_meanwhile") == 3
    created = run.get("members_delivered", "created")
    calls = run.get("members_delivered", "unsubscribe_guard_calls")
    assert calls["refresh_calls"] >= -(-created // 20)  # one read per chunk of 20 creates
    assert calls["checks_before_update"] == 3  # only the members that appeared meanwhile


def _checks(harness, run_id: str) -> dict[str, bool]:
    """The run's check verdicts on the list's delivered assets, by check name."""
    found = {}
    for entry in harness.instance.all_logs(
        run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION
    ):
        evaluation = entry.dagster_event.event_specific_data
        if evaluation.asset_key.path[-1].endswith("_delivered"):
            found[evaluation.check_name] = evaluation.passed
    return found


def _empty_the_list(harness) -> None:
    """Delete every member through the list's HTTP API, as a restore or a clean-up would."""
    client = harness.integration("demo_flexpos").target.resource().client()
    try:
        for member in harness.sandbox.heyloyalty.members(LIST):
            client.remove_member(member["id"])
    finally:
        client.close()


def test_an_emptied_list_is_noticed_and_refilled_with_members_and_events(harness):
    harness.load("demo_flexpos")
    first = harness.backfill("demo_flexpos")
    assert first.success, first.failures
    before = {lower(m["email"]) for m in harness.sandbox.heyloyalty.members(LIST)}
    events = len(harness.sandbox.heyloyalty.events(TRACKING))
    assert before and events

    _empty_the_list(harness)
    assert harness.sandbox.heyloyalty.members(LIST) == []
    run = harness.tick("demo_flexpos")
    assert run.success, run.failures

    after = [lower(m["email"]) for m in harness.sandbox.heyloyalty.members(LIST)]
    assert sorted(after) == sorted(before)  # every member back, once
    assert run.get("members_delivered", "missing_on_list") == len(before)
    assert run.get("members_delivered", "recreated") == len(before)
    assert run.get("members_delivered", "created") == len(before)
    assert run.get("members_delivered", "dagster/row_count") == len(before)
    assert run.get("events_delivered", "sent") == events  # the lost activity, sent once more
    assert len(harness.sandbox.heyloyalty.events(TRACKING)) == 2 * events
    assert _checks(harness, run.run_id) == {
        "list_kept_its_members": False,  # yellow: the list had lost them
        "synced_recently": True,
        "no_uncertain_event_batches": True,
    }

    quiet = harness.tick("demo_flexpos")
    assert quiet.success, quiet.failures
    assert _checks(harness, quiet.run_id)["list_kept_its_members"] is True
    assert quiet.get("members_delivered", "missing_on_list") == 0
    assert quiet.get("members_delivered", "sent_this_run") == 0
    assert quiet.get("members_delivered", "dagster/row_count") == len(before)  # not "0 sent"
    assert quiet.get("events_delivered", "sent") == 0


def test_previews_and_samples_never_show_a_whole_email(harness):
    harness.load("demo_flexpos")
    harness.sandbox.heyloyalty.lists[LIST].fields["sex"]["options"] = {"1": "Mand"}
    run = harness.backfill("demo_flexpos")
    assert run.success, run.failures
    shown = str(run.get("members", "preview")) + str(
        run.get("members_delivered", "fields_dropped_sample")
    )
    assert "***@" in shown
    for member in harness.sandbox.heyloyalty.members(LIST):
        assert lower(member["email"]) not in shown.lower()
