"""The daily segment schedule (TX5): built only for integrations with segments, at 00:05 in the
integration's timezone, running the sync job with the tags the run queue and delivery rely on."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from zoneinfo import ZoneInfo

import dagster as dg
import pytest

from assets import naming
from memberflow.segments import SegmentSettings
from pipelines.schedules import build_segment_schedule

BIRTHDAY_SOON = SegmentSettings.model_validate(
    {
        "name": "birthday_next_7_days",
        "rule": {"anniversary_of": "birthday", "within_days": 7},
        "requires": "consent_mailing",
    }
)


@dataclass
class FakeIntegration:
    """The attributes the builder reads; an Integration without a whole integration file."""

    name: str = "teyca_axle"
    timezone: str = "Europe/Moscow"
    segments: list[SegmentSettings] = field(default_factory=lambda: [BIRTHDAY_SOON])
    tracking: list[str] = field(default_factory=list)
    list_key: str = "axle_demo"


@dg.op
def _noop() -> None:
    return None


@dg.job
def sync_teyca_axle() -> None:
    _noop()


def evaluate(schedule: dg.ScheduleDefinition, when: datetime) -> dg.RunRequest:
    """Call the schedule's function as a tick would (no repository: the job is a stand-in)."""
    with dg.build_schedule_context(scheduled_execution_time=when) as context:
        request = schedule(context)
    assert isinstance(request, dg.RunRequest)
    return request


@pytest.mark.parametrize("job", [sync_teyca_axle, dg.define_asset_job("sync_teyca_axle")])
def test_daily_schedule_runs_the_sync_job_just_after_midnight_in_the_integrations_zone(job):
    schedule = build_segment_schedule(FakeIntegration(), job)
    assert schedule is not None
    assert schedule.name == "teyca_axle_segments_daily"
    assert schedule.cron_schedule == "5 0 * * *"
    assert schedule.execution_timezone == "Europe/Moscow"
    assert schedule.job_name == "sync_teyca_axle"
    assert schedule.default_status == dg.DefaultScheduleStatus.STOPPED
    assert "birthday_next_7_days" in (schedule.description or "")


def test_no_schedule_without_segments():
    assert build_segment_schedule(FakeIntegration(segments=[]), sync_teyca_axle) is None


def test_timezone_defaults_to_utc():
    schedule = build_segment_schedule(FakeIntegration(timezone=""), sync_teyca_axle)
    assert schedule is not None and schedule.execution_timezone == "UTC"


def test_run_request_carries_the_list_tag_and_the_local_day():
    schedule = build_segment_schedule(FakeIntegration(), sync_teyca_axle)
    assert schedule is not None
    # 00:05 on 1 March in Moscow is 21:05 on 28 February in UTC.
    request = evaluate(schedule, datetime(2026, 3, 1, 0, 5, tzinfo=ZoneInfo("Europe/Moscow")))
    assert request.tags[naming.LIST_TAG] == "axle_demo"  # one run per list at a time (AF7)
    assert request.tags[naming.INTEGRATION_TAG] == "teyca_axle"
    assert request.tags[naming.MODE_TAG] == naming.INCREMENTAL
    assert request.tags["memberflow/segments_day"] == "2026-03-01"
    assert request.partition_key is None
    assert request.run_key and "segments" in request.run_key


@pytest.mark.parametrize(
    ("when", "partition"),
    [
        (datetime(2026, 3, 1, 0, 5, tzinfo=ZoneInfo("Europe/Moscow")), "2026-02-28"),
        (datetime(2026, 3, 1, 3, 5, tzinfo=ZoneInfo("Europe/Moscow")), "2026-03-01"),
    ],
)
def test_partitioned_job_gets_the_utc_day_like_the_sensor(when, partition):
    schedule = build_segment_schedule(FakeIntegration(tracking=["visits"]), sync_teyca_axle)
    assert schedule is not None
    assert evaluate(schedule, when).partition_key == partition


def test_tick_passes_dagsters_checks_inside_definitions_with_daily_partitions():
    """Through a repository Dagster checks the partition key exists and the job is known."""
    days = dg.DailyPartitionsDefinition(start_date="2025-01-01", end_offset=1)

    @dg.asset(partitions_def=days)
    def visits_raw() -> None:
        return None

    job = dg.define_asset_job("sync_teyca_axle", selection=[visits_raw])
    schedule = build_segment_schedule(FakeIntegration(tracking=["visits"]), job)
    assert schedule is not None
    defs = dg.Definitions(assets=[visits_raw], jobs=[job], schedules=[schedule])
    repository = defs.get_repository_def()
    when = datetime(2026, 3, 1, 0, 5, tzinfo=ZoneInfo("Europe/Moscow"))
    with dg.build_schedule_context(scheduled_execution_time=when, repository_def=repository) as ctx:
        data = repository.get_schedule_def(schedule.name).evaluate_tick(ctx)
    (request,) = data.run_requests or []
    assert request.partition_key == "2026-02-28"
    assert request.tags["dagster/schedule_name"] == "teyca_axle_segments_daily"
