"""Extract assets: page through the source API and land raw payloads as Parquet (no parsing).

Members (customers) are one unpartitioned asset. Event entities (journals, tickets, orders) are
partitioned by day: a backfill re-fetches exactly its days, in one run (single-run backfill
policy) split by the client into the windows the vendor accepts; a sensor run fetches what
changed since the committed high-water mark.
"""

from datetime import UTC, datetime, time

import dagster as dg

from assets import naming
from memberflow import landing
from memberflow.config import Integration
from memberflow.mapping import EntityMapping
from resources.base import SourceClient

API_RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)


class ExtractConfig(dg.Config):
    """Per-run overrides (C5): skip this entity in a manual run, e.g. members without tracking."""

    fetch: bool = True


def build_extract_asset(
    integration: Integration,
    mapping: EntityMapping,
    partitions: dg.PartitionsDefinition | None,
) -> dg.AssetsDefinition:
    events = mapping.role == "events"
    source_key = naming.source_resource_key(integration)

    @dg.asset(
        key=naming.raw_key(integration, mapping.entity),
        group_name=integration.name,
        description=_describe(integration, mapping),
        partitions_def=partitions if events else None,
        backfill_policy=dg.BackfillPolicy.single_run() if events else None,
        required_resource_keys={source_key},
        retry_policy=API_RETRY,
        kinds={integration.source.kind, "parquet"},
        tags={"memberflow/stage": "extract"},
    )
    def _extract(context: dg.AssetExecutionContext, config: ExtractConfig) -> dg.MaterializeResult:
        if not config.fetch:
            return dg.MaterializeResult(metadata={"skipped": "fetch: false in run config"})
        client: SourceClient = getattr(context.resources, source_key).client()
        try:
            stats, mode = _run(context, client, integration, mapping, events)
        finally:
            client.close()
        if stats.unreadable:
            context.log.warning(
                f"{mapping.entity}: {stats.unreadable} record(s) could not be read and were "
                f"landed apart for quarantine: {stats.unreadable_reasons}"
            )
        run_metadata = {
            "mode": mode,
            "run_records_landed": stats.records,
            "run_unreadable_records": stats.unreadable,
            "run_unreadable_reasons": stats.unreadable_reasons,
            "run_pages": stats.pages,
            "run_files_written": len(stats.files),
            "run_days_touched": len(stats.days),
            "high_water_mark": str(stats.high_water_mark or ""),
            "api_calls": client.calls.total,  # this run's calls, also on each day it credits
            "api_calls_by_endpoint": client.calls.by_endpoint(),
        }
        if not events:
            return dg.MaterializeResult(
                metadata={
                    "dagster/row_count": landing.count_records(integration.name, mapping.entity),
                    "records_this_run": stats.records,
                    **run_metadata,
                }
            )
        days = set(stats.days) | set(naming.partition_days(context))
        per_day = {
            day: {
                "dagster/row_count": landing.count_records(integration.name, mapping.entity, [day]),
                "records_this_run": stats.records_by_day.get(day, 0),
            }
            for day in days
        }
        outside = naming.report_per_day(context, per_day, run_metadata)
        if outside:
            run_metadata["run_days_outside_partitions"] = ", ".join(map(str, outside))
        return dg.MaterializeResult(metadata=run_metadata)

    return _extract


def _run(
    context: dg.AssetExecutionContext,
    client: SourceClient,
    integration: Integration,
    mapping: EntityMapping,
    events: bool,
) -> tuple[landing.LandingStats, str]:
    name, entity = integration.name, mapping.entity
    days = naming.partition_days(context) if events else []
    if naming.is_incremental(context) or (events and not days):
        since = landing.read_cursor(name, entity) or (
            datetime.combine(integration.schedule.history_start, time(), UTC) if events else None
        )
        context.log.info(f"{entity}: fetching records changed since {since or 'the beginning'}")
        stats = landing.land_pages(client, name, entity, client.iter_changed(entity, since))
        if stats.high_water_mark is not None:
            landing.write_cursor(name, entity, stats.high_water_mark)
        return stats, f"incremental since {since or 'the beginning'}"
    if events:
        context.log.info(f"{entity}: backfilling {days[0]} .. {days[-1]} ({len(days)} days)")
        pages = client.iter_range(entity, days[0], days[-1])
        stats = landing.land_pages(client, name, entity, pages, replace_days=days)
        _start_cursor_after_initial_import(integration, entity, days, stats)
        return stats, f"range {days[0]} .. {days[-1]}"
    context.log.info(f"{entity}: full fetch")
    stats = landing.land_pages(client, name, entity, client.iter_changed(entity, None))
    # A full fetch may be filtered (consent=true, FP2 switches): it cannot see withdrawals, so it
    # only starts a cursor and never moves an existing one past changes it did not fetch.
    if stats.high_water_mark is not None and landing.read_cursor(name, entity) is None:
        landing.write_cursor(name, entity, stats.high_water_mark)
    return stats, "full"


def _start_cursor_after_initial_import(
    integration: Integration, entity: str, days: list, stats: landing.LandingStats
) -> None:
    """The initial import (C5) is a backfill up to today: after it, the five-minute runs fetch
    what changes from then on, from its high-water mark, instead of refetching all history.
    Records of days before the range are the user's choice to leave out; any of them modified
    later is still caught, since modifiedSince ignores the business date. A backfill that
    stops before today, or one run when a cursor exists, never moves the cursor."""
    reaches_today = days[-1] >= datetime.now(UTC).date()
    if (
        reaches_today
        and stats.high_water_mark
        and landing.read_cursor(integration.name, entity) is None
    ):
        landing.write_cursor(integration.name, entity, stats.high_water_mark)


def _describe(integration: Integration, mapping: EntityMapping) -> str:
    how = (
        "Daily partitions by business date; a backfill replaces exactly its days."
        if mapping.role == "events"
        else "Unpartitioned: a full fetch, or on sensor runs only what changed since the cursor."
    )
    return (
        f"Raw {mapping.entity} from {integration.source.kind} for integration "
        f"`{integration.name}`, landed whole as Parquet under "
        f"`landing/{integration.name}/{mapping.entity}/<day>/`. {how}"
    )
