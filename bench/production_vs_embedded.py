"""The demo's initial imports (every demo integration, its whole history) on the embedded default
and on the production profile, each on a fresh sandbox of the same seed: wall time side by side.

Embedded: one process, SQLite instance, in-process executor, integrations one after the other (as
`memberflow demo`). Production: PostgreSQL instance, daemon, webserver and two dagster-celery
workers (RabbitMQ), all imports queued at once (one run per list at a time; steps on any worker).
Needs MEMBERFLOW_CELERY_BROKER and a PostgreSQL server (a scratch database is created and dropped).

    python bench/production_vs_embedded.py --customers 300
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path

import dagster as dg
import psycopg2
from kombu import Connection

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app import production, runner  # noqa: E402
from app.demo import demo_files, prepare_environment  # noqa: E402
from memberflow.config import load_all  # noqa: E402
from pipelines.factory import build_definitions  # noqa: E402
from sandbox.server import SandboxServer  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def point_at_sandbox(sandbox_url: str, data_dir: Path) -> None:
    """The demo's environment (sandbox URL, credentials, demo-sized settings) and a data dir."""
    prepare_environment(sandbox_url)
    os.environ["MEMBERFLOW_DATA_DIR"] = str(data_dir)


def embedded(customers: int, seed: int, tmp: Path) -> tuple[float, bool]:
    os.environ["DAGSTER_HOME"] = str(tmp / "embedded-home")
    runner.ensure_dagster_home()
    with SandboxServer(seed=seed, customers=customers) as sandbox:
        point_at_sandbox(sandbox.url, tmp / "embedded-data")
        integrations = load_all(demo_files())
        defs = build_definitions(integrations)
        ok = True
        with dg.DagsterInstance.get() as instance:
            started = time.monotonic()
            for integration in integrations:
                window = {}
                if integration.tracking:
                    window = {"start": integration.schedule.history_start, "end": date.today()}
                ok &= runner.run_sync(defs, integration, instance, quiet=True, **window).success
            return time.monotonic() - started, ok


def production_profile(customers: int, seed: int, tmp: Path) -> tuple[float, float, bool]:
    name = f"memberflow_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(
        dbname="postgres", host="127.0.0.1", user=os.environ.get("PGUSER", "root")
    )
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{name}"')
    os.environ["MEMBERFLOW_POSTGRES_URL"] = (
        f"postgresql+psycopg2://{admin.info.user}@127.0.0.1:5432/{name}"
    )
    os.environ["MEMBERFLOW_CELERY_QUEUE"] = f"bench-{name}"
    os.environ.pop("DAGSTER_HOME", None)
    try:
        with SandboxServer(seed=seed, customers=customers) as sandbox:
            point_at_sandbox(sandbox.url, tmp / "production-data")
            os.environ["MEMBERFLOW_INTEGRATIONS"] = os.pathsep.join(map(str, demo_files()))
            home = tmp / "production-home"
            port = free_port()
            up = time.monotonic()
            stack = production.start_stack(home, tmp / "production-logs", workers=2, port=port)
            try:
                client = production.webserver_client(port)
                ready = time.monotonic() - up
                instance = dg.DagsterInstance.from_config(str(home))
                started = time.monotonic()
                runs = production.submit_initial_imports(client, load_all(), date.today())
                while not all(instance.get_run_by_id(r).is_finished for r in runs.values()):
                    time.sleep(1)
                wall = time.monotonic() - started
                ok = all(
                    instance.get_run_by_id(r).status == dg.DagsterRunStatus.SUCCESS
                    for r in runs.values()
                )
                instance.dispose()
                return wall, ready, ok
            finally:
                stack.stop()
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        with Connection(os.environ["MEMBERFLOW_CELERY_BROKER"]) as broker:
            broker.default_channel.queue_delete(os.environ["MEMBERFLOW_CELERY_QUEUE"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=300)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    os.environ.setdefault("MEMBERFLOW_CELERY_BROKER", "pyamqp://guest:guest@127.0.0.1:5672//")
    with tempfile.TemporaryDirectory(prefix="memberflow-bench-") as tmp:
        e_wall, e_ok = embedded(args.customers, args.seed, Path(tmp))
        p_wall, p_ready, p_ok = production_profile(args.customers, args.seed, Path(tmp))
    sys.stdout.write(
        f"embedded (SQLite, in-process): {e_wall:.0f} s, all succeeded: {e_ok}\n"
        f"production (PostgreSQL, 2 Celery workers): {p_wall:.0f} s, all succeeded: {p_ok} "
        f"(+{p_ready:.0f} s to start the stack)\n"
    )


if __name__ == "__main__":
    main()
