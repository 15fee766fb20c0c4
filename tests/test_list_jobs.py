"""One sync job per target list (one per list and partitions start when its tracking
integrations start on different days); every sensor, schedule and `memberflow sync` run selects
its own integration's assets and the list's."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg
import pytest

from memberflow.config import INTEGRATIONS_DIR, load_all
from pipelines.factory import build_definitions
from pipelines.list_jobs import integration_selection, sync_job_name


@pytest.fixture(scope="module")
def demo():
    with pytest.MonkeyPatch.context() as patch, dg.instance_for_test() as instance:
        patch.setenv("MEMBERFLOW_DATA_DIR", str(instance.root_directory))
        integrations = load_all(sorted(INTEGRATIONS_DIR.glob("*.yaml")))
        yield build_definitions(integrations), integrations, instance


def test_one_job_per_list_holding_every_integration_of_the_list(demo):
    defs, integrations, _ = demo
    lists = {i.list_key for i in integrations}
    assert sorted(j.name for j in defs.jobs) == sorted(f"sync_{key}" for key in lists)
    for integration in integrations:
        name = sync_job_name(defs, integration)
        assert name == f"sync_{integration.list_key}"
        job = defs.resolve_job_def(name)
        keys = {key.path[0] for key in job.asset_layer.selected_asset_keys}
        mates = {i.name for i in integrations if i.list_key == integration.list_key}
        assert keys == mates | {integration.list_key}
        assert job.tags["memberflow/list"] == integration.list_key
        assert "memberflow/integration" not in job.tags  # each run says whose it is


def test_every_sensor_of_an_integration_targets_its_lists_job(demo):
    defs, integrations, _ = demo
    for integration in integrations:
        sensor = defs.resolve_sensor_def(f"{integration.name}_sensor")
        assert sensor.job_name == f"sync_{integration.list_key}"


def test_the_segment_schedule_runs_its_integrations_share_of_the_job(demo):
    defs, integrations, instance = demo
    (teyca,) = [i for i in integrations if i.name == "demo_teyca_axle"]
    schedule = defs.resolve_schedule_def("demo_teyca_axle_segments_daily")
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=datetime(2026, 11, 30, 21, 5, tzinfo=UTC)
    )
    (request,) = schedule.evaluate_tick(context).run_requests
    job = defs.resolve_job_def(sync_job_name(defs, teyca))
    assert set(request.asset_selection) == set(integration_selection(job, teyca))
    assert {k.path[0] for k in request.asset_selection} == {teyca.name, teyca.list_key}
    assert request.tags["memberflow/integration"] == teyca.name


def test_a_list_whose_integrations_start_on_different_days_gets_a_job_per_start(
    tmp_path, monkeypatch
):
    """Dagster takes one partitions definition per job: the later start gets its own job; an
    integration without tracking (unpartitioned) joins the earliest."""
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    ticketmaster = (INTEGRATIONS_DIR / "demo_ticketmaster.yaml").read_text()
    later = tmp_path / "later_ticketmaster.yaml"
    later.write_text(ticketmaster.replace("history_start: 2025-10-01", "history_start: 2026-01-15"))
    untracked = tmp_path / "untracked_ticketmaster.yaml"
    untracked.write_text(ticketmaster.replace("tracking: [orders]", "tracking: []"))
    integrations = load_all([INTEGRATIONS_DIR / "demo_flexpos.yaml", later, untracked])
    defs = build_definitions(integrations)
    defs.resolve_all_job_defs()  # Dagster accepts every job
    by_name = {i.name: sync_job_name(defs, i) for i in integrations}
    assert by_name == {
        "demo_flexpos": "sync_heyloyalty_demo_4711",
        "untracked_ticketmaster": "sync_heyloyalty_demo_4711",
        "later_ticketmaster": "sync_heyloyalty_demo_4711_from_2026_01_15",
    }
    late = defs.resolve_job_def("sync_heyloyalty_demo_4711_from_2026_01_15")
    assert late.partitions_def.get_first_partition_key() == "2026-01-15"
    assert defs.resolve_sensor_def("later_ticketmaster_sensor").job_name == late.name
