"""The demo the way it ran before lists ran side by side, to set `memberflow demo` against in
one session: every list's runs one after another in this process, in file order, without the
demo-sized settings (app.demo.DEMO_SETTINGS_ENV). Prints each run's wall time and the total.

    PYTHONPATH=$PWD .venv/bin/python bench/demo_sequential.py
"""

from __future__ import annotations

import shutil
import time
import warnings
from datetime import date

import dagster as dg

from app import demo, runner
from memberflow.config import REPO_ROOT, Integration, load_all
from pipelines.factory import build_definitions
from sandbox.server import SandboxServer


def timed_run(
    defs: dg.Definitions, integration: Integration, instance: dg.DagsterInstance, label: str
) -> bool:
    """One run as the demo starts it (a backfill over the history for the initial import)."""
    start = integration.schedule.history_start if integration.tracking else None
    window = {"start": start, "end": date.today()} if start and label == "initial" else {}
    began = time.monotonic()
    result = runner.run_sync(defs, integration, instance, quiet=True, **window)
    print(f"{integration.name} {label} {time.monotonic() - began:.1f} s ok={result.success}")
    return result.success


def main() -> None:
    warnings.filterwarnings("ignore", message=".*is currently in beta.*")
    demo.DEMO_SETTINGS_ENV.clear()  # the vendors' default thresholds and poll intervals
    began = time.monotonic()
    shutil.rmtree(REPO_ROOT / "data" / "demo", ignore_errors=True)
    runner.ensure_dagster_home()
    with SandboxServer(seed=42, customers=300) as sandbox:
        demo.prepare_environment(sandbox.url, REPO_ROOT / "data" / "demo")
        integrations = load_all(demo.demo_files())
        defs = build_definitions(integrations)
        instance = dg.DagsterInstance.get()
        ok = True
        for integration in integrations:
            done = timed_run(defs, integration, instance, "initial")
            ok &= done
            if done and demo.feedback_webhook(integration) is not None:
                ok &= demo._feedback_scene(sandbox.url, defs, integration, instance)[1]
        for integration in integrations:
            ok &= timed_run(defs, integration, instance, "tick")
    print(f"sequential demo (as before) done in {time.monotonic() - began:.0f} s, ok={ok}")


if __name__ == "__main__":
    main()
