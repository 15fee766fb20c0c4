"""What the production-profile tests share: this machine's PostgreSQL and RabbitMQ, a scratch
database and Celery queue per test, the stack's environment, and waiting on runs."""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections.abc import Iterable
from contextlib import closing, contextmanager
from pathlib import Path

import dagster as dg
import psycopg2
import pytest

from memberflow.config import INTEGRATIONS_DIR
from sandbox.credentials import SANDBOX_ENV

POSTGRES = {"host": "127.0.0.1", "port": 5432, "user": os.environ.get("PGUSER", "root")}
BROKER = os.environ.get("MEMBERFLOW_TEST_BROKER", "pyamqp://guest:guest@127.0.0.1:5672//")


def _reachable(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module", autouse=True)
def services() -> None:
    """PostgreSQL and RabbitMQ of this machine (`.ci/run` starts them): absent, the tests skip
    locally and fail in CI."""
    absent = [
        name for name, port in (("PostgreSQL", 5432), ("RabbitMQ", 5672)) if not _reachable(port)
    ]
    if absent:
        reason = (
            f"{', '.join(absent)} not running on 127.0.0.1 (scripts/ensure_services.sh starts them)"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@contextmanager
def scratch_database():
    """A PostgreSQL database of its own for one test run, dropped after."""
    name = f"memberflow_test_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(dbname="postgres", **POSTGRES)
    admin.autocommit = True
    with closing(admin):
        admin.cursor().execute(f'CREATE DATABASE "{name}"')
        try:
            user = POSTGRES["user"]
            yield f"postgresql+psycopg2://{user}@{POSTGRES['host']}:{POSTGRES['port']}/{name}"
        finally:
            admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def delete_queue(name: str) -> None:
    """This run's Celery queue, which RabbitMQ would otherwise keep."""
    from kombu import Connection

    with Connection(BROKER) as connection:
        connection.default_channel.queue_delete(name)


def environment(tmp: Path, sandbox_url: str, integrations: Path | None = None) -> dict[str, str]:
    """The stack's environment: the sandbox's credentials, a data dir of the test's own and the
    integration file (default: demo_flexpos as shipped)."""
    env = dict(os.environ)
    env.update(SANDBOX_ENV)
    env.update(
        MEMBERFLOW_DATA_DIR=str(tmp / "data"),
        MEMBERFLOW_SANDBOX_URL=sandbox_url,
        MEMBERFLOW_INTEGRATIONS=str(integrations or INTEGRATIONS_DIR / "demo_flexpos.yaml"),
        MEMBERFLOW_PACING="off",
        PYTHONPATH=str(Path(__file__).resolve().parents[1]),
    )
    return env


def production_settings(env: dict[str, str], postgres_url: str, request) -> None:
    """The scratch database and a Celery queue of the test's own (deleted after) in `env`."""
    env.update(
        MEMBERFLOW_POSTGRES_URL=postgres_url,
        MEMBERFLOW_CELERY_BROKER=BROKER,
        MEMBERFLOW_CELERY_QUEUE=f"memberflow-test-{uuid.uuid4().hex[:8]}",
    )
    request.addfinalizer(lambda: delete_queue(env["MEMBERFLOW_CELERY_QUEUE"]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stack_logs(logs: Path) -> dict[str, str]:
    """The tail of every process's log, for a failure message."""
    return {p.name: p.read_text()[-1500:] for p in sorted(logs.glob("*.log"))}


def wait_for(instance: dg.DagsterInstance, run_ids: Iterable[str], logs: Path, timeout: float):
    """Until every run has finished; fails with the stack's logs after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [instance.get_run_by_id(r) for r in run_ids]
        if all(run and run.is_finished for run in runs):
            return
        time.sleep(1)
    pytest.fail(f"runs not finished after {timeout}s: {stack_logs(logs)}")


def wait_until(what: str, check, logs: Path, timeout: float):
    """Until `check()` returns something true, which is returned; fails with the logs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(1)
    pytest.fail(f"{what}: not after {timeout}s: {stack_logs(logs)}")
