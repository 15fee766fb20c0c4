"""The daily segment schedule of an integration (TX5): date segments move with the calendar.

"Birthday in the next 7 days" changes at midnight even when no source record does, so the
change sensor alone would never notice it. Five minutes after midnight in the integration's
timezone this schedule runs the integration's ordinary sync job: the model recomputes
`segment_groups` for the new day and delivery sends only who joined and who left a group, the
same diff it makes for any field. No separate delivery path, no full resend.

The run carries the list tag, so the run queue's one-run-per-list limit (AF7) makes it wait for
a run already in flight on the list instead of overlapping it or being skipped (a skipped tick
would leave yesterday's groups until the next source change).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import dagster as dg

from assets import naming
from pipelines import switch

if TYPE_CHECKING:
    from memberflow.config import Integration

CRON = "5 0 * * *"  # 00:05: just after the day turns, clear of jobs that start on the hour
SEGMENTS_TAG = "memberflow/segments_day"


def build_segment_schedule(
    integration: Integration,
    job: dg.JobDefinition | dg.UnresolvedAssetJobDefinition,
    asset_selection: list[dg.AssetKey] | None = None,
) -> dg.ScheduleDefinition | None:
    """A daily schedule running `job` (restricted to `asset_selection`: the integration's assets
    and its list's) for an integration with date segments (the calendar moves them); None
    without: groups from events or flags change only when their data does."""
    dated = [s for s in getattr(integration, "segments", None) or [] if _dated(s)]
    if not dated:
        return None
    timezone = getattr(integration, "timezone", None) or "UTC"
    names = ", ".join(s.name for s in dated)

    @dg.schedule(
        name=f"{integration.name}_segments_daily",
        job=job,
        cron_schedule=CRON,
        execution_timezone=timezone,
        default_status=switch.schedule_status(integration),
        description=(
            f"Daily at 00:05 {timezone}: run {job.name} on {integration.name}'s assets so the "
            f"date segments ({names}) are recomputed for the new day and only who joined or "
            "left a group is sent."
        ),
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        moment = context.scheduled_execution_time or datetime.now(ZoneInfo(timezone))
        moment = moment.astimezone(ZoneInfo(timezone))
        return dg.RunRequest(
            run_key=f"{integration.name}:segments:{moment.isoformat()}",
            asset_selection=asset_selection,
            # The job's daily partitions count UTC days, like the sensor's run requests.
            partition_key=moment.astimezone(UTC).date().isoformat()
            if integration.tracking
            else None,
            tags={
                naming.MODE_TAG: naming.INCREMENTAL,
                naming.LIST_TAG: integration.list_key,
                naming.INTEGRATION_TAG: integration.name,
                "memberflow/changed": "segments",
                SEGMENTS_TAG: moment.date().isoformat(),  # the day in the integration's zone
            },
        )

    return _schedule


def _dated(segment: object) -> bool:
    """A segment whose rule reads a date against today (anniversary_of, since)."""
    rule = getattr(segment, "rule", None)
    return any(hasattr(rule, name) for name in ("anniversary_of", "since"))
