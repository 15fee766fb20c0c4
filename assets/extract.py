"""Extract assets: page through the source API and land raw payloads as Parquet (no parsing).

Members (customers) are one unpartitioned asset. Event entities (journals, tickets, orders) are
partitioned by day: a backfill re-fetches exactly its days, in one run (single-run backfill
policy) split by the client into the windows the vendor accepts; a sensor run fetches what
changed since the committed cursor (an opaque string only the source client reads).

A full-scan entity (one the source can only read whole) lands, after a complete scan, a
tombstone for each id landed before and missing now. A webhook run (`webhook_through` set) lands
instead the records the stored webhook events name, read again from the source, and a tombstone
for each delete event, then marks those events consumed.
"""

from collections.abc import Iterator
from datetime import UTC, datetime, time
from itertools import chain
from typing import Any

import dagster as dg

from assets import metadata, naming
from assets.run_config import config_of, schema_of
from memberflow import landing, progress
from memberflow.config import Integration
from memberflow.mapping import EntityMapping
from resources.source import DELETED_FLAG, SourceClient
from resources.webhooks import RESCAN

API_RETRY = dg.RetryPolicy(max_retries=2, delay=10, backoff=dg.Backoff.EXPONENTIAL)


class ExtractConfig(dg.Config):
    """Per-run overrides (C5): skip this entity in a manual run, e.g. members without tracking.

    `webhook_through`: land the member records named by the stored webhook events up to this
    sequence number (set by the webhook sensor) instead of reading changes by cursor.

    `include_optional`: read this entity even when the source leaves it out of automatic runs
    because it is costly (e.g. one call per member); for one manual run."""

    fetch: bool = True
    webhook_through: int | None = None
    include_optional: bool = False


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
        config_schema=schema_of(ExtractConfig),
    )
    @progress.reported
    def _extract(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        config = config_of(ExtractConfig, context)
        if not config.fetch:
            return dg.MaterializeResult(metadata={"skipped": "fetch: false in run config"})
        client: SourceClient = getattr(context.resources, source_key).client()
        if mapping.entity in client.optional_entities() and not config.include_optional:
            client.close()
            context.log.info(
                f"{mapping.entity}: left to manual runs by the source's settings; "
                "`include_optional: true` in this asset's run config reads it"
            )
            return dg.MaterializeResult(
                metadata={
                    "skipped": "left to manual runs (costly); include_optional: true reads it"
                }
            )
        if config.webhook_through is None and not _scan_due(context, client, mapping.entity):
            client.close()
            started_for = context.run.tags.get(CHANGED_TAG)
            context.log.info(f"{mapping.entity}: no full scan due (run started for {started_for})")
            return dg.MaterializeResult(
                metadata={"skipped": f"no full scan due; the run was started for {started_for}"}
            )
        extra: dict[str, Any] = {}
        try:
            if config.webhook_through is not None:
                stats, mode, extra = _run_webhooks(
                    context, client, integration, mapping, events, config.webhook_through
                )
            else:
                stats, mode, whole = _run(context, client, integration, mapping, events)
                if whole:
                    extra = _land_deletions(
                        context, client, integration.name, mapping.entity, stats
                    )
            warnings = client.run_warnings()
            extra.update(_budget_metadata(client))
        finally:
            client.close()
        for warning in warnings:
            context.log.warning(f"{mapping.entity}: {warning}")
        if warnings:
            extra["run_warnings"] = warnings
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
            **metadata.api_calls(client.calls.by_endpoint()),
            **metadata.breakdown("unreadable_this_run", stats.unreadable_reasons),
            **client.calls.pacing(),  # throttled_waits, throttled_seconds (client-side limit)
            **extra,
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
        outside, common = naming.report_per_day(context, per_day, run_metadata)
        if outside:
            run_metadata["run_days_outside_partitions"] = ", ".join(map(str, outside))
        return dg.MaterializeResult(metadata=naming.result_metadata(context, run_metadata, common))

    return _extract


def _run(
    context: dg.AssetExecutionContext,
    client: SourceClient,
    integration: Integration,
    mapping: EntityMapping,
    events: bool,
) -> tuple[landing.LandingStats, str, bool]:
    """Read by cursor, by range (a backfill) or whole; returns the stats, the mode, and whether
    a full-scan entity was read whole (then records missing from it were deleted)."""
    name, entity = integration.name, mapping.entity
    days = naming.partition_days(context) if events else []
    full_scan = client.entity_spec(entity).full_scan
    started = datetime.now(UTC)
    # an entity readable only whole is read whole, a backfill too (its records may lie on days
    # before the range: the memberships active now, bought years ago)
    if naming.is_incremental(context) or (events and not days) or (events and full_scan):
        previous = landing.read_source_cursor(name, entity)
        cursor = previous or (
            datetime.combine(integration.schedule.history_start, time(), UTC).isoformat()
            if events
            else None
        )
        context.log.info(f"{entity}: fetching records changed since {cursor or 'the beginning'}")
        pages = client.iter_changed(entity, cursor)
        stats = landing.land_pages(client, name, entity, pages, collect_ids=full_scan)
        _advance_cursor(client, name, entity, previous, stats, started)
        if full_scan:
            return stats, "full scan", True
        return stats, f"incremental since {cursor or 'the beginning'}", False
    if events:
        context.log.info(f"{entity}: backfilling {days[0]} .. {days[-1]} ({len(days)} days)")
        pages = client.iter_range(entity, days[0], days[-1])
        stats = landing.land_pages(client, name, entity, pages, replace_days=days)
        _start_cursor_after_initial_import(client, integration, entity, days, stats, started)
        return stats, f"range {days[0]} .. {days[-1]}", False
    context.log.info(f"{entity}: full fetch")
    pages = client.iter_changed(entity, None)
    stats = landing.land_pages(client, name, entity, pages, collect_ids=full_scan)
    # A full fetch may be filtered (consent=true, FP2 switches): it cannot see withdrawals, so it
    # only starts a cursor and never moves an existing one past changes it did not fetch.
    if landing.read_source_cursor(name, entity) is None:
        _advance_cursor(client, name, entity, None, stats, started)
    return stats, "full", full_scan


def _advance_cursor(
    client: SourceClient,
    integration: str,
    entity: str,
    previous: str | None,
    stats: landing.LandingStats,
    started: datetime,
) -> None:
    """Store the cursor the client derives from what was landed; only after it is on disk."""
    cursor = client.cursor_after(entity, previous, stats.high_water_mark, started)
    if cursor is not None and cursor != previous:
        landing.write_source_cursor(integration, entity, cursor)


def _start_cursor_after_initial_import(
    client: SourceClient,
    integration: Integration,
    entity: str,
    days: list,
    stats: landing.LandingStats,
    started: datetime,
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
        and landing.read_source_cursor(integration.name, entity) is None
    ):
        _advance_cursor(client, integration.name, entity, None, stats, started)


TOMBSTONES_PER_PAGE = 1_000


def _land_deletions(
    context: dg.AssetExecutionContext,
    client: SourceClient,
    integration: str,
    entity: str,
    stats: landing.LandingStats,
) -> dict[str, Any]:
    """After a complete scan of a full-scan entity, land a tombstone for each id landed before
    and missing from the scan. Never for a scan that was cut short, returned nothing (an outage
    looks like an empty source) or held unreadable records (their ids are unknown)."""
    why_not = (
        "the scan was cut short"
        if not client.scan_complete(entity)
        else "the scan returned no records"
        if not stats.records
        else "the scan held unreadable records"
        if stats.unreadable
        else None
    )
    if why_not:
        context.log.warning(f"{entity}: deletions not looked for: {why_not}")
        return {"tombstones": 0, "deletions_skipped": why_not}
    gone = landing.absent_ids(integration, entity, stats.record_ids)
    if gone:
        context.log.info(f"{entity}: {len(gone)} record(s) gone from the source since last scan")
        pages = (
            [client.tombstone(entity, rid) for rid in gone[i : i + TOMBSTONES_PER_PAGE]]
            for i in range(0, len(gone), TOMBSTONES_PER_PAGE)
        )
        deleted = landing.land_pages(client, integration, entity, pages)
        stats.records += deleted.records
        stats.pages += deleted.pages
        stats.files += deleted.files
        stats.days |= deleted.days
        stats.tombstones += deleted.tombstones
    return {"tombstones": stats.tombstones}


def _run_webhooks(
    context: dg.AssetExecutionContext,
    client: SourceClient,
    integration: Integration,
    mapping: EntityMapping,
    events: bool,
    through: int,
) -> tuple[landing.LandingStats, str, dict[str, Any]]:
    """Land what the stored webhook events up to `through` name, then mark them consumed.

    A webhook body is a hint: created and updated records are read again from the source (the
    newest event of a record decides); a delete is trusted and lands as a tombstone (an event
    record's on the day it is seen; staging drops it wherever it was). An event that cannot name
    its record (RESCAN) makes this a regular read of the entity instead (a full-scan entity is
    read whole, and what is gone from it becomes tombstones). The events are marked consumed only
    after everything is on disk, so a failed run leaves them pending. The member entity's step
    also consumes events of entities this integration does not extract (nothing will).
    """
    from memberflow.webhook_store import WebhookStore  # the receiver's durable store

    name, entity = integration.name, mapping.entity
    store = WebhookStore.for_integration(name)
    pending = store.pending(through)
    mine = [e for e in pending if e.entity == entity]
    consumes = {entity} | (
        {e.entity for e in pending} - _extracted(integration) if not events else set()
    )
    if any(e.record_id == RESCAN for e in mine):
        context.log.info(f"{entity}: {len(mine)} webhook event(s) ask for a full read")
        stats, mode, whole = _run(context, client, integration, mapping, events)
        extra = _land_deletions(context, client, name, entity, stats) if whole else {}
        store.mark_consumed(through, context.run_id, consumes)
        return (
            stats,
            f"webhook events through #{through}: {mode}",
            {
                "webhook_events": len(mine),
                **extra,
            },
        )
    newest = {e.record_id: e for e in mine}  # seq order: last wins
    reread = [rid for rid, e in newest.items() if e.kind != "delete"]
    id_field = client.entity_spec(entity).id_field
    deletes = [
        {**({id_field: rid} if id_field else {}), **e.payload, DELETED_FLAG: True}
        for rid, e in newest.items()
        if e.kind == "delete"
    ]
    context.log.info(
        f"{entity}: {len(mine)} webhook event(s) through #{through}: "
        f"re-reading {len(reread)} record(s), {len(deletes)} deletion(s)"
    )
    counted = _Counted(client.fetch_records(entity, reread) if reread else iter(()))
    pages = chain(counted, [deletes] if deletes else [])
    stats = landing.land_pages(client, name, entity, pages)
    store.mark_consumed(through, context.run_id, consumes)
    extra = {
        "webhook_events": len(mine),
        "records_reread": counted.records,
        "tombstones": stats.tombstones,
    }
    return stats, f"webhook events through #{through}", extra


def _extracted(integration: Integration) -> set[str]:
    """The entities this integration's extract steps read (its member entity and tracking)."""
    from memberflow.mapping import available_entities

    return set(available_entities(integration.source.kind).members) | set(integration.tracking)


class _Counted:
    """Pages passed through, counting their records (re-read records, for the metadata)."""

    def __init__(self, pages: Iterator[list[dict[str, Any]]]) -> None:
        self._pages = pages
        self.records = 0

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        for page in self._pages:
            self.records += len(page)
            yield page


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


def _budget_metadata(client: SourceClient) -> dict[str, Any]:
    """The calls this run spent against the source's capped window, for vendors with a cap:
    the figure a user watches to know whether the interval they chose fits the budget."""
    budget = client.rate_budget()
    if budget is None:
        return {}
    mine = budget.by_this_client if budget.by_this_client is not None else client.calls.total
    return {
        f"rate_budget_{budget.window}": (
            f"{budget.used} of {budget.limit} calls used in the last {budget.window} "
            f"({mine} by this run), {budget.left} left"
        )
    }


CHANGED_TAG = "memberflow/changed"  # set by the sensor and schedules: what started the run


def _scan_due(context: dg.AssetExecutionContext, client: SourceClient, entity: str) -> bool:
    """An entity readable only whole is scanned in a run started for it (or by hand), not in
    one the sensor or a schedule started for something else: a full scan can cost a capped
    source its day (a run for new purchases, or the daily segment run, must not rescan every
    card)."""
    started_for = context.run.tags.get(CHANGED_TAG)
    if started_for is None or not client.entity_spec(entity).full_scan:
        return True
    return entity in started_for.split(",")
