"""Dagster's default run launcher, with the run-worker health check it lacks on one machine.

`DefaultRunLauncher` (every run worker a process of a code server on this machine) answers
`supports_check_run_worker_health = False` in the pinned Dagster, so run monitoring cannot tell a
run whose worker process died from a slow one: such a run stays STARTED and holds its target
list (the `memberflow/list` run limit) and its pool slots until someone force-terminates it. The
code server that started the worker fails the run itself when it sees its child die, but only
while that code server lives; when both go (a restart of the deployment, the OOM killer, a
`kill -9` of the daemon's process group), nothing does.

This launcher launches exactly like the default one, tags each run with the machine that
launched it, and answers Dagster's health check for the runs whose worker runs on this machine:
the worker's pid is the one it reported when it started ("Started process for run (pid: N)"). A
run whose worker is gone is then failed by the daemon's run monitoring within one
`poll_interval_seconds`, its list is free again, its pool slots are freed after
`free_slots_after_run_end_seconds`, and `run_retries` re-executes it from its failure. A run
launched on another machine, or one whose worker has not reported yet, is reported RUNNING (not
judged), which is what the default launcher amounts to.
"""

from __future__ import annotations

import json

from dagster import DagsterRun, DefaultRunLauncher
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, WorkerStatus
from dagster._core.storage.tags import GRPC_INFO_TAG

from memberflow import recovery

LAUNCH_HOST_TAG = "memberflow/launch_host"
LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", ""}


class LocalRunLauncher(DefaultRunLauncher):
    """DefaultRunLauncher plus `check_run_worker_health` by pid for this machine's run workers."""

    def launch_run(self, context: LaunchRunContext) -> None:
        self._instance.add_run_tags(
            context.dagster_run.run_id, {LAUNCH_HOST_TAG: recovery.hostname()}
        )
        super().launch_run(context)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: DagsterRun) -> CheckRunHealthResult:
        where = worker_here(run)
        if where is not None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"not judged: {where}")
        pid = recovery.reported_worker_pid(self._instance, run.run_id)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.RUNNING, "not judged: no worker pid yet")
        record = self._instance.get_run_record_by_id(run.run_id)
        started = record.start_time if record else None
        if recovery.same_process_alive(pid, started):
            return CheckRunHealthResult(WorkerStatus.RUNNING, f"run worker pid {pid} is running")
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"the run worker (pid {pid} on {recovery.hostname()}) is gone: it was killed or "
            "crashed, and so was the code server that started it",
        )


def worker_here(run: DagsterRun) -> str | None:
    """None when the run's worker runs on this machine (launched here through a local code
    server); else why it cannot be judged from here."""
    launched_on = run.tags.get(LAUNCH_HOST_TAG)
    if launched_on != recovery.hostname():
        return f"launched on {launched_on or 'an unknown machine'}"
    try:
        grpc = json.loads(run.tags.get(GRPC_INFO_TAG) or "{}")
    except ValueError:
        grpc = {}
    if not grpc:
        return "no code server recorded"
    if "socket" not in grpc and str(grpc.get("host", "")) not in LOCAL_HOSTS | {
        recovery.hostname()
    }:
        return f"its code server runs on {grpc.get('host')}"
    return None
