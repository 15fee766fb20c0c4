"""Stage assets: landing files -> mapped, normalised, validated tables in the list's warehouse.

Rows that fail validation go to the `quarantine` table with their reason (X4) and never block
the valid ones; a bad optional field is dropped and reported instead. The materialization shows
`dagster/row_count` as rows in the staged table (of that day, for a day partition), this run's
figures under `rows_this_run` and `run_*`, and a sample of this run's quarantine rows, masked; a
non-blocking check turns yellow when anything was quarantined or dropped.
"""

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets import naming
from assets.metadata import breakdown
from memberflow import progress, staging
from memberflow.config import Integration
from memberflow.mapping import EntityMapping, mapping_summary
from memberflow.masking import mask_text
from resources.base import SourceClient

QUARANTINE_CHECK = "nothing_quarantined"
QUARANTINE_MEANS = (
    "Yellow: this run withheld rows or dropped bad fields (the rest went on). The reasons and a "
    "masked sample are in the check's metadata, every row in the warehouse's quarantine table. "
    "Fix the records at the source or the mapping; a fixed record is staged at its next change."
)


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
        source_kind=integration.source.kind,
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
        check_specs=[
            dg.AssetCheckSpec(
                QUARANTINE_CHECK, asset=key, blocking=False, description=QUARANTINE_MEANS
            )
        ],
        # on the definition, not on each materialization: a backfill writes one event per day,
        # and this schema (~2 KB serialised) was a third of each (issue 10)
        metadata={"dagster/column_schema": _column_schema(mapping)},
    )
    @progress.reported
    def _stage(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        warehouse: DuckDBResource = getattr(context.resources, warehouse_key)
        settings = stage_settings(integration, context.run_id)
        with warehouse.get_connection() as conn:
            if events:
                days = [] if naming.is_incremental(context) else naming.partition_days(context)
                result = staging.stage_events(conn, mapping, settings, days)
            else:
                result = staging.stage_members(conn, mapping, settings)
            table_rows = conn.execute(f"SELECT count(*) FROM {result.table}").fetchall()[0][0]
            sample = _quarantine_sample(conn, integration.name, mapping.entity, context.run_id)
        run_metadata = {
            "table": result.table,
            "run_rows_staged": result.staged,
            "run_rows_quarantined": result.quarantined,
            "run_fields_dropped": result.fields_dropped,
            "run_rows_skipped": result.skipped,
            "run_unreadable_records": result.unreadable,
            # the names the run summary and the demo read: this run's, like the run_ keys
            "quarantined": result.quarantined,
            "quarantine_reasons": result.reasons,
            "fields_dropped": result.fields_dropped,
            "field_drop_reasons": result.drop_reasons,
            "quarantine_sample": dg.MetadataValue.md(sample),
            **breakdown("quarantined_this_run", result.reasons),
            **breakdown("fields_dropped_this_run", result.drop_reasons),
            "skipped": result.skipped,
            "landing_files_read": result.files_read,
            "replayed_from_raw": result.full_rebuild,
            "mapping_fingerprint": mapping.fingerprint,
        }
        if events:
            per_day = {
                day: {
                    "dagster/row_count": rows,
                    "rows_this_run": result.staged_by_day.get(day, 0),
                }
                for day, rows in result.rows_by_day.items()
            }
            _, common = naming.report_per_day(context, per_day, run_metadata)
            metadata = naming.result_metadata(
                context, {"table_rows_all_days": table_rows, **run_metadata}, common
            )
        else:
            metadata = {
                "dagster/row_count": table_rows,
                "rows_this_run": result.staged,
                **run_metadata,
            }
        return dg.MaterializeResult(
            metadata=metadata,
            check_results=[
                dg.AssetCheckResult(
                    check_name=QUARANTINE_CHECK,
                    passed=result.quarantined == 0 and result.fields_dropped == 0,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={
                        "quarantined": result.quarantined,
                        "reasons": result.reasons,
                        "fields_dropped": result.fields_dropped,
                        "field_drop_reasons": result.drop_reasons,
                    },
                )
            ],
        )

    return _stage


def _quarantine_sample(conn: object, integration: str, entity: str, run_id: str) -> str:
    """This run's quarantine rows (never all-time ones), emails and phones masked."""
    rows = conn.execute(  # type: ignore[attr-defined]
        """SELECT record_id, field, coalesce(action, 'row withheld') AS action, reason
           FROM quarantine
           WHERE integration = ? AND entity = ? AND run_id = ? AND stage IN ('land', 'stage')
           ORDER BY quarantined_at, record_id LIMIT 10""",
        [integration, entity, run_id],
    ).df()
    if rows.empty:
        return "nothing quarantined in this run"
    rows["reason"] = rows["reason"].map(mask_text)
    return rows.to_markdown(index=False)
