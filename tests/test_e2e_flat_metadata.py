"""Plottable metadata: breakdowns as flat int keys Dagster can chart over runs, and each
integration's share on the assets of a list fed by two (issue 11)."""

from __future__ import annotations

import pytest

from assets.metadata import breakdown, label

pytestmark = pytest.mark.e2e
SOURCES = ("demo_flexpos", "demo_ticketmaster")


def _flat(meta: dict, prefix: str) -> dict[str, object]:
    return {k: v for k, v in meta.items() if k.startswith(prefix)}


def _asset(run, suffix: str) -> dict:
    return next(meta for name, meta in run.assets.items() if name.endswith(suffix))


def test_breakdowns_are_flat_int_keys_and_a_shared_list_is_split_per_integration(harness):
    harness.load(*SOURCES)
    assert harness.backfill("demo_flexpos", days=14).success
    run = harness.backfill("demo_ticketmaster", days=14)
    assert run.success, run.failures

    extract = _asset(run, "customers_raw")
    calls = _flat(extract, "api_calls_this_run/")
    assert calls and all(type(v) is int for v in calls.values())
    assert sum(calls.values()) == extract["api_calls"]  # the same calls, endpoint by endpoint

    delivered = _asset(run, "members_delivered")
    for outcome in ("created", "updated", "removed", "unchanged", "refused"):
        assert type(delivered[f"members_{outcome}_this_run"]) is int
    assert delivered["members_created_this_run"] == delivered["created"]
    assert sum(_flat(delivered, "api_calls_this_run/").values()) == delivered["api_calls"]
    for outcome in ("created", "updated", "removed", "unchanged"):
        shares = [delivered[f"{name}/members_{outcome}_this_run"] for name in SOURCES]
        assert all(type(n) is int for n in shares)
        # a member merged from both sources counts under each: never fewer than the total
        assert sum(shares) >= delivered[f"members_{outcome}_this_run"]
    # FlexPOS's members were all sent by the first run; this run created Ticketmaster's
    assert delivered["demo_ticketmaster/members_created_this_run"] > 0
    assert delivered["demo_flexpos/members_created_this_run"] == 0
    assert delivered["demo_flexpos/members_unchanged_this_run"] > 0

    events = _asset(run, "events_delivered")
    sent = [events[f"{name}/events_sent_this_run"] for name in SOURCES]
    assert sum(sent) == events["sent_this_run"]  # an event comes from one integration
    assert sent[1] > 0  # this run sent Ticketmaster's orders

    members = _asset(run, "4711/members")
    rows = [members[f"{name}/member_rows"] for name in SOURCES]
    assert all(n > 0 for n in rows) and sum(rows) >= members["dagster/row_count"]


def test_a_list_fed_by_one_integration_has_no_per_integration_keys(harness):
    harness.load("demo_flexpos")
    run = harness.backfill("demo_flexpos", days=3)
    assert run.success, run.failures
    delivered = _asset(run, "members_delivered")
    assert delivered["members_created_this_run"] > 0
    assert not _flat(delivered, "demo_flexpos/")
    staged = _asset(run, "customers_staged")
    reasons = _flat(staged, "quarantined_this_run/")
    assert sum(reasons.values()) == staged["quarantined"]


def test_labels_are_key_segments_and_meeting_labels_add_up():
    assert label("email: invalid format") == "email.invalid_format"
    assert label("members/import") == "members/import"
    assert label("") == "unknown"
    assert breakdown("q", {"a b": 1, "a_b": 2, "c": 3}) == {"q/a_b": 3, "q/c": 3}
