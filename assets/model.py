"""Model assets of one target list: `members` and `tracking_events`, across every integration that
feeds the list (X6), built in DuckDB SQL from the staged tables: incrementally (only what staging
touched since the last build) where memberflow/model.py can, else in full.
"""

import os
from dataclasses import replace
from datetime import date, datetime
from zoneinfo import ZoneInfo

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource
from pydantic import Field

from assets import metadata, naming
from assets.run_config import config_of, schema_of
from memberflow import model, progress, shared_keys
from memberflow.config import Integration
from memberflow.masking import mask_match_key

UNIQUE_CHECK = "one_row_per_match_key"
SHARED_CHECK = "no_shared_match_keys"  # AF1: lists with an integration that withholds them
UNIQUE_MEANS = (
    "Red: the members table holds more than one row for a match key (duplicate_keys), so "
    "nothing is delivered this run (blocking) and the list keeps its last good state. The merge "
    "went wrong: keep the run id and the warehouse file, and report it; the next run rebuilds."
)
SHARED_MEANS = (
    "Yellow: records of an integration with shared_match_keys: withhold share a match key, so "
    "those keys were not synced (every other member was). Open the report (metadata) and fix "
    "the records at the source, or set shared_match_keys: merge to sync them as one member."
)
SHARED_PREVIEW_ROWS = 20
TODAY_ENV = "MEMBERFLOW_TODAY"
DAY_TAG = "memberflow/segments_day"  # set by the daily segment schedule: the day it runs for


class ModelConfig(dg.Config):
    """Per-run settings of the members model."""

    today: str | None = Field(
        default=None,
        description="The day date segments are computed for (ISO date); default: the daily "
        f"schedule's day tag, else env {TODAY_ENV}, else today in the integration's timezone. "
        "A fixed day replays a past run.",
    )


def resolve_today(today: str | None, timezone: str) -> date:
    """The segments' day: the run's setting, else MEMBERFLOW_TODAY, else the local date."""
    text = today or os.environ.get(TODAY_ENV)
    if text:
        return date.fromisoformat(text)
    return datetime.now(ZoneInfo(timezone)).date()


def list_segments(integrations: list[Integration]) -> list:
    """Every segment any integration on the list defines, one per name (the first file's)."""
    seen: dict[str, object] = {}
    for integration in integrations:
        for segment in integration.segments:
            seen.setdefault(segment.name, segment)
    return list(seen.values())


def with_settings(integrations: list[Integration], feeds: list[model.Feed]) -> list[model.Feed]:
    """The feeds with each integration file's `shared_match_keys`: the file decides, whoever
    built the feed."""
    return [
        replace(f, shared_match_keys=i.shared_match_keys)
        for i, f in zip(integrations, feeds, strict=True)
    ]


def shared_keys_check(conn: duckdb.DuckDBPyConnection, list_key: str) -> dg.AssetCheckResult:
    """AF1's report: the withheld keys as a warning (not blocking: every other member goes on),
    with a masked preview for the UI and the full CSV (rewritten every run) for the office."""
    found = shared_keys.rows(conn)
    path = shared_keys.write_report(list_key, found)
    metadata: dict[str, object] = {
        "count": len(found),
        "records": sum(len(k.record_ids) for k in found),
        "report": dg.MetadataValue.path(str(path)),
    }
    if found:
        metadata["preview"] = dg.MetadataValue.md(_preview(found))
    told = f"{len(found)} match key(s) shared by several records were not synced; see the report"
    return dg.AssetCheckResult(
        check_name=SHARED_CHECK,
        passed=not found,
        severity=dg.AssetCheckSeverity.WARN,
        metadata=metadata,
        description=told if found else None,
    )


def _preview(found: list[shared_keys.SharedKey]) -> str:
    """A Markdown table of withheld keys, masked: the UI never shows a whole address."""
    lines = ["| integration | shared key | record ids | names |", "| --- | --- | --- | --- |"]
    for key in found[:SHARED_PREVIEW_ROWS]:
        cells = [key.integration, mask_match_key(key.match_key)]
        cells += [", ".join(key.record_ids), ", ".join(n or "-" for n in key.names)]
        lines.append("| " + " | ".join(_md(c) for c in cells) + " |")
    if len(found) > SHARED_PREVIEW_ROWS:
        lines.append(f"\n… and {len(found) - SHARED_PREVIEW_ROWS} more in the report")
    return "\n".join(lines)


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _rows_per_source(
    conn: duckdb.DuckDBPyConnection, integrations: list[Integration]
) -> dict[str, int]:
    """Rows of `members` each integration has a record in (`<integration>/member_rows`: the
    table now, not this run), when several feed the list; a merged member counts under each."""
    if len(integrations) < 2:
        return {}
    counts = dict(
        conn.execute(
            "SELECT source, count(*) FROM (SELECT unnest(sources) AS source FROM members) "
            "GROUP BY source"
        ).fetchall()
    )
    return metadata.per_integration(
        {i.name: {"member_rows": int(counts.get(i.name, 0))} for i in integrations}
    )


def _event_rows_per_source(by_source: object) -> dict[str, int]:
    """`<integration>/event_rows/<entity>`: rows of `tracking_events` now, per source entity."""
    figures: dict[str, dict[str, int]] = {}
    for integration, entity, n in by_source.itertuples(index=False):  # type: ignore[attr-defined]
        figures.setdefault(str(integration), {})[f"event_rows/{entity}"] = int(n)
    return metadata.per_integration(figures)


def build_model_assets(
    list_key: str, integrations: list[Integration], feeds: list[model.Feed]
) -> list[dg.AssetsDefinition]:
    feeds = with_settings(integrations, feeds)
    withholds = bool(model.withholding(feeds))
    warehouse_key = naming.warehouse_resource_key(list_key)
    members_key = naming.list_asset_key(list_key, "members")
    member_deps = [
        naming.staged_key(i, f.members.entity) for i, f in zip(integrations, feeds, strict=True)
    ]
    event_deps = [
        naming.staged_key(i, m.entity)
        for i, f in zip(integrations, feeds, strict=True)
        for m in f.events
    ]
    names = ", ".join(f"`{i.name}`" for i in integrations)
    segments = list_segments(integrations)
    if model.uses_events(feeds, segments):  # members, facts or groups follow from events
        member_deps += event_deps

    @dg.asset(
        key=members_key,
        group_name=list_key,
        deps=member_deps,
        description=(
            f"One row per match key ({integrations[0].match_on}) for target `{list_key}`, "
            f"merged from {names} into `member_profile` (canonical fields) and `members` (the "
            "target's field names). Per field the non-empty value of the most recently modified "
            "source record wins, ties to the integration, then the record id, that sorts first "
            "(X6); a consent withdrawn at a source marks the member withdrawn, and so does a "
            "deletion at the source when no other live record shares the key."
        ),
        required_resource_keys={warehouse_key},
        pool=naming.pool(list_key),
        kinds={"duckdb"},
        tags={"memberflow/stage": "model"},
        check_specs=[
            dg.AssetCheckSpec(
                UNIQUE_CHECK, asset=members_key, blocking=True, description=UNIQUE_MEANS
            ),
            *(
                [
                    dg.AssetCheckSpec(
                        SHARED_CHECK, asset=members_key, blocking=False, description=SHARED_MEANS
                    )
                ]
                if withholds
                else []
            ),
        ],
        config_schema=schema_of(ModelConfig),
    )
    @progress.reported
    def _members(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        config = config_of(ModelConfig, context)
        warehouse: DuckDBResource = getattr(context.resources, warehouse_key)
        zone = integrations[0].timezone
        day = config.today or context.run.tags.get(DAY_TAG)
        today = resolve_today(day, zone) if segments else None
        with warehouse.get_connection() as conn:
            counts = model.build_members(conn, feeds, segments, today, zone)
            rebuilt = model.rebuilt(conn, "members")
            dupes = conn.execute(
                "SELECT count(*) - count(DISTINCT match_key) FROM members"
            ).fetchall()[0][0]
            sample = conn.execute(
                "SELECT match_key, sources, source_records, withdrawn FROM members "
                "ORDER BY len(sources) DESC, match_key LIMIT 5"
            ).df()
            shared = [shared_keys_check(conn, list_key)] if withholds else []
            per_source = _rows_per_source(conn, integrations)
        sample["match_key"] = sample["match_key"].map(mask_match_key)  # never a whole address
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": counts["members"],  # rows of the members table
                "merged_across_sources": counts["merged_across_sources"],
                "source_records": counts["source_records"],
                "withdrawn": counts["withdrawn"],
                # "all", or how many match keys staging touched since the last build
                "rebuilt_keys": rebuilt,
                **({"segment_members": counts["segment_members"]} if segments else {}),
                **({"withheld_shared_keys": counts["withheld_shared_keys"]} if withholds else {}),
                "preview": dg.MetadataValue.md(sample.to_markdown(index=False)),
                **per_source,
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=UNIQUE_CHECK,
                    passed=dupes == 0,
                    metadata={"duplicate_keys": int(dupes)},
                ),
                *shared,
            ],
        )

    @dg.asset(
        key=naming.list_asset_key(list_key, "tracking_events"),
        group_name=list_key,
        deps=[*event_deps, members_key],
        description=(
            "Every staged event (journal line, ticket, order ticket) whose customer is a member "
            "of the list, with the member's match key; events of non-members are counted, not sent."
        ),
        required_resource_keys={warehouse_key},
        pool=naming.pool(list_key),
        kinds={"duckdb"},
        tags={"memberflow/stage": "model"},
    )
    @progress.reported
    def _tracking_events(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        warehouse: DuckDBResource = getattr(context.resources, warehouse_key)
        with warehouse.get_connection() as conn:
            counts = model.build_tracking_events(conn, feeds)
            rebuilt = model.rebuilt(conn, "tracking")
            by_source = conn.execute(
                "SELECT integration, entity, count(*) AS events FROM tracking_events "
                "GROUP BY ALL ORDER BY ALL"
            ).df()
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": counts["events"],  # rows of the tracking_events table
                "events_without_member": counts["without_member"],
                "rebuilt": rebuilt,  # "all", or only the changed event days and member keys
                "by_source": dg.MetadataValue.md(by_source.to_markdown(index=False)),
                **(_event_rows_per_source(by_source) if len(integrations) > 1 else {}),
            }
        )

    return [_members, _tracking_events]
