"""The production profile's daemon at work: a real integration sensor, a run whose own process
dies, and a Dagster backfill, on PostgreSQL with two dagster-celery workers over RabbitMQ.

The daemon evaluates `demo_flexpos_sensor` against the sandbox; its run goes through the Celery
executor. While the run delivers members, its run worker is killed with -9 together with the
daemon and the code server that started it (the daemon's process group: a restart of the
deployment, the OOM killer), so nothing is left that saw it die. A new daemon starts, its run
monitoring asks memberflow's run launcher about the run's worker, fails the run, and
`run_retries` re-executes it from its failure (the sensors leave a shared instance's
daemon-launched runs to run monitoring). A backfill of the list's job over three days,
launched as the UI does while the retry waits, is run by the daemon after it. The list ends as
the same sensor run and backfill leave it on the embedded default (SQLite, in-process), from the
same seeded data. About 2.5-4 min on this 2-core machine, most of it processes loading the code.
"""

from __future__ import annotations

import resource
import time
from datetime import UTC, datetime, timedelta

import dagster as dg
import pytest
import yaml

from app.production import start_stack, webserver_client
from memberflow import recovery
from memberflow.config import INTEGRATIONS_DIR
from sandbox.server import SandboxServer
from tests.harness import Harness
from tests.list_state import ListState, list_after_embedded_run, list_state
from tests.production_stack import (
    environment,
    free_port,
    production_settings,
    scratch_database,
    services,  # noqa: F401 - the module's autouse fixture
    wait_for,
    wait_until,
)

pytestmark = [pytest.mark.e2e, pytest.mark.production, pytest.mark.slow]

SANDBOX = {"seed": 23, "customers": 40, "days": 5, "rate_limits": False}
BACKFILL_DAYS = 2  # the backfill covers today and the two days before
# seconds for one phase (a run, its retry, the backfill) before it is called hung: a hang
# detector, not a speed check (phases took 25-70 s at load 17-25), so far above any slow machine
TIMEOUT = 900
JOB = "sync_heyloyalty_demo_4711"
SENSOR = "demo_flexpos_sensor"
# the stack's run monitoring polls often, and frees a failed run's slots soon, to keep it short
MONITORING = {"poll_interval_seconds": 3, "free_slots_after_run_end_seconds": 10}

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionSetNotFoundError { message }
  }
}
"""


def backfill_days() -> list[str]:
    today = datetime.now(UTC).date()  # partitions are UTC days, like the sensor's
    return [(today - timedelta(days=n)).isoformat() for n in range(BACKFILL_DAYS, -1, -1)]


@pytest.fixture(scope="module")
def truth(tmp_path_factory) -> ListState:
    """The list after the sensor's run (an incremental run of today) and the backfill, on the
    embedded default."""

    def tick_then_backfill(h: Harness) -> bool:
        days = backfill_days()
        start, end = (datetime.fromisoformat(d).date() for d in (days[0], days[-1]))
        return (
            h.tick("demo_flexpos").success and h._run("demo_flexpos", start=start, end=end).success  # noqa: SLF001
        )

    return list_after_embedded_run(
        tmp_path_factory.mktemp("embedded"), SANDBOX, environment, tick_then_backfill
    )


def sensor_on(tmp) -> str:
    """demo_flexpos with its sensor running from the start, at the shortest interval (1 min)."""
    raw = yaml.safe_load((INTEGRATIONS_DIR / "demo_flexpos.yaml").read_text())
    raw["schedule"].update(enabled=True, interval_minutes=1)
    path = tmp / "integrations" / "demo_flexpos.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(raw))
    return path


def test_daemon_runs_the_sensor_retries_a_dead_run_worker_and_a_backfill(
    truth, tmp_path, monkeypatch, request
):
    with SandboxServer(**SANDBOX) as sandbox, scratch_database() as postgres_url:
        env = environment(tmp_path, sandbox.url, integrations=sensor_on(tmp_path))
        production_settings(env, postgres_url, request)
        monkeypatch.setenv("MEMBERFLOW_POSTGRES_URL", postgres_url)
        home, logs, port = tmp_path / "home", tmp_path / "logs", free_port()
        killed: list[int] = []
        sensor_runs = dg.RunsFilter(tags={"dagster/sensor_name": SENSOR})

        def kill_run_worker(_path: str) -> None:
            """The daemon's process group: the daemon, its code server and the run worker."""
            (run,) = instance.get_runs(filters=sensor_runs)
            pid = recovery.reported_worker_pid(instance, run.run_id) or 0
            stack.kill("daemon")
            killed.append(pid)

        # the fifth upsert of the sensor's run applied on the list, then its run worker dies
        hook = sandbox.faults.after_answer("/members/upsert", kill_run_worker, skip=4)
        laps = [("start", time.monotonic())]
        stack = start_stack(
            home, logs, workers=2, port=port, env=env, overrides={"run_monitoring": MONITORING}
        )
        try:
            instance = dg.DagsterInstance.from_config(str(home))
            first = wait_until(
                "the daemon's sensor tick launched a run",
                lambda: next(iter(instance.get_runs(filters=sensor_runs)), None),
                logs,
                TIMEOUT,
            )
            laps.append(("sensor tick launched the run", time.monotonic()))
            wait_until("the run worker was killed", lambda: killed, logs, TIMEOUT)
            laps.append(("run worker killed mid-delivery", time.monotonic()))
            assert hook.fired == 1 and killed[0]
            assert not recovery.same_process_alive(killed[0], None)
            stack.start_daemon()  # the deployment comes back

            wait_for(instance, [first.run_id], logs, TIMEOUT)
            dead = instance.get_run_by_id(first.run_id)
            assert dead.status == dg.DagsterRunStatus.FAILURE
            failure = instance.all_logs(first.run_id, of_type=dg.DagsterEventType.RUN_FAILURE)
            # failed by run monitoring: the launcher's health check judged the reported pid (the
            # sensors leave a shared instance's daemon-launched runs to it)
            message = failure[-1].message
            assert f"run worker (pid {killed[0]} on" in message, message
            retry = wait_until(
                "run_retries re-executed the failed run",
                lambda: next(
                    iter(
                        instance.get_runs(
                            filters=dg.RunsFilter(tags={"dagster/parent_run_id": first.run_id})
                        )
                    ),
                    None,
                ),
                logs,
                TIMEOUT,
            )
            laps.append(
                (
                    "run failed by run monitoring, retry created",
                    time.monotonic(),
                )
            )
            # the backfill, launched as the UI does while the retry waits in the queue: the daemon
            # starts it after the retry (one run per list, the queue's order)
            client = webserver_client(port, timeout=TIMEOUT)
            (job,) = client._get_repo_locations_and_names_with_pipeline(JOB)  # noqa: SLF001
            answer = client._execute(  # noqa: SLF001 - the UI's own mutation
                LAUNCH_BACKFILL,
                {
                    "params": {
                        "selector": {
                            "partitionSetName": f"{JOB}_partition_set",
                            "repositorySelector": {
                                "repositoryLocationName": job.repository_location_name,
                                "repositoryName": job.repository_name,
                            },
                        },
                        "partitionNames": backfill_days(),
                    }
                },
            )["launchPartitionBackfill"]
            assert answer["__typename"] == "LaunchBackfillSuccess", answer
            backfill_id = answer["backfillId"]
            laps.append(("backfill launched", time.monotonic()))
            wait_for(instance, [retry.run_id], logs, TIMEOUT)
            laps.append(("retry succeeded", time.monotonic()))
            retried = instance.get_run_by_id(retry.run_id)
            assert retried.status == dg.DagsterRunStatus.SUCCESS
            assert retried.tags["memberflow/list"] == dead.tags["memberflow/list"]
            # the sensor's run went through the Celery workers
            celery = [
                e
                for e in instance.all_logs(first.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)
                if "Celery worker" in (e.dagster_event.engine_event_data.metadata or {})
            ]
            assert celery

            def backfill_runs_done():
                runs = instance.get_runs(filters=dg.RunsFilter.for_backfill(backfill_id))
                return runs if runs and all(r.is_finished for r in runs) else None

            runs = wait_until("the daemon ran the backfill", backfill_runs_done, logs, TIMEOUT)
            (backfill_run,) = runs  # one run for the range: the single-run backfill policy
            assert backfill_run.status == dg.DagsterRunStatus.SUCCESS
            assert backfill_run.tags["memberflow/list"] == "heyloyalty_demo_4711"
            assert backfill_run.tags["dagster/asset_partition_range_start"] == backfill_days()[0]
            ended = instance.get_run_record_by_id(retry.run_id).end_time
            assert instance.get_run_record_by_id(backfill_run.run_id).start_time >= ended
            laps.append(("backfill succeeded", time.monotonic()))
            # the list holds what the embedded default puts there: nothing lost, nothing twice
            assert list_state(sandbox).differences(truth) == {}
            instance.dispose()
        finally:
            stack.stop()
            spent = resource.getrusage(resource.RUSAGE_CHILDREN)
            print(f"stack CPU {spent.ru_utime + spent.ru_stime:.1f} s (reaped processes); laps:")
            for (_, before), (name, at) in zip(laps, laps[1:], strict=False):
                print(f"  {at - before:6.1f} s  {name}")
