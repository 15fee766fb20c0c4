from __future__ import annotations

import os
import tempfile
from pathlib import Path

import dagster as dg
import pytest

from tests.harness import Harness


def _memory_tmpdir() -> None:
    """Temporary files of the tests (tmp_path, every Dagster test instance, the subprocesses')
    in RAM when the machine has /dev/shm: the SQLite event log of a run commits (fsyncs) once
    per event, ~1,100 events for one 130-day backfill, and on a disk shared by other processes
    each fsync waited 0.1-0.2 s (a one-test run: 200 s wall for 30 s CPU). Same code, same
    SQLite and DuckDB files; only where they live. MEMBERFLOW_TEST_TMPDIR picks another place
    ("" keeps the system's)."""
    wanted = os.environ.get("MEMBERFLOW_TEST_TMPDIR", "/dev/shm")
    if not wanted or not os.access(wanted, os.W_OK):
        return
    base = Path(wanted) / f"memberflow-tests-{os.getuid()}"
    base.mkdir(mode=0o700, exist_ok=True)
    os.environ["TMPDIR"] = str(base)  # subprocesses (sync runs, Dagster UI, receivers) too
    tempfile.tempdir = str(base)


_memory_tmpdir()

# As in the project's dagster.yaml: the vendor clients' retry log lines reach the run's log.
INSTANCE_OVERRIDES = {
    "python_logs": {"managed_python_loggers": ["resources.http"], "python_log_level": "INFO"}
}


SANDBOX = {"seed": 7, "customers": 150, "days": 120, "rate_limits": False}


@pytest.fixture
def sandbox():
    """A fresh sandbox per test: 150 generated customers over 120 days, no throttling."""
    from sandbox.server import SandboxServer

    with SandboxServer(**SANDBOX) as server:
        yield server


def point_at(mp: pytest.MonkeyPatch, data_dir: Path, sandbox_url: str) -> None:
    """Environment pointed at the sandbox, with demo credentials and its own data dir."""
    from sandbox.credentials import SANDBOX_ENV

    mp.setenv("MEMBERFLOW_DATA_DIR", str(data_dir))
    mp.setenv("MEMBERFLOW_SANDBOX_URL", sandbox_url)
    # Per-second pacing has its own tests (test_pacing, the client tests) and paces `make demo`;
    # end-to-end tests run unpaced, as before it, meeting the sandbox's limits as 429s.
    mp.setenv("MEMBERFLOW_PACING", "off")
    for name, value in SANDBOX_ENV.items():
        mp.setenv(name, value)


@pytest.fixture
def harness(sandbox, tmp_path, monkeypatch) -> Harness:
    """Environment pointed at the sandbox, demo credentials, and an isolated Dagster instance."""
    point_at(monkeypatch, tmp_path / "data", sandbox.url)
    with dg.instance_for_test(overrides=INSTANCE_OVERRIDES) as instance:
        yield Harness(tmp=tmp_path, sandbox=sandbox, instance=instance)


@pytest.fixture(scope="module")
def module_harness(tmp_path_factory) -> Harness:
    """Like `harness`, but one per test module: for tests that only read the result of the same
    run (the module's own fixture makes that run once). Tests that change the sandbox, the
    list or the warehouse take `harness`."""
    from sandbox.server import SandboxServer

    tmp = tmp_path_factory.mktemp("module")
    with (
        SandboxServer(**SANDBOX) as server,
        pytest.MonkeyPatch.context() as mp,
        dg.instance_for_test(overrides=INSTANCE_OVERRIDES) as instance,
    ):
        point_at(mp, tmp / "data", server.url)
        yield Harness(tmp=tmp, sandbox=server, instance=instance)
