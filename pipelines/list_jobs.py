"""Which sync jobs a target list gets: one per list, so 200 integrations make ~200 jobs at most.

A job per integration made Dagster resolve (and subset the whole asset graph for) one job per
integration plus one per write-back; a job per list holds every asset of the list and each
sensor, schedule or `memberflow sync` run selects the assets of its one integration (plus the
list's) with `asset_selection`. The list tag on every run keeps one run per list (AF7).

Dagster takes one partitions definition per job. Integrations that track events are
day-partitioned from their own `history_start`, so a list whose tracking integrations start on
different days gets one job per start day: the earliest keeps `sync_<list>`, the others are
`sync_<list>_from_<YYYY_MM_DD>`. Integrations without tracking (unpartitioned) join the
earliest job of their list.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import date

import dagster as dg

from assets import naming
from memberflow.config import Integration

INTEGRATIONS_METADATA = "memberflow/integrations"  # the job's integrations, in its metadata


@dataclass(frozen=True)
class ListJob:
    """One sync job of a list: its name and the integrations whose assets it holds."""

    name: str
    list_key: str
    integrations: tuple[Integration, ...]
    starts_on: date | None  # the day partitions' first day; None: no tracking integration

    @property
    def partitions_def(self) -> dg.DailyPartitionsDefinition | None:
        tracked = [i for i in self.integrations if i.tracking]
        return naming.daily_partitions(tracked[0]) if tracked else None


def plan_list_jobs(list_key: str, members: list[Integration]) -> list[ListJob]:
    """The list's jobs, earliest partitions start first (the one named `sync_<list>`)."""
    by_start: dict[date | None, list[Integration]] = defaultdict(list)
    for integration in members:
        start = integration.schedule.history_start if integration.tracking else None
        by_start[start].append(integration)
    untracked = by_start.pop(None, [])
    starts = sorted(by_start)
    if not starts:
        return [ListJob(list_job_name(list_key), list_key, tuple(untracked), None)]
    jobs = []
    for index, start in enumerate(starts):
        name = list_job_name(list_key, None if index == 0 else start)
        members_of_job = by_start[start] + (untracked if index == 0 else [])
        jobs.append(ListJob(name, list_key, tuple(members_of_job), start))
    return jobs


def list_job_name(list_key: str, starts_on: date | None = None) -> str:
    suffix = f"_from_{starts_on.isoformat().replace('-', '_')}" if starts_on else ""
    return f"sync_{list_key}{suffix}"


def sync_job_name(defs: dg.Definitions, integration: Integration) -> str:
    """The name of the job holding the integration's assets (in Definitions built by the
    factory), read from the jobs' metadata so that CLI and UI never disagree."""
    for job in defs.jobs or []:
        names = (job.metadata or {}).get(INTEGRATIONS_METADATA)
        names = getattr(names, "value", names)  # a JsonMetadataValue once normalized
        if names and integration.name in names:
            return job.name
    raise KeyError(f"no sync job holds integration {integration.name!r}")


def integration_selection(job: dg.JobDefinition, integration: Integration) -> list[dg.AssetKey]:
    """The assets of `job` one integration's run materializes: its own (keys prefixed with its
    name) and its list's (prefixed with the list key), the share its sensor's runs select."""
    prefixes = {integration.name, integration.list_key}
    return sorted(
        (key for key in job.asset_layer.selected_asset_keys if key.path[0] in prefixes),
        key=lambda key: key.to_user_string(),
    )
