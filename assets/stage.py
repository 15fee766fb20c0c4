"""Stage assets: landing files -> mapped, normalised, validated tables in the list's warehouse.

Rows that fail validation go to the `quarantine` table with their reason (X4) and never block
the valid ones; the materialization shows how many and why, and a non-blocking check turns
yellow when anything was quarantined.
"""

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets import naming
from memberflow import staging
from memberflow.config import Integration
from memberflow.mapping import EntityMapping, mapping_summary
from resources.base import SourceClient

QUARANTINE_CHECK = "nothing_quarantined"


def source_date_format(kind: str) -> str:
    """The date format a source sends, the C6 default when the integration sets none."""
    for cls in SourceClient.__subclasses__():
        if getattr(cls, "vendor", None) == kind:
            return cls.default_date_format
    return "%Y-%m-%dT%H:%M:%S"


def stage_settings(integration: Integration, run_id: str) -> staging.StageSettings:
    return staging.StageSettings(
        integration=integration.name,
        separator=integration.import_.option_separator,
        date_format=integration.import_.date_format or source_date_format(integration.source.kind),
        phone_region=integration.import_.phone_region,
        match_on=integration.match_on,
        run_id=run_id,
    )


def _column_schema(mapping: EntityMapping) -> dg.TableSchema:
    """The staged table's mapped columns, each with the source path it is read from."""
    key = "match_key" if mapping.role == "members" else "event_id"
    return dg.TableSchema(
        columns=[
            dg.TableColumn(key, "VARCHAR", description="what the target recognises the row by"),
            *(
                dg.TableColumn(r.target, "VARCHAR", description=f"{r.describe()} ({r.type})")
                for r in mapping.fields
            ),
        ]
    )


def build_stage_asset(
    integration: Integration,
    mapping: EntityMapping,
    partitions: dg.PartitionsDefinition | None,
) -> dg.AssetsDefinition:
    events = mapping.role == "events"
    warehouse_key = naming.warehouse_resource_key(integration.list_key)
    key = naming.staged_key(integration, mapping.entity)

    @dg.asset(
        key=key,
        group_name=integration.name,
        deps=[naming.raw_key(integration, mapping.entity)],
        description=(
            f"{mapping.entity} of `{integration.name}` mapped, normalised and validated into "
            f"`{staging.stage_table(integration.name, mapping.entity)}`; bad rows go to "
            f"`quarantine` with a reason.\n\n{mapping_summary(mapping)}"
        ),
        partitions_def=partitions if events else None,
        backfill_policy=dg.BackfillPolicy.single_run() if events else None,
        required_resource_keys={warehouse_key},
        pool=naming.pool(integration.list_key),
        kinds={"duckdb"},
        tags={"memberflow/stage": "stage"},
        check_specs=[dg.AssetCheckSpec(QUARANTINE_CHECK, asset=key, blocking=False)],
    )
    def _stage(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        warehouse: DuckDBResource = getattr(context.resources, warehouse_key)
        settings = stage_settings(integration, context.run_id)
        with warehouse.get_connection() as conn:
            if events:
                days = [] if naming.is_incremental(context) else naming.partition_days(context)
                result = staging.stage_events(conn, mapping, settings, days)
            else:
                result = staging.stage_members(conn, mapping, settings)
            sample = conn.execute(
                """SELECT record_id, reason FROM quarantine
                   WHERE integration = ? AND entity = ? AND stage = 'stage' LIMIT 10""",
                [integration.name, mapping.entity],
            ).df()
        return dg.MaterializeResult(
            metadata={
                **naming.row_count(context, result.staged),
                "table": result.table,
                "quarantined": result.quarantined,
                "quarantine_reasons": result.reasons,
                "quarantine_sample": dg.MetadataValue.md(sample.to_markdown(index=False)),
                "skipped": result.skipped,
                "landing_files_read": result.files_read,
                "replayed_from_raw": result.full_rebuild,
                "mapping_fingerprint": mapping.fingerprint,
                "dagster/column_schema": _column_schema(mapping),
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=QUARANTINE_CHECK,
                    passed=result.quarantined == 0,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={"quarantined": result.quarantined, "reasons": result.reasons},
                )
            ],
        )

    return _stage
