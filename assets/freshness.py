"""Freshness of a target list: has it been synced lately? One check per delivered asset.

A list counts as synced at the later of two moments: its delivered asset was last
materialized (a sync run delivered), or an integration's sensor last looked and found nothing
to sync (it records an observation on the list's delivered assets, `in_sync_observations`). A
quiet list is therefore not stale; a list whose sensor is stopped or failing, or whose runs fail
or hang, is. The check fails when neither moment lies within `stale_after(integrations)`: the
integration's `alerts.stale_after_intervals` sensor intervals (the most lenient integration of
the list counts, so a slower one on the same list does not turn it red).

The check runs in every sync run (the job selects it with its asset) and is evaluated between
runs by the freshness sensor (pipelines/freshness_sensor.py), which reports results without
starting a run.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import dagster as dg

from assets import naming
from memberflow.config import Integration

FRESH_CHECK = "synced_recently"
DELIVERED = ("members_delivered", "events_delivered")
CHECKED_BY = "memberflow/checked_in_sync_by"


def delivered_keys(list_key: str) -> list[dg.AssetKey]:
    """The list's delivered assets: what its freshness is judged on."""
    return [naming.list_asset_key(list_key, name) for name in DELIVERED]


def stale_after(integrations: list[Integration]) -> timedelta:
    """How long the list may go unsynced before its check fails."""
    return max(
        timedelta(minutes=i.alerts.stale_after_intervals * i.schedule.interval_minutes)
        for i in integrations
    )


def description(window: timedelta) -> str:
    minutes = int(window.total_seconds() // 60)
    return (
        f"Red: this list has not been synced, nor checked in sync by a sensor, for more than "
        f"{minutes} min (alerts.stale_after_intervals sensor intervals). Check that the "
        "integration's sensor is switched on and its ticks succeed, and that its last runs did "
        "not fail or hang (Runs tab); it turns green at the next sync or sensor tick."
    )


def in_sync_observations(integration: Integration, sensor_name: str) -> list[dg.AssetObservation]:
    """What a sensor tick that found nothing to sync records: the list is in sync right now."""
    return [
        dg.AssetObservation(
            asset_key=key,
            description="the sensor found nothing to sync: the list is in sync",
            metadata={CHECKED_BY: sensor_name, naming.INTEGRATION_TAG: integration.name},
        )
        for key in delivered_keys(integration.list_key)
    ]


def last_synced(instance: dg.DagsterInstance, key: dg.AssetKey) -> float | None:
    """When the list was last delivered to or checked in sync (epoch seconds); None if never."""
    records = [
        *instance.fetch_materializations(key, limit=1).records,
        *instance.fetch_observations(key, limit=1).records,
    ]
    return max((r.timestamp for r in records), default=None)


def evaluate(
    instance: dg.DagsterInstance, key: dg.AssetKey, window: timedelta, now: float
) -> dg.AssetCheckEvaluation:
    """The freshness check's verdict on one delivered asset at `now` (epoch seconds)."""
    synced = last_synced(instance, key)
    passed = synced is not None and now - synced <= window.total_seconds()
    metadata: dict[str, dg.RawMetadataValue] = {
        "stale_after_minutes": int(window.total_seconds() // 60),
        "evaluated_at": dg.MetadataValue.timestamp(now),
    }
    if synced is None:
        text = "never synced"
    else:
        metadata["last_synced"] = dg.MetadataValue.timestamp(synced)
        metadata["minutes_since_sync"] = round((now - synced) / 60, 1)
        at = datetime.fromtimestamp(synced, UTC).strftime("%Y-%m-%d %H:%M UTC")
        text = f"last synced {at}" + ("" if passed else ": stale")
    return dg.AssetCheckEvaluation(
        asset_key=key,
        check_name=FRESH_CHECK,
        passed=passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=text,
        metadata=metadata,
    )


def build_freshness_checks(
    list_key: str, integrations: list[Integration]
) -> dg.AssetChecksDefinition:
    """The `synced_recently` check on each of the list's delivered assets."""
    window = stale_after(integrations)
    specs = [
        dg.AssetCheckSpec(FRESH_CHECK, asset=key, description=description(window))
        for key in delivered_keys(list_key)
    ]

    @dg.multi_asset_check(specs=specs, name=f"{list_key}_freshness", can_subset=True)
    def _fresh(context):  # an AssetCheckExecutionContext
        now = time.time()
        for check_key in context.selected_asset_check_keys:
            found = evaluate(context.instance, check_key.asset_key, window, now)
            yield dg.AssetCheckResult(
                asset_key=found.asset_key,
                check_name=found.check_name,
                passed=found.passed,
                severity=found.severity,
                description=found.description,
                metadata=found.metadata,
            )

    return _fresh
