from __future__ import annotations

import dagster as dg
import pytest

from tests.harness import Harness

# As in the project's dagster.yaml: the vendor clients' retry log lines reach the run's log.
INSTANCE_OVERRIDES = {
    "python_logs": {"managed_python_loggers": ["resources.http"], "python_log_level": "INFO"}
}


@pytest.fixture
def sandbox():
    """A fresh sandbox per test: 150 generated customers over 120 days, no throttling."""
    from sandbox.server import SandboxServer

    with SandboxServer(seed=7, customers=150, days=120, rate_limits=False) as server:
        yield server


@pytest.fixture
def harness(sandbox, tmp_path, monkeypatch) -> Harness:
    """Environment pointed at the sandbox, demo credentials, and an isolated Dagster instance."""
    from sandbox.credentials import SANDBOX_ENV

    monkeypatch.setenv("MEMBERFLOW_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("MEMBERFLOW_SANDBOX_URL", sandbox.url)
    # Per-second pacing has its own tests (test_pacing, the client tests) and paces `make demo`;
    # end-to-end tests run unpaced, as before it, meeting the sandbox's limits as 429s.
    monkeypatch.setenv("MEMBERFLOW_PACING", "off")
    for name, value in SANDBOX_ENV.items():
        monkeypatch.setenv(name, value)
    with dg.instance_for_test(overrides=INSTANCE_OVERRIDES) as instance:
        yield Harness(tmp=tmp_path, sandbox=sandbox, instance=instance)
