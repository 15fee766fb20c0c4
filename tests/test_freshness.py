"""A list's synced_recently check: green while the list is synced or checked in sync, red on a
test clock once it went `stale_after_intervals` sensor intervals without either."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest
import yaml

from assets import freshness
from memberflow.config import INTEGRATIONS_DIR, load_all
from pipelines.factory import build_definitions
from pipelines.freshness_sensor import build_freshness_sensor

MINUTE = 60.0


@pytest.fixture
def flexpos(tmp_path: Path, monkeypatch):
    """demo_flexpos with a 5-minute interval and stale after 3 intervals (15 minutes)."""
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    raw = yaml.safe_load((INTEGRATIONS_DIR / "demo_flexpos.yaml").read_text())
    raw["alerts"] = {"stale_after_intervals": 3}
    path = tmp_path / "demo_flexpos.yaml"
    path.write_text(yaml.safe_dump(raw))
    (integration,) = load_all([path])
    return integration


class Clock:
    """The freshness sensor's idea of now, moved by the test instead of by sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _tick(sensor, instance, cursor):
    result = sensor.evaluate_tick(dg.build_sensor_context(instance=instance, cursor=cursor))
    for event in result.asset_events:  # what the daemon does with them: store them
        instance.report_runless_asset_event(event)
    return {e.asset_key.path[-1]: e.passed for e in result.asset_events}, result.cursor


def _latest(instance, key: dg.AssetKey) -> bool | None:
    check = dg.AssetCheckKey(key, freshness.FRESH_CHECK)
    record = instance.event_log_storage.get_asset_check_summary_records([check])[check]
    last = record.last_completed_check_execution_record
    return None if last is None else last.event.asset_check_evaluation.passed


def test_a_stale_list_turns_red_and_a_quiet_sensor_tick_turns_it_green(flexpos):
    clock = Clock()
    sensor = build_freshness_sensor({flexpos.list_key: [flexpos]}, clock=clock)
    members, events = freshness.delivered_keys(flexpos.list_key)
    with dg.instance_for_test() as instance:
        clock.now = 1_000_000.0
        verdicts, cursor = _tick(sensor, instance, None)
        assert verdicts == {"members_delivered": False, "events_delivered": False}  # never

        for key in (members, events):  # a sync run delivered
            instance.report_runless_asset_event(dg.AssetMaterialization(key))
        synced = freshness.last_synced(instance, members)
        clock.now = synced + 14 * MINUTE
        verdicts, cursor = _tick(sensor, instance, cursor)
        assert verdicts == {"members_delivered": True, "events_delivered": True}
        assert _latest(instance, members) is True

        verdicts, cursor = _tick(sensor, instance, cursor)
        assert verdicts == {}  # nothing changed: nothing reported again

        clock.now = synced + 16 * MINUTE  # three 5-minute intervals and then some
        verdicts, cursor = _tick(sensor, instance, cursor)
        assert verdicts == {"members_delivered": False, "events_delivered": False}
        assert _latest(instance, events) is False

        for observation in freshness.in_sync_observations(flexpos, "demo_flexpos_sensor"):
            instance.report_runless_asset_event(observation)  # the sensor found nothing new
        clock.now = freshness.last_synced(instance, members) + MINUTE
        verdicts, _ = _tick(sensor, instance, cursor)
        assert verdicts == {"members_delivered": True, "events_delivered": True}


def test_the_window_is_the_most_lenient_integration_of_the_list(flexpos):
    slow = flexpos.model_copy(
        update={
            "schedule": flexpos.schedule.model_copy(update={"interval_minutes": 60}),
            "alerts": flexpos.alerts.model_copy(update={"stale_after_intervals": 2}),
        }
    )
    # the configured window (2 intervals of 60 min beats 3 of 5), not a measured time
    assert freshness.stale_after([flexpos, slow]) == timedelta(minutes=2 * 60)


def test_every_check_says_what_red_means(flexpos):
    defs = build_definitions([flexpos])
    specs = [
        spec
        for checks in [*defs.assets, *defs.asset_checks]  # type: ignore[union-attr]
        for spec in getattr(checks, "check_specs", [])
    ]
    names = {s.name for s in specs}
    assert {
        freshness.FRESH_CHECK,
        "nothing_quarantined",
        "one_row_per_match_key",
        "list_kept_its_members",
        "no_uncertain_event_batches",
    } <= names
    for spec in specs:
        said = spec.description or ""
        assert said.startswith(("Red:", "Yellow:")), spec.key.to_user_string()
