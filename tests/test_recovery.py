"""A run whose process died is failed, its pool slots freed and its landing temp files removed;
a run whose process lives, or that runs on another host, is left alone (issue 6, item 6)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import dagster as dg
import pytest
from dagster._core.test_utils import create_run_for_test

from memberflow import recovery

POOL = "warehouse_heyloyalty_demo_4711"


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        instance.event_log_storage.set_concurrency_slots(POOL, 1)
        yield instance


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def started_run(instance, tags: dict[str, str], claim: str | None = "members_delivered"):
    run = create_run_for_test(
        instance,
        job_name="sync_demo_flexpos",
        status=dg.DagsterRunStatus.STARTED,
        tags={"memberflow/list": "heyloyalty_demo_4711", **tags},
    )
    if claim:
        status = instance.event_log_storage.claim_concurrency_slot(POOL, run.run_id, claim)
        assert status.is_claimed
    return run


def tags_of(pid: int, host: str | None = None, start: str | None = None) -> dict[str, str]:
    tags = {recovery.HOST_TAG: host or recovery.hostname(), recovery.PID_TAG: str(pid)}
    if start:
        tags[recovery.PROCESS_START_TAG] = start
    return tags


def status(instance, run) -> dg.DagsterRunStatus:
    return instance.get_run_by_id(run.run_id).status


def claimed(instance) -> list[str]:
    return [s.run_id for s in instance.event_log_storage.get_concurrency_info(POOL).claimed_slots]


def test_a_dead_run_is_failed_with_a_clear_message_and_its_pool_slot_freed(instance, data_dir):
    run = started_run(instance, tags_of(dead_pid()))
    outcome = recovery.recover(instance)

    assert [r.run_id for r in outcome.runs] == [run.run_id]
    assert outcome.runs[0].slots_freed == [f"{POOL}:members_delivered"]
    assert status(instance, run) == dg.DagsterRunStatus.FAILURE
    failure = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
    assert "is gone" in failure[0].message and str(outcome.runs[0].pid) in failure[0].message
    assert claimed(instance) == []
    # the next run on the list gets the slot at once instead of waiting forever
    nxt = started_run(instance, tags_of(os.getpid()), claim=None)
    assert instance.event_log_storage.claim_concurrency_slot(POOL, nxt.run_id, "members").is_claimed
    assert recovery.recover(instance).runs == []  # nothing left to recover, the live run stays


def test_a_run_waiting_for_a_slot_when_killed_no_longer_waits(instance, data_dir):
    holder = started_run(instance, tags_of(os.getpid()))
    waiter = started_run(instance, tags_of(dead_pid()), claim=None)
    storage = instance.event_log_storage
    assert not storage.claim_concurrency_slot(POOL, waiter.run_id, "members").is_claimed
    outcome = recovery.recover(instance)
    assert [r.run_id for r in outcome.runs] == [waiter.run_id]
    assert outcome.runs[0].pending_dropped == [f"{POOL}:members"]
    pending = storage.get_concurrency_info(POOL).pending_steps
    assert [p.run_id for p in pending] == [holder.run_id]  # the holder's own, assigned step
    assert claimed(instance) == [holder.run_id] and status(instance, holder).name == "STARTED"


def test_live_runs_and_other_hosts_runs_are_left_alone(instance, data_dir):
    live = started_run(instance, tags_of(os.getpid(), start=recovery.process_start(os.getpid())))
    elsewhere = started_run(instance, tags_of(dead_pid(), host="another-host"), claim=None)
    untagged = started_run(instance, {}, claim=None)  # launched by the daemon: run monitoring's
    assert recovery.recover(instance).runs == []
    for run in (live, elsewhere, untagged):
        assert status(instance, run) == dg.DagsterRunStatus.STARTED
    assert claimed(instance) == [live.run_id]


def test_a_daemon_launched_run_whose_worker_died_is_failed_on_a_local_instance(instance, data_dir):
    """The DefaultRunLauncher has no worker health check; on a SQLite instance every worker
    runs on this machine, so the pid the worker reported is judged like ours."""
    from dagster._core.events import EngineEventData

    dead = started_run(instance, {})
    live = started_run(instance, {}, claim=None)
    for run, pid in ((dead, dead_pid()), (live, os.getpid())):
        instance.report_engine_event(
            f"Started process for run (pid: {pid}).", run, EngineEventData.in_process(pid)
        )
    outcome = recovery.recover(instance)
    assert [r.run_id for r in outcome.runs] == [dead.run_id]
    assert status(instance, dead) == dg.DagsterRunStatus.FAILURE
    assert status(instance, live) == dg.DagsterRunStatus.STARTED
    assert claimed(instance) == []


def test_a_reused_pid_does_not_keep_a_dead_run_alive(instance, data_dir):
    if recovery.process_start(os.getpid()) is None:
        pytest.skip("process start times need Linux /proc")
    run = started_run(instance, tags_of(os.getpid(), start="1"))  # our pid, another process
    assert [r.run_id for r in recovery.recover(instance).runs] == [run.run_id]


def test_orphan_landing_temp_files_are_removed_but_a_live_runs_are_kept(instance, data_dir):
    day = data_dir / "landing" / "demo_flexpos" / "journals" / "2026-01-05"
    day.mkdir(parents=True)
    orphan_file = day / "120000-abcd.tmp"
    orphan_file.write_bytes(b"half a parquet file")
    orphan_dir = data_dir / "landing" / "demo_flexpos" / "journals" / ".incoming-1234abcd"
    (orphan_dir / "2026-01-05").mkdir(parents=True)
    (orphan_dir / "2026-01-05" / "x.parquet").write_bytes(b"")
    kept = day / "000000-keep.parquet"
    kept.write_bytes(b"a landed file")
    past = time.time() - 60
    for path in (
        orphan_file,
        orphan_dir,
        orphan_dir / "2026-01-05",
        orphan_dir / "2026-01-05/x.parquet",
    ):
        os.utime(path, (past, past))

    started_run(instance, tags_of(dead_pid()))
    started_run(instance, tags_of(os.getpid()), claim=None)
    live_tmp = day / "130000-live.tmp"  # written by the live run after it started
    live_tmp.write_bytes(b"being written")
    outcome = recovery.recover(instance)

    assert sorted(outcome.removed) == sorted([str(orphan_file), str(orphan_dir)])
    assert not orphan_file.exists() and not orphan_dir.exists()
    assert kept.exists() and live_tmp.exists()


def test_a_backfill_killed_mid_swap_gets_its_old_day_back(instance, data_dir):
    """The swap parks the old day inside `.incoming-*` before moving the new one in; a kill
    between the two must not lose the day when recovery clears the orphan folder."""
    entity = data_dir / "landing" / "demo_flexpos" / "journals"
    incoming = entity / ".incoming-5678efgh"
    parked = incoming / "2026-01-06.replaced"
    parked.mkdir(parents=True)
    (parked / "old.parquet").write_bytes(b"the day's landed file")
    (incoming / "2026-01-06").mkdir()  # the new folder, never moved in
    past = time.time() - 60
    for path in (incoming, parked, parked / "old.parquet", incoming / "2026-01-06"):
        os.utime(path, (past, past))

    outcome = recovery.recover(instance)

    assert (entity / "2026-01-06" / "old.parquet").read_bytes() == b"the day's landed file"
    assert not incoming.exists()
    assert f"restored {entity / '2026-01-06'}" in outcome.removed


def test_the_cli_prints_what_it_recovered(instance, data_dir, monkeypatch, tmp_path):
    from click.testing import CliRunner

    from app.cli import main

    run = started_run(instance, tags_of(dead_pid()))
    monkeypatch.setattr(dg.DagsterInstance, "get", staticmethod(lambda: instance))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(main, ["recover"])
    assert result.exit_code == 0, result.output
    assert run.run_id in result.output and f"{POOL}:members_delivered" in result.output
    again = CliRunner().invoke(main, ["recover"])
    assert "nothing to recover" in again.output
