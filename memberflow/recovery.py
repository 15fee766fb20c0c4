"""Recovery after a killed run: a run whose process died never blocks its list (issue 6, item 6).

A run executed in-process (`memberflow sync`, the demo, tests) that is killed with -9 stays
STARTED in the Dagster instance and keeps its pool slot: the next run on the list waits forever
for the slot and the sensor skips every tick because "a run is still in flight". Dagster's run
monitoring (dagster.yaml) covers runs the daemon launched; it cannot see in-process runs, whose
worker is whatever process called `execute_in_process`. So every in-process run carries who runs
it (`memberflow/host`, `memberflow/pid` and the process's start time, set at launch by
`app.runner`), and `recover` — called before every in-process run, at the start of every
sensor tick and by `memberflow recover` — finds in-flight runs of this host whose process is
gone (and daemon-launched runs whose worker pid is gone, which Dagster's DefaultRunLauncher
cannot health-check: on a local SQLite instance all of them, on PostgreSQL those launched on this
machine by memberflow.run_launcher, whose health check lets the daemon do the same by itself),
marks them failed with a message saying so, frees their pool slots (on PostgreSQL the daemon
does, after `free_slots_after_run_end_seconds`: a step of the run may still run on a Celery
worker), and removes the landing temp files a dead run left behind.

Cheap when there is nothing to do: one run-records query of the runs in flight.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from memberflow import landing

log = logging.getLogger(__name__)

HOST_TAG = "memberflow/host"
PID_TAG = "memberflow/pid"
PROCESS_START_TAG = "memberflow/process_start"  # tells a reused pid from the run's own process

# A run that may still have a live worker: these hold (or wait for) pool slots.
IN_FLIGHT = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass
class RecoveredRun:
    """A run found dead and what was done about it."""

    run_id: str
    job_name: str
    pid: int
    slots_freed: list[str] = field(default_factory=list)  # "<pool>:<step>" claimed by the run
    pending_dropped: list[str] = field(default_factory=list)  # steps it was still waiting on
    slots_left_to_daemon: bool = False  # a shared instance: run monitoring frees them later

    def describe(self) -> str:
        freed = "freed " + (", ".join(self.slots_freed) or "no slot held")
        if self.slots_left_to_daemon:
            freed = "the daemon frees its pool slots after free_slots_after_run_end_seconds"
        line = f"run {self.run_id} ({self.job_name}, pid {self.pid}): marked failed; {freed}"
        if self.pending_dropped:
            line += f"; dropped its wait for {', '.join(self.pending_dropped)}"
        return line


@dataclass
class Recovery:
    """What one `recover` call did."""

    runs: list[RecoveredRun] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # orphan landing temp files and folders

    def lines(self) -> list[str]:
        out = [r.describe() for r in self.runs]
        return out + [
            f"{path} (its backfill was killed mid-swap)"
            if path.startswith("restored ")
            else f"removed orphan landing temp {path}"
            for path in self.removed
        ]


def run_tags() -> dict[str, str]:
    """Tags naming this process as the worker of an in-process run (set at launch)."""
    tags = {HOST_TAG: hostname(), PID_TAG: str(os.getpid())}
    started = process_start(os.getpid())
    if started is not None:
        tags[PROCESS_START_TAG] = started
    return tags


def hostname() -> str:
    return socket.gethostname()


def recover(
    instance: dg.DagsterInstance, *, sweep_landing: bool = True, shared_instance: bool = True
) -> Recovery:
    """Fail in-flight runs whose worker process is gone, free their slots, sweep temp files.

    Judged: runs tagged with this host (in-process runs), and, on a local SQLite instance
    (whose run workers all run on this machine), daemon-launched runs by the pid their worker
    reported. `sweep_landing=False` sweeps only when a dead run was found (the sensor's path).
    `shared_instance=False` (the sensors' path) leaves the daemon-launched runs of a shared
    instance (PostgreSQL) to the daemon's run monitoring, which judges them with the same check
    (memberflow/run_launcher.py), instead of reading their logs again at every sensor tick.
    """
    outcome = Recovery()
    local = _single_host(instance)
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=IN_FLIGHT)):
        run = record.dagster_run
        if run.tags.get(HOST_TAG) == hostname():
            dead = not worker_alive(run.tags)
            pid = int(run.tags.get(PID_TAG, 0) or 0)
        elif (
            HOST_TAG not in run.tags
            and (local or (shared_instance and launched_here(run)))
            and run.status == dg.DagsterRunStatus.STARTED
        ):
            pid = reported_worker_pid(instance, run.run_id) or 0
            dead = bool(pid) and not same_process_alive(pid, record.start_time)
        else:
            continue  # another host's run, or no worker known yet: run monitoring's to judge
        if dead:
            # on a shared instance a step of the run may still run on a Celery worker: its pool
            # slot is freed by the daemon after run_monitoring's free_slots_after_run_end_seconds
            outcome.runs.append(_fail_and_free(instance, run, pid, free_slots=local))
    if sweep_landing or outcome.runs:
        outcome.removed = sweep_orphan_temp_files(instance)
    for line in outcome.lines():
        log.warning("recovery: %s", line)
    return outcome


def launched_here(run: dg.DagsterRun) -> bool:
    """Launched by memberflow's run launcher (deploy/dagster.production.yaml) on this machine,
    through a code server here: its worker process runs on this machine."""
    from memberflow.run_launcher import worker_here

    return worker_here(run) is None


def _single_host(instance: dg.DagsterInstance) -> bool:
    """A SQLite instance lives on one machine's disk, so every run worker of it runs here."""
    from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage

    return isinstance(instance.run_storage, SqliteRunStorage)


def reported_worker_pid(instance: dg.DagsterInstance, run_id: str) -> int | None:
    """The pid a launched run's worker reported ("Started process for run (pid: N).")."""
    for event in instance.all_logs(run_id, of_type=dg.DagsterEventType.ENGINE_EVENT):
        if not (event.message or "").startswith("Started process for run"):
            continue
        data = event.dagster_event.engine_event_data if event.dagster_event else None
        pid = data.metadata.get("pid") if data else None
        if pid is not None:
            return int(pid.value)
    return None


def same_process_alive(pid: int, run_started: float | None) -> bool:
    """Alive, and not a newer process that reused the pid after the run began."""
    if not _pid_running(pid):
        return False
    started = process_started_at(pid)
    return started is None or run_started is None or started <= run_started + 1


def worker_alive(tags: dict[str, str]) -> bool:
    """Whether the process named by a run's tags still runs (and is that same process)."""
    try:
        pid = int(tags[PID_TAG])
    except (KeyError, ValueError):
        return True  # not ours to judge: no pid recorded
    if not _pid_running(pid):
        return False
    recorded = tags.get(PROCESS_START_TAG)
    current = process_start(pid)
    return recorded is None or current is None or recorded == current


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return _proc_state(pid) != "Z"  # a zombie is dead, only not yet reaped by its parent


def process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), None elsewhere."""
    fields = _proc_stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None


def process_started_at(pid: int) -> float | None:
    """When the process started, as a Unix timestamp (Linux /proc), None elsewhere."""
    ticks = process_start(pid)
    try:
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime ")
        )
    except (OSError, StopIteration):
        return None
    return None if ticks is None else boot + int(ticks) / os.sysconf("SC_CLK_TCK")


def _proc_state(pid: int) -> str | None:
    fields = _proc_stat_fields(pid)
    return fields[0] if fields else None


def _proc_stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (which may hold spaces): state is field 0."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _fail_and_free(
    instance: dg.DagsterInstance, run: dg.DagsterRun, pid: int, free_slots: bool = True
) -> RecoveredRun:
    recovered = RecoveredRun(
        run_id=run.run_id, job_name=run.job_name, pid=pid, slots_left_to_daemon=not free_slots
    )
    storage = instance.event_log_storage
    if free_slots and storage.supports_global_concurrency_limits:
        for key in sorted(storage.get_concurrency_keys()):
            info = storage.get_concurrency_info(key)
            recovered.slots_freed += [
                f"{key}:{s.step_key}" for s in info.claimed_slots if s.run_id == run.run_id
            ]
            recovered.pending_dropped += [  # steps still waiting; an assigned one also claims
                f"{key}:{p.step_key}"
                for p in info.pending_steps
                if p.run_id == run.run_id and p.assigned_timestamp is None
            ]
    slots = (
        "freed its pool slots"
        if free_slots
        else "the daemon frees its pool slots after free_slots_after_run_end_seconds"
    )
    instance.report_run_failed(
        run,
        f"The process running this run (pid {pid} on {run.tags.get(HOST_TAG, hostname())}) is "
        f"gone: it was killed or crashed. memberflow marked the run failed and {slots}, so the "
        "next run on the list can start and pick up from what was recorded.",
    )
    if free_slots and storage.supports_global_concurrency_limits:
        storage.free_concurrency_slots_for_run(run.run_id)
    return recovered


def sweep_orphan_temp_files(instance: dg.DagsterInstance) -> list[str]:
    """Remove `*.tmp` files and `.incoming-*` folders under the landing dir that no live run
    can own: older than the start of every run still in flight (on any host), or all of them
    when none is. A live run's own temp files are always newer than its start."""
    root = landing.data_dir() / "landing"
    if not root.exists():
        return []
    cutoff = _oldest_live_start(instance)
    removed = []
    for path in [*root.rglob("*.tmp"), *root.rglob(".incoming-*")]:
        if not path.exists() or _newest_mtime(path) >= cutoff:
            continue
        if path.is_dir():
            removed += [f"restored {day}" for day in landing.undo_interrupted_swap(path)]
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(str(path))
    return sorted(removed)


def _oldest_live_start(instance: dg.DagsterInstance) -> float:
    records = instance.get_run_records(filters=dg.RunsFilter(statuses=IN_FLIGHT))
    starts = [r.start_time or r.create_timestamp.timestamp() for r in records]
    return min(starts, default=time.time())


def _newest_mtime(path: Path) -> float:
    if not path.is_dir():
        return path.stat().st_mtime
    times = [path.stat().st_mtime] + [p.stat().st_mtime for p in path.rglob("*")]
    return max(times)
