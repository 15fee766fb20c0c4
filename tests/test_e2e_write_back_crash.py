"""kill -9 a `memberflow sync demo_admin_flexmail` between a write-back and its bookkeeping, then
run it again: the unsubscribe stays applied (not lost, not retried blindly) and the click is one
communication in Admin, not two (AF4, AF5).

The sync runs as a real subprocess against this test's sandbox; the receiver runs here on the
same data dir, with the Flexmail webhooks registered to it. The sandbox's fault hook kills the
process right after Admin answered the write (`PUT customers` for the unsubscribe, `POST
communications` for the click), before the run can record the result.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from app.receiver import build_app, feedback_hooks_of, register
from memberflow.config import INTEGRATIONS_DIR, REPO_ROOT, load_all
from memberflow.webhook_store import WebhookStore
from sandbox.credentials import SANDBOX_ENV
from sandbox.server import SandboxServer
from tests.asgi import served

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

NAME = "demo_admin_flexmail"
RUN_TIMEOUT = 150


def _integration_file(tmp: Path) -> Path:
    raw = yaml.safe_load((INTEGRATIONS_DIR / f"{NAME}.yaml").read_text())
    raw["target"].update(poll_seconds=0.05, requests_per_minute=None)
    path = tmp / "integrations" / f"{NAME}.yaml"
    path.parent.mkdir(parents=True)
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


def _sync(env: dict[str, str], log: Path, sandbox: SandboxServer, kill_after: tuple | None) -> int:
    command = [sys.executable, "-m", "app.cli", "sync", NAME]
    with log.open("w") as out:
        child = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    hook = None
    if kill_after is not None:
        method, path = kill_after
        hook = sandbox.faults.after_answer(
            path, lambda _path: os.kill(child.pid, signal.SIGKILL), method=method
        )
    try:
        return child.wait(timeout=RUN_TIMEOUT)
    finally:
        sandbox.faults.clear()
        if hook is not None:
            assert hook.fired == 1, (
                f"kill point {kill_after} never reached: {log.read_text()[-3000:]}"
            )


def test_kill_9_between_a_write_back_and_its_bookkeeping(tmp_path, monkeypatch):
    with SandboxServer(seed=11, customers=60, days=30, rate_limits=False) as sandbox:
        admin = sandbox.state.emulator("admin")
        flex = sandbox.state.emulator("flexmail")
        admin.settings["RateLimit"] = 100_000
        flex.import_delay = 0
        flex.webhooks.retry_delays = (0.05, 0.05, 0.05)
        env = dict(os.environ) | SANDBOX_ENV
        env |= {
            "DAGSTER_HOME": str(tmp_path / "home"),
            "MEMBERFLOW_DATA_DIR": str(tmp_path / "data"),
            "MEMBERFLOW_SANDBOX_URL": sandbox.url,
            "MEMBERFLOW_INTEGRATIONS": str(_integration_file(tmp_path)),
        }
        for name in ("MEMBERFLOW_DATA_DIR", "MEMBERFLOW_SANDBOX_URL", *SANDBOX_ENV):
            monkeypatch.setenv(name, env[name])
        (tmp_path / "home").mkdir()
        shutil.copy(REPO_ROOT / "dagster.yaml", tmp_path / "home" / "dagster.yaml")

        assert _sync(env, tmp_path / "first.log", sandbox, None) == 0
        unique = sorted(
            c.email for c in flex.visible() if sum(c.email == d.email for d in flex.visible()) == 1
        )
        on_admin = {
            (c["Email"] or "").strip().lower(): c["CustomerId"]
            for c in admin.customers.values()
            if c["Newsletter"] and c["IsActive"]
        }
        leaver, clicker = [e for e in unique if e in on_admin][:2]
        (integration,) = load_all([Path(env["MEMBERFLOW_INTEGRATIONS"])])
        with served(build_app({}, feedback=feedback_hooks_of([integration]))) as url:
            register([integration], url)
            flex.click(clicker, 7101, "Nieuwsbrief", "https://kantoor.be/fiscaal")
            flex.unsubscribe(leaver)
            store = WebhookStore.for_feedback(NAME)
            deadline = time.monotonic() + 10
            while len(store.pending()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(store.pending()) == 2

        # write-backs go in key order: the click first, then the unsubscribe
        killed = [("POST", "/admin/api/v1/communications"), ("PUT", "/admin/api/v1/customers")]
        for n, point in enumerate(killed):
            code = _sync(env, tmp_path / f"killed-{n}.log", sandbox, point)
            assert code == -signal.SIGKILL, (tmp_path / f"killed-{n}.log").read_text()[-3000:]
        assert _sync(env, tmp_path / "last.log", sandbox, None) == 0

        assert admin.customers[on_admin[leaver]]["Newsletter"] is False
        clicks = [c for c in admin.communications.values() if c["CustomerId"] == on_admin[clicker]]
        assert len(clicks) == 1
        assert leaver not in {c.email for c in flex.visible()}

    # memberflow's event log finds its run databases under $DAGSTER_HOME, as the child's does
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    instance = dg.DagsterInstance.from_config(str(tmp_path / "home"))
    statuses = [
        r.dagster_run.status
        for r in instance.get_run_records(order_by="create_timestamp", ascending=True)
    ]
    assert statuses == [
        dg.DagsterRunStatus.SUCCESS,
        dg.DagsterRunStatus.FAILURE,
        dg.DagsterRunStatus.FAILURE,
        dg.DagsterRunStatus.SUCCESS,
    ]
    import duckdb

    from pipelines.factory import warehouse_path

    with duckdb.connect(str(warehouse_path(integration.list_key)), read_only=True) as conn:
        rows = conn.execute(
            "SELECT action, state, attempts FROM write_backs"
            " WHERE action <> 'create' ORDER BY action"
        ).fetchall()
    # the click: attempted in the first killed run, found at Admin by the second; the unsubscribe:
    # attempted with it, applied by the second, found applied by the last
    assert rows == [("record_click", "already", 2), ("unsubscribe", "already", 3)]
