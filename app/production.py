"""The production profile on one machine: PostgreSQL instance, daemon, webserver, Celery workers.

Dagster's own parts, started as their own processes: `dagster-daemon` (queued runs, sensors,
run retries), `dagster-webserver`, and `dagster-celery worker`s that execute the steps. This module
writes the instance's `dagster.yaml` (deploy/dagster.production.yaml) and the workers' Celery config
into DAGSTER_HOME and starts or stops those processes; it holds no credentials (env vars only).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from memberflow.config import REPO_ROOT
from pipelines import executor

PRODUCTION_YAML = REPO_ROOT / "deploy" / "dagster.production.yaml"
WORKSPACE = REPO_ROOT / "workspace.yaml"
POSTGRES_SCHEME = "postgresql+psycopg2"
REQUIRED_ENV = ("MEMBERFLOW_POSTGRES_URL", executor.BROKER_ENV)


class MissingSetting(RuntimeError):
    """An env var the production profile needs is not set."""


def check_environment(env: dict[str, str] | None = None) -> None:
    env = dict(os.environ if env is None else env)
    missing = [name for name in REQUIRED_ENV if not env.get(name)]
    if missing:
        raise MissingSetting(
            "the production profile needs "
            + ", ".join(missing)
            + f" (e.g. MEMBERFLOW_POSTGRES_URL={POSTGRES_SCHEME}://user:password@host:5432/"
            "memberflow, MEMBERFLOW_CELERY_BROKER=pyamqp://user:password@host:5672//)"
        )
    if not env["MEMBERFLOW_POSTGRES_URL"].startswith(f"{POSTGRES_SCHEME}://"):
        # dagster-postgres ships psycopg2; a bare postgresql:// would ask SQLAlchemy for psycopg 3
        raise MissingSetting(f"MEMBERFLOW_POSTGRES_URL must start with {POSTGRES_SCHEME}://")


def prepare_home(home: Path, overrides: dict | None = None) -> Path:
    """DAGSTER_HOME with the production dagster.yaml and the workers' celery.yaml; returns the
    latter. Both hold `env:` references, never a credential. `overrides` replaces keys of a
    top-level section of dagster.yaml (e.g. a shorter `run_monitoring.poll_interval_seconds`)."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(PRODUCTION_YAML, home / "dagster.yaml")
    if overrides:
        config = yaml.safe_load(PRODUCTION_YAML.read_text())
        for section, values in overrides.items():
            config[section] = {**config.get(section, {}), **values}
        (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    celery_yaml = home / "celery.yaml"
    celery_yaml.write_text(yaml.safe_dump({"execution": {"config": executor.celery_config()}}))
    return celery_yaml


def production_env(home: Path, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of every production process: the instance, the Celery executor, and the
    bookkeeping variables the embedded default also sets."""
    from app.runner import DAGSTER_BOOKKEEPING_ENV

    env = dict(os.environ if base is None else base)
    for name, value in DAGSTER_BOOKKEEPING_ENV.items():
        env.setdefault(name, value)
    env["DAGSTER_HOME"] = str(home)
    # `dagster-celery worker start` runs `celery` from PATH: this environment's
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env[executor.EXECUTOR_ENV] = "celery"
    env.setdefault(executor.QUEUE_ENV, executor.celery_queue())
    return env


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@dataclass
class Stack:
    """The processes of a production deployment on this machine, started in order, stopped
    together."""

    home: Path
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = (self.logs / f"{name}.log").open("ab")
        process = subprocess.Popen(
            command,
            env=self.env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `dagster-celery` forks `celery`
        )
        self.processes[name] = process
        return process

    def start_worker(self, name: str) -> subprocess.Popen:
        """One `dagster-celery` worker running one step at a time in its own process (solo
        pool): killing it kills its step, whose message the broker then gives another worker."""
        celery_yaml = self.home / "celery.yaml"
        queue = self.env[executor.QUEUE_ENV]
        command = [_bin("dagster-celery"), "worker", "start", "-A", "dagster_celery.app"]
        # Celery node names are unique per broker: two deployments on one broker (or a test
        # beside `make prod`) must not share one, so the queue is part of it
        command += ["-y", str(celery_yaml), "-q", queue, "-n", f"{name}-{queue}", "--"]
        command += ["--pool", "solo", "--without-gossip", "--without-mingle"]
        return self._start(name, command)

    def start_daemon(self) -> subprocess.Popen:
        return self._start("daemon", [_bin("dagster-daemon"), "run", "-w", str(WORKSPACE)])

    def start_webserver(self, port: int) -> subprocess.Popen:
        command = [_bin("dagster-webserver"), "-w", str(WORKSPACE), "-p", str(port)]
        return self._start("webserver", command + ["-h", "127.0.0.1"])

    def kill(self, name: str) -> None:
        """kill -9 of the process and its children, as a lost machine would."""
        _signal_group(self.processes[name], signal.SIGKILL)
        self.processes[name].wait()

    def stop(self) -> None:
        for process in self.processes.values():
            _signal_group(process, signal.SIGTERM)
        for process in self.processes.values():
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                _signal_group(process, signal.SIGKILL)
                process.wait()


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def start_stack(
    home: Path,
    logs: Path,
    workers: int = 2,
    port: int | None = 3000,
    env: dict[str, str] | None = None,
    overrides: dict | None = None,
) -> Stack:
    """Daemon, `workers` Celery workers and (with a port) the webserver, on the instance in home;
    each process's output in logs/<name>.log. `env` (default: this process's) is their base
    environment; `overrides` changes dagster.yaml's settings (prepare_home)."""
    check_environment(env)
    prepare_home(home, overrides)
    stack = Stack(home=home, env=production_env(home, env), logs=logs)
    for number in range(1, workers + 1):
        stack.start_worker(f"worker{number}")
    stack.start_daemon()
    if port is not None:
        stack.start_webserver(port)
    return stack


def webserver_client(port: int, timeout: float = 300.0):
    """Dagster's GraphQL client on the stack's webserver, once it answers with the code loaded."""
    import time

    from dagster_graphql import DagsterGraphQLClient

    client = DagsterGraphQLClient("127.0.0.1", port_number=port)
    deadline = time.monotonic() + timeout
    while True:
        try:
            client._execute("{ version }")  # noqa: SLF001 - the cheapest query there is
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def submit_initial_imports(client, integrations, end) -> dict[str, str]:
    """A backfill over its whole history for every integration (the demo's initial import), each
    queued on the instance as its list's job with the integration's share of the assets, as its
    sensor asks; returns run ids by integration name. Runs of one list wait for each other; the
    daemon starts the rest together."""
    from assets import naming
    from pipelines.factory import build_definitions
    from pipelines.list_jobs import integration_selection, sync_job_name

    defs = build_definitions(integrations)
    runs = {}
    for integration in integrations:
        tags = {naming.LIST_TAG: integration.list_key, naming.INTEGRATION_TAG: integration.name}
        if integration.tracking:
            tags["dagster/asset_partition_range_start"] = (
                integration.schedule.history_start.isoformat()
            )
            tags["dagster/asset_partition_range_end"] = end.isoformat()
        job = defs.resolve_job_def(sync_job_name(defs, integration))
        runs[integration.name] = client.submit_job_execution(
            job.name, tags=tags, asset_selection=integration_selection(job, integration)
        )
    return runs
