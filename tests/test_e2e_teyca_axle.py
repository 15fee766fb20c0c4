"""Teyca -> Axle-CRM end to end over real sockets (TX1-TX5): first import, merge by phone on and
off, consent and push, date segments on a fixed clock, cards re-read after a webhook, the daily
budget warning, and `memberflow check`."""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest

from tests.asgi import served
from tests.harness import Harness

pytestmark = pytest.mark.e2e
NAME = "demo_teyca_axle"
CONSENT = {"1", "true", "yes", "да", "confirmed"}


def _e164(phone: Any) -> str:
    return "+" + str(phone)


def _clients(harness: Harness) -> list[dict[str, Any]]:
    return harness.sandbox.state.emulator("axle").clients()


def _passes(harness: Harness) -> dict[int, dict[str, Any]]:
    return dict(harness.sandbox.state.emulator("teyca").passes)


def test_first_import_merges_cards_by_phone_with_consent_push_and_segments(harness, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_TODAY", "2026-06-15")
    harness.load(NAME)
    run = harness.tick(NAME)
    assert run.success, run.failures

    passes = _passes(harness)
    clients = _clients(harness)
    phones = Counter(_e164(p["phone"]) for p in passes.values())
    assert len(clients) == len(phones)  # TX2: one client per phone
    assert len({c["phone"] for c in clients}) == len(clients)
    shared = [phone for phone, n in phones.items() if n > 1]
    assert shared, "the sandbox data must hold cards sharing a phone"
    merged = next(c for c in clients if c["phone"] == shared[0])
    wanted = sorted(p["user_id"] for p in passes.values() if _e164(p["phone"]) == shared[0])
    assert sorted(card["user_id"] for card in merged["cards"]) == wanted

    by_phone = {c["phone"]: c for c in clients}
    for card in passes.values():
        client = by_phone[_e164(card["phone"])]
        if phones[_e164(card["phone"])] > 1:
            continue  # the survivor's flags; checked for single cards only
        consent = str(card.get("key1") or "").strip().lower() in CONSENT
        assert client["consent_mailing"] is consent, card  # TX4 / TY-A6
        assert client["push_allowed"] is bool(card.get("o_s")), card
        if not consent:  # never in a mailing segment
            assert not {"birthday_this_month", "birthday_next_7_days"} & set(client["tags"])


def test_a_second_tick_sends_nothing_and_switching_merge_off_and_on_leaves_no_duplicates(
    harness,
):
    harness.load(NAME)
    assert harness.tick(NAME).success
    axle = harness.sandbox.state.emulator("axle")
    merged_count = len(axle.clients())
    before = axle.request_count("POST")
    again = harness.tick(NAME)
    assert again.success, again.failures
    assert axle.request_count("POST") == before  # X2: nothing changed, nothing sent

    harness.load(NAME, edit={NAME: {"merge_by_phone": False}})
    off = harness.tick(NAME)
    assert off.success, off.failures
    passes = _passes(harness)
    external = [c["external_id"] for c in axle.clients()]
    assert sorted(external) == sorted(f"teyca:{uid}" for uid in passes)  # one client per card
    assert len(external) == len(set(external))

    harness.load(NAME, edit={NAME: {"merge_by_phone": True}})
    on = harness.tick(NAME)
    assert on.success, on.failures
    assert len(axle.clients()) == merged_count  # duplicates removed again


@contextmanager
def _receiver(harness: Harness) -> Iterator[str]:
    """`memberflow receiver`'s app for the loaded integrations, on a free local port."""
    from app.receiver import build_app, capabilities_of

    with served(build_app(capabilities_of(harness.integrations))) as url:
        yield url


def _sensor_run_config(harness: Harness) -> dict[str, Any] | None:
    import dagster as dg

    sensor = harness.defs.get_sensor_def(f"{NAME}_webhook_sensor")
    with dg.build_sensor_context(
        instance=harness.instance,
        resources=harness.defs.resources,
        repository_def=harness.defs.get_repository_def(),
    ) as context:
        result = sensor.evaluate_tick(context)
    return result.run_requests[0].run_config if result.run_requests else None


def test_a_card_registered_at_teyca_reaches_axle_through_the_webhook_receiver(harness):
    from app.receiver import register
    from memberflow.webhook_store import WebhookStore

    harness.load(NAME, edit={NAME: {"source.webhooks.enabled": True}})
    first = harness.tick(NAME)
    assert first.success, first.failures
    teyca = harness.sandbox.state.emulator("teyca")
    axle = harness.sandbox.state.emulator("axle")
    store = WebhookStore.for_integration(NAME)
    with _receiver(harness) as url:
        lines = register(harness.integrations, url)
        assert "create, update, delete" in lines[0].lower() or "none new" not in lines[0]
        card = teyca.register_card(
            {
                "first_name": "Анна",
                "last_name": "Иванова",
                "phone": "79990001122",
                "email": "anna@example.ru",
                "key1": "да",
                "o_s": "ios",
                "template": "Макет1",
            }
        )
        teyca.wait_for_deliveries()
        assert [e.record_id for e in store.pending()] == [str(card["user_id"])]

        # forged, replayed and oversized deliveries are refused and store nothing
        hook = f"{url}/webhooks/{NAME}"
        body = json.dumps({"type": "UPDATE", "pass": {**card, "first_name": "Мария"}}).encode()
        assert httpx.post(hook, content=body, headers={"Authorization": "wrong"}).status_code == 401
        secret = {"Authorization": os.environ["TEYCA_WEBHOOK_SECRET"]}
        assert httpx.post(hook, content=body, headers=secret).status_code == 200
        replay = httpx.post(hook, content=body, headers=secret)  # stored once, still a 2xx
        assert replay.status_code == 200 and replay.json() == {"stored": 0}
        huge = b'{"type": "UPDATE", "pass": {"x": "' + b"a" * 400_000 + b'"}}'
        assert httpx.post(hook, content=huge, headers=secret).status_code == 413
        assert len(store.pending()) == 2

    config = _sensor_run_config(harness)
    assert config is not None  # the sensor turns stored events into a run
    run = harness.tick(NAME, run_config=config)
    assert run.success, run.failures
    assert store.pending() == []
    client = axle.client_by_phone("+79990001122")
    assert client is not None and client["first_name"] == "Анна"  # re-read, not the forged name
    assert client["consent_mailing"] is True and client["push_allowed"] is True
    raw = run.assets[f"{NAME}/passes_raw"]
    assert raw["webhook_events"] == 2 and raw["records_reread"] >= 1


def test_without_webhooks_a_scan_every_minute_warns_about_the_daily_cap(harness):
    harness.load(NAME, edit={NAME: {"schedule.interval_minutes": 1, "source.page_size": 10}})
    run = harness.tick(NAME)
    assert run.success, run.failures
    warnings = run.assets[f"{NAME}/passes_raw"].get("run_warnings")
    assert warnings and "5000" in str(warnings)
    budget = run.assets[f"{NAME}/passes_raw"]["rate_budget_day"]
    assert "of 5000 calls used in the last day" in budget and "by this run" in budget


def test_check_passes_for_the_demo_and_fails_on_a_wrong_account(harness, monkeypatch):
    from click.testing import CliRunner

    from app.cli import main

    monkeypatch.setenv("MEMBERFLOW_INTEGRATIONS", str(harness.tmp / "integrations"))
    harness.load(NAME)
    passed = CliRunner().invoke(main, ["check", NAME])
    assert passed.exit_code == 0, passed.output
    assert "FAIL" not in passed.output and "5000/day" in passed.output
    harness.load(NAME, edit={NAME: {"target.account": "acc_other"}})
    failed = CliRunner().invoke(main, ["check", NAME])
    assert failed.exit_code == 1, failed.output
    assert "acc_other" in failed.output and "acc_demo" in failed.output


def test_date_segments_follow_a_fixed_clock_and_send_only_who_joined_or_left(harness, monkeypatch):
    harness.load(NAME)
    teyca = harness.sandbox.state.emulator("teyca")
    phone = "+79990003344"
    teyca.register_card(
        {
            "first_name": "Пётр",
            "phone": phone.lstrip("+"),
            "birthday": "16.06.1990",
            "key1": "confirmed",
            "o_s": "android",
            "created_at": "2026-06-07 10:00:00",
            "date_last": "2026-04-11 01:30:00",  # Moscow time: 2026-04-10 22:30 UTC
            "template": "Макет1",
        }
    )
    delivered = "axle_acc_demo_clients/members_delivered"

    def day(iso: str) -> tuple[set[str], dict]:
        monkeypatch.setenv("MEMBERFLOW_TODAY", iso)
        run = harness.tick(NAME)
        assert run.success, run.failures
        client = harness.sandbox.state.emulator("axle").client_by_phone(phone)
        return set(client["tags"]), run.assets[delivered]

    tags, _ = day("2026-06-09")
    assert "birthday_this_month" in tags and "birthday_next_7_days" not in tags
    assert "card_installed_14_days" in tags  # installed two days ago, push allowed
    assert "no_visit_60_days" not in tags  # 59 days since the visit, on Moscow's calendar

    tags, report = day("2026-06-10")  # 16 June is today + 6: the birthday enters the window
    assert "birthday_next_7_days" in tags
    assert "no_visit_60_days" in tags  # 60 days since 11 April (Moscow), not 61 (UTC)
    assert 1 <= report["updated"] < report["unchanged"]  # only who joined or left is sent

    tags, _ = day("2026-06-16")  # the birthday itself: still in
    assert "birthday_next_7_days" in tags
    tags, _ = day("2026-06-17")  # the day after: it leaves
    assert "birthday_next_7_days" not in tags and "birthday_this_month" in tags
    tags, _ = day("2026-06-22")  # installed 15 days ago: out of the 14-day window
    assert "card_installed_14_days" not in tags


def test_a_consent_cleared_at_teyca_reaches_axle_as_none(harness):
    harness.load(NAME)
    assert harness.tick(NAME).success
    teyca = harness.sandbox.state.emulator("teyca")
    passes = _passes(harness)
    phones = Counter(_e164(p["phone"]) for p in passes.values())
    card = next(
        p
        for p in passes.values()
        if str(p.get("key1") or "").strip().lower() in CONSENT and phones[_e164(p["phone"])] == 1
    )
    axle = harness.sandbox.state.emulator("axle")
    assert axle.client_by_phone(_e164(card["phone"]))["consent_mailing"] is True
    teyca.change_card(card["user_id"], {"key1": ""})
    run = harness.tick(NAME)
    assert run.success, run.failures
    client = axle.client_by_phone(_e164(card["phone"]))
    assert client["consent_mailing"] is False  # TY-A6: nothing means no consent
    assert not {"birthday_this_month", "birthday_next_7_days"} & set(client["tags"])


def test_a_birthday_cleared_at_teyca_is_cleared_on_axle(harness):
    harness.load(NAME)
    assert harness.tick(NAME).success
    passes = _passes(harness)
    phones = Counter(_e164(p["phone"]) for p in passes.values())
    card = next(p for p in passes.values() if p.get("birthday") and phones[_e164(p["phone"])] == 1)
    axle = harness.sandbox.state.emulator("axle")
    assert axle.client_by_phone(_e164(card["phone"]))["birthday"] is not None
    harness.sandbox.state.emulator("teyca").change_card(card["user_id"], {"birthday": ""})
    run = harness.tick(NAME)
    assert run.success, run.failures
    assert axle.client_by_phone(_e164(card["phone"]))["birthday"] is None
