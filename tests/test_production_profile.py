"""The production profile for real: PostgreSQL instance, daemon, webserver, two dagster-celery
workers over RabbitMQ, the demo_flexpos integration against the sandbox.

One stack for the whole story (starting it is most of the cost): a backfill and a tick of the same
list submitted together (the daemon runs them one after the other), the worker delivering the
backfill's members killed -9 right after the list applied an upsert (the broker hands the step to
the other worker), and the list compared with what the embedded default (SQLite, in-process) puts
on it from the same seeded data: nothing lost, nothing twice.
"""

from __future__ import annotations

from datetime import date, timedelta

import dagster as dg
import pytest

from app.production import start_stack, webserver_client
from sandbox.server import SandboxServer
from tests.list_state import ListState, list_after_embedded_run, list_state
from tests.production_stack import (
    environment,
    free_port,
    production_settings,
    scratch_database,
    services,  # noqa: F401 - the module's autouse fixture
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.production, pytest.mark.slow]

SANDBOX = {"seed": 11, "customers": 50, "days": 30, "rate_limits": False}
BACKFILL_DAYS = 35
# seconds for both runs before one is called hung: a hang detector, not a speed check (the runs
# took ~165 s at load 17-25), so far above any slow machine
RUN_TIMEOUT = 900
JOB = "sync_heyloyalty_demo_4711"  # the list job; demo_flexpos is the only integration loaded


def backfill_window() -> tuple[str, str]:
    end = date.today()
    return (end - timedelta(days=BACKFILL_DAYS)).isoformat(), end.isoformat()


@pytest.fixture(scope="module")
def truth(tmp_path_factory) -> ListState:
    """The list after the same backfill on the embedded default (SQLite, in-process)."""
    return list_after_embedded_run(
        tmp_path_factory.mktemp("embedded"),
        SANDBOX,
        environment,
        lambda h: h.backfill("demo_flexpos", days=BACKFILL_DAYS).success,
    )


def celery_worker_of_last_step(instance: dg.DagsterInstance, run_id: str, step: str) -> str:
    """Which worker (its -n name) took the step last, from the executor's engine events."""
    for record in reversed(instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)):
        event = record.dagster_event
        if event.step_key and event.step_key.endswith(step):
            worker = event.engine_event_data.metadata.get("Celery worker")
            if worker is not None:
                return str(worker.value).split("@")[0].split("-")[0]
    raise AssertionError(f"no Celery worker took a step ending {step} in run {run_id}")


def workers_by_step(instance: dg.DagsterInstance, run_id: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        event = record.dagster_event
        worker = event.engine_event_data.metadata.get("Celery worker")
        if event.step_key and worker is not None:
            out.setdefault(event.step_key, []).append(str(worker.value).split("@")[0].split("-")[0])
    return out


def writer_intervals(
    instance: dg.DagsterInstance, run_ids: list[str]
) -> list[tuple[float, float, str]]:
    """(start, end, step) of every step that writes a list's warehouse: stage, model, deliver."""
    intervals = []
    for run_id in run_ids:
        started: dict[str, float] = {}
        for record in instance.all_logs(run_id):
            event = record.dagster_event
            if event is None or not event.step_key or "_raw" in event.step_key:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                started[event.step_key] = record.timestamp
            elif event.event_type == dg.DagsterEventType.STEP_SUCCESS:
                intervals.append((started[event.step_key], record.timestamp, event.step_key))
    return sorted(intervals)


def test_celery_workers_sync_a_list_once_at_a_time_and_survive_a_kill(
    truth, tmp_path, monkeypatch, request
):
    start, end = backfill_window()
    with SandboxServer(**SANDBOX) as sandbox, scratch_database() as postgres_url:
        env = environment(tmp_path, sandbox.url)
        production_settings(env, postgres_url, request)
        port = free_port()
        home, logs = tmp_path / "home", tmp_path / "logs"
        stack = start_stack(home, logs, workers=2, port=port, env=env)
        try:
            monkeypatch.setenv("MEMBERFLOW_POSTGRES_URL", postgres_url)
            instance = dg.DagsterInstance.from_config(str(home))
            client = webserver_client(port, timeout=240)
            backfill = client.submit_job_execution(
                JOB,
                tags={
                    "dagster/asset_partition_range_start": start,
                    "dagster/asset_partition_range_end": end,
                },
            )
            killed: list[str] = []

            def kill_deliverer(_path: str) -> None:
                name = celery_worker_of_last_step(instance, backfill, "members_delivered")
                killed.append(name)
                stack.kill(name)

            # the fifth upsert applied on the list, its answer never reaching the worker
            hook = sandbox.faults.after_answer("/members/upsert", kill_deliverer, skip=4)
            tick = client.submit_job_execution(
                JOB, tags={"memberflow/mode": "incremental", "dagster/partition": end}
            )
            wait_for(instance, [backfill, tick], logs, RUN_TIMEOUT)

            runs = {r: instance.get_run_record_by_id(r) for r in (backfill, tick)}
            assert [runs[r].dagster_run.status for r in (backfill, tick)] == [
                dg.DagsterRunStatus.SUCCESS
            ] * 2
            # one run per list: the tick, submitted while the backfill ran, started after it ended
            assert runs[tick].start_time >= runs[backfill].end_time
            # the killed step ran again, on the other worker
            assert hook.fired == 1 and len(killed) == 1
            taken = workers_by_step(instance, backfill)
            (deliver,) = [k for k in taken if k.endswith("members_delivered")]
            assert taken[deliver][0] == killed[0] and len(taken[deliver]) == 2
            assert taken[deliver][1] != killed[0]
            # both workers took steps; warehouse writers never overlapped
            assert {w for ws in taken.values() for w in ws} == {"worker1", "worker2"}
            intervals = writer_intervals(instance, [backfill, tick])
            for (_, first_end, a), (second_start, _, b) in zip(
                intervals, intervals[1:], strict=False
            ):
                assert second_start >= first_end, f"{a} and {b} wrote the warehouse at once"
            # the list holds what the embedded default puts there: nothing lost, nothing twice
            assert list_state(sandbox).differences(truth) == {}
            instance.dispose()
        finally:
            stack.stop()
