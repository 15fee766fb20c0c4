"""Names that tie assets, resources, tags and pools together; one place so they never drift.

Asset keys carry the integration (or the target list) as prefix and group, and depend only on
names in the integration file, so a comment change in YAML never moves a key.
"""

from __future__ import annotations

from datetime import date

import dagster as dg

from memberflow.config import Integration

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


def job_name(integration: Integration) -> str:
    return f"sync_{integration.name}"


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


def row_count(context: dg.AssetExecutionContext, rows: int) -> dict[str, int]:
    """`dagster/row_count` only where it is true: a single-run backfill records the same metadata
    on every day of its range, so there the figure is `rows_in_run` instead."""
    if len(partition_days(context)) > 1:
        return {"rows_in_run": rows}
    return {"dagster/row_count": rows}


def is_incremental(context: dg.AssetExecutionContext) -> bool:
    return context.run.tags.get(MODE_TAG) == INCREMENTAL
