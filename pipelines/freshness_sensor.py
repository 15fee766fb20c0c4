"""The freshness sensor: between runs, re-judge every list's `synced_recently` check.

A list whose sync stopped starts no run that could turn its check red, so something outside the
runs must look. This sensor reads only Dagster's event log (no API call, no run started) and
reports a check result whenever a check's verdict changes, so the check turns red within one
tick of the list going stale and green again at the next sync or in-sync sensor tick. The
cursor holds the last verdict reported per check.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta

import dagster as dg

from assets import freshness
from memberflow.config import Integration

SENSOR_NAME = "list_freshness_sensor"


def build_freshness_sensor(
    by_list: dict[str, list[Integration]], clock: Callable[[], float] = time.time
) -> dg.SensorDefinition:
    """One sensor for every list, ticking at the shortest sensor interval of the deployment.

    It starts running when any integration starts its own sensors on load
    (`schedule.enabled: true`); otherwise it waits to be switched on like them."""
    windows: dict[dg.AssetKey, timedelta] = {
        key: freshness.stale_after(members)
        for list_key, members in by_list.items()
        for key in freshness.delivered_keys(list_key)
    }
    everyone = [i for members in by_list.values() for i in members]
    interval = min(i.schedule.interval_minutes for i in everyone) * 60
    enabled = any(i.schedule.enabled for i in everyone)

    @dg.sensor(
        name=SENSOR_NAME,
        minimum_interval_seconds=interval,
        default_status=(
            dg.DefaultSensorStatus.RUNNING if enabled else dg.DefaultSensorStatus.STOPPED
        ),
        description=(
            "Re-judges each list's synced_recently check from the event log (no API call, no "
            "run): a list not synced, nor checked in sync by its sensor, for "
            "alerts.stale_after_intervals sensor intervals turns red."
        ),
    )
    def _freshness(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        reported: dict[str, bool] = json.loads(context.cursor) if context.cursor else {}
        now = clock()
        changed = []
        for key, window in sorted(windows.items(), key=lambda kv: kv[0].to_user_string()):
            verdict = freshness.evaluate(context.instance, key, window, now)
            name = key.to_user_string()
            if reported.get(name) != verdict.passed:
                changed.append(verdict)
                reported[name] = verdict.passed
        skip = None if changed else "no list's freshness changed"
        return dg.SensorResult(
            skip_reason=skip, asset_events=changed, cursor=json.dumps(reported, sort_keys=True)
        )

    return _freshness
