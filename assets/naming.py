"""Names that tie assets, resources, tags and pools together; one place so they never drift.

Asset keys carry the integration (or the target list) as prefix and group, and depend only on
names in the integration file, so a comment change in YAML never moves a key.
"""

from __future__ import annotations

from collections import Counter
from datetime import date
from typing import Any

import dagster as dg

from memberflow.config import Integration

RUN_FIGURES_ON = "run_figures_on"  # on a range's days: the day whose event holds the run figures
MODE_TAG = "memberflow/mode"  # "incremental" on sensor runs; absent on backfills and manual runs
LIST_TAG = "memberflow/list"
INTEGRATION_TAG = "memberflow/integration"
INCREMENTAL = "incremental"


def source_resource_key(integration: Integration) -> str:
    return f"source_{integration.name}"


def target_resource_key(list_key: str) -> str:
    return f"target_{list_key}"


def warehouse_resource_key(list_key: str) -> str:
    return f"warehouse_{list_key}"


def pool(list_key: str) -> str:
    """Every writer of one warehouse shares this pool, so DuckDB sees one writer at a time."""
    return f"warehouse_{list_key}"


def raw_key(integration: Integration, entity: str) -> dg.AssetKey:
    return dg.AssetKey([integration.name, f"{entity}_raw"])


def staged_key(integration: Integration, entity: str) -> dg.AssetKey:
    return dg.AssetKey([integration.name, f"{entity}_staged"])


def list_asset_key(list_key: str, name: str) -> dg.AssetKey:
    return dg.AssetKey([list_key, name])


def daily_partitions(integration: Integration) -> dg.DailyPartitionsDefinition:
    """Days from the integration's history start up to today (end_offset=1 includes today)."""
    return dg.DailyPartitionsDefinition(
        start_date=integration.schedule.history_start.isoformat(), end_offset=1
    )


def partition_days(context: dg.AssetExecutionContext) -> list[date]:
    """The days of this run's partition range (a single-run backfill covers many)."""
    if not (context.has_partition_key or context.has_partition_key_range):
        return []
    keys = context.partition_keys
    return [date.fromisoformat(k) for k in keys]


def report_per_day(
    context: dg.AssetExecutionContext,
    per_day: dict[date, dict[str, Any]],
    run_metadata: dict[str, Any],
) -> tuple[list[date], dict[str, Any]]:
    """Give each day its own figures, however the run was partitioned (issue 6, item 10).

    Dagster records a ranged run's MaterializeResult metadata on every partition of the range,
    so day figures go through `context.add_asset_metadata(partition_key=...)`, which Dagster
    merges over the result's metadata for that partition only. A day outside the run's
    partitions (an incremental run is tagged with today, but lands records into their business
    dates) gets its own materialization event via `context.log_event`, carrying the run
    metadata too; days outside the partitions definition (before history start, in the future)
    are returned instead, to be reported as run figures. Keys in `run_metadata` must say they
    are run figures.

    Each `add_asset_metadata` call costs Dagster time in proportion to the days already given
    figures, so over a long range (most of its days alike: no records) the figures most days
    share are returned instead, for `result_metadata` to state once, and only the other days
    are given theirs (issue 10). That needs figures for every day of the range.
    """
    targeted = set(partition_days(context))
    partitions = context.assets_def.partitions_def
    known = partitions.get_partition_keys() if partitions is not None else []
    valid = {date.fromisoformat(k) for k in known}
    common = _most_common(per_day) if len(targeted) > 1 and targeted <= per_day.keys() else {}
    outside = []
    for day, figures in sorted(per_day.items()):
        if day in targeted:
            if figures != common:
                context.add_asset_metadata(figures, partition_key=day.isoformat())
        elif day in valid:
            context.log_event(
                dg.AssetMaterialization(
                    asset_key=context.asset_key,
                    partition=day.isoformat(),
                    metadata={**run_metadata, **figures},
                )
            )
        else:
            outside.append(day)
    return outside, common


def _most_common(per_day: dict[date, dict[str, Any]]) -> dict[str, Any]:
    seen: dict[str, dict[str, Any]] = {}
    counts: Counter[str] = Counter()
    for figures in per_day.values():
        key = repr(sorted(figures.items()))
        seen.setdefault(key, figures)
        counts[key] += 1
    return dict(seen[counts.most_common(1)[0][0]]) if counts else {}


def result_metadata(
    context: dg.AssetExecutionContext,
    run_metadata: dict[str, Any],
    common: dict[str, Any],
) -> dict[str, Any]:
    """The metadata for a day-partitioned asset's MaterializeResult: the run's figures, stated
    once (issue 10), and the day figures most days share (`report_per_day`).

    Dagster copies a ranged run's MaterializeResult metadata onto the event of every day of the
    range. Over 1,000 days that repeated every run figure a thousand times per asset, and the
    event log's writes grew with it. A run over several days therefore puts its figures on the
    range's last day only (the asset's last event of the run, which the run summary and the
    UI's latest materialization show); every day keeps its own figures and names that day under
    `run_figures_on`. A run over one day is unchanged.
    """
    keys = context.partition_keys if context.has_partition_key_range else []
    if len(keys) <= 1:
        return {**common, **run_metadata}
    last = keys[-1]
    context.add_asset_metadata(run_metadata, partition_key=last)
    return {**common, RUN_FIGURES_ON: last}


def is_incremental(context: dg.AssetExecutionContext) -> bool:
    return context.run.tags.get(MODE_TAG) == INCREMENTAL
