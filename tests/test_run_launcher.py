"""memberflow's run launcher on a PostgreSQL instance: Dagster's run monitoring learns that a run
whose worker process died on this machine is dead (and that a live one, or one launched
elsewhere, is not), and `memberflow recover` fails such a run on PostgreSQL too, leaving its pool
slots for the daemon to free (a step of it may still run on a Celery worker)."""

from __future__ import annotations

import json
import os

import dagster as dg
import pytest
from dagster._core.events import EngineEventData
from dagster._core.launcher import WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG
from dagster._core.test_utils import create_run_for_test

from memberflow import recovery
from memberflow.run_launcher import LAUNCH_HOST_TAG, LocalRunLauncher
from tests.production_stack import scratch_database, services  # noqa: F401 - autouse
from tests.test_recovery import dead_pid

pytestmark = pytest.mark.production

POOL = "warehouse_heyloyalty_demo_4711"
LOCAL_SERVER = json.dumps({"host": "localhost", "socket": "/tmp/code-server.sock"})


@pytest.fixture
def instance(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    with (
        scratch_database() as url,
        dg.instance_for_test(
            overrides={
                "storage": {"postgres": {"postgres_url": url}},
                "run_launcher": {"module": "memberflow.run_launcher", "class": "LocalRunLauncher"},
            }
        ) as instance,
    ):
        instance.event_log_storage.set_concurrency_slots(POOL, 1)
        yield instance


def launched_run(instance, pid: int | None, host: str | None = None, grpc: str = LOCAL_SERVER):
    """A STARTED run as the launcher leaves it, its worker having reported `pid` (if any)."""
    run = create_run_for_test(
        instance,
        job_name="sync_heyloyalty_demo_4711",
        status=dg.DagsterRunStatus.STARTED,
        tags={
            "memberflow/list": "heyloyalty_demo_4711",
            LAUNCH_HOST_TAG: host or recovery.hostname(),
            GRPC_INFO_TAG: grpc,
        },
    )
    if pid is not None:  # what Dagster's code server writes when the run's process starts
        instance.report_engine_event(
            f"Started process for run (pid: {pid}).", run, EngineEventData.in_process(pid)
        )
    return instance.get_run_by_id(run.run_id)


def test_the_health_check_judges_only_this_machines_run_workers(instance):
    launcher = instance.run_launcher
    assert isinstance(launcher, LocalRunLauncher) and launcher.supports_check_run_worker_health
    gone = dead_pid()

    dead = launcher.check_run_worker_health(launched_run(instance, gone))
    assert dead.status == WorkerStatus.FAILED and f"pid {gone} on" in dead.msg
    alive = launcher.check_run_worker_health(launched_run(instance, os.getpid()))
    assert alive.status == WorkerStatus.RUNNING
    # not judged (RUNNING, as the default launcher amounts to): no pid yet, launched elsewhere,
    # or a code server on another machine
    for run in (
        launched_run(instance, None),
        launched_run(instance, gone, host="another-machine"),
        launched_run(instance, gone, grpc=json.dumps({"host": "user-code", "port": 4000})),
    ):
        result = launcher.check_run_worker_health(run)
        assert result.status == WorkerStatus.RUNNING and "not judged" in result.msg


def test_recover_fails_a_dead_launched_run_on_postgres_and_leaves_its_slot_to_the_daemon(
    instance,
):
    dead = launched_run(instance, dead_pid())
    elsewhere = launched_run(instance, dead_pid(), host="another-machine")
    assert instance.event_log_storage.claim_concurrency_slot(
        POOL, dead.run_id, "members_delivered"
    ).is_claimed

    outcome = recovery.recover(instance)
    assert [r.run_id for r in outcome.runs] == [dead.run_id]
    assert instance.get_run_by_id(dead.run_id).status == dg.DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(elsewhere.run_id).status == dg.DagsterRunStatus.STARTED
    assert "free_slots_after_run_end_seconds" in outcome.lines()[0]
    claimed = instance.event_log_storage.get_concurrency_info(POOL).claimed_slots
    assert [s.run_id for s in claimed] == [dead.run_id]  # the daemon frees it, later
