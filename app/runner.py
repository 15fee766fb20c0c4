"""Running an integration's sync job outside the UI (CLI, demo, tests) and summarising it.

A run here is a real Dagster run on the instance in DAGSTER_HOME (SQLite by default), so it
shows in the UI's run list like one launched there.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import dagster as dg

from assets import naming
from memberflow import recovery
from memberflow.config import REPO_ROOT, Integration
from pipelines.list_jobs import integration_selection, sync_job_name
from pipelines.sensors import run_in_flight

# Dagster's per-partition bookkeeping (issue 10). A single-run backfill over N days of four
# day-partitioned assets wrote 4N "planned" events before its first step and 4N materialization
# events, each its own SQLite commit (~40-60 ms here). The first variable makes the planned
# events one per asset, holding the range (the UI then shows a failed backfill's days as missing,
# not failed: see the README); the second lets Dagster hand a step's per-day materializations to
# the event log in batches, which memberflow.event_log (dagster.yaml) writes in one transaction.
# Set here, where every memberflow command opens the instance, so `memberflow sync`, the demo
# and `memberflow ui` (the webserver and daemon inherit this environment) all get them; a value
# already in the environment wins.
DAGSTER_BOOKKEEPING_ENV = {
    "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "1",
    "DAGSTER_EVENT_BATCH_SIZE": "500",
}


DATA_DIR_ENV = "MEMBERFLOW_DATA_DIR"


def ensure_data_dir() -> Path:
    """MEMBERFLOW_DATA_DIR as an absolute path, defaulting to the project's `data/` (not the
    shell's current folder): the CLI, the demo, and the UI's webserver, daemon and run workers
    (which inherit the environment) then read and write one data folder, the one whose cursors
    and warehouses match the instance's history."""
    path = Path(os.environ.get(DATA_DIR_ENV) or REPO_ROOT / "data").resolve()
    os.environ[DATA_DIR_ENV] = str(path)
    return path


def ensure_dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to `.dagster_home/` with the project's dagster.yaml in it, the
    shared data folder (ensure_data_dir), and the environment that keeps Dagster's per-partition
    bookkeeping cheap."""
    for name, value in DAGSTER_BOOKKEEPING_ENV.items():
        os.environ.setdefault(name, value)
    ensure_data_dir()
    home = Path(os.environ.get("DAGSTER_HOME") or REPO_ROOT / ".dagster_home").resolve()
    os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        shutil.copy(REPO_ROOT / "dagster.yaml", config)
    return home


class RunInFlight(RuntimeError):
    """Another run of the same list is queued or running (AF7): this one is not started."""


def run_sync(
    defs: dg.Definitions,
    integration: Integration,
    instance: dg.DagsterInstance,
    *,
    start: date | None = None,
    end: date | None = None,
    run_config: dict[str, Any] | None = None,
    quiet: bool = False,
    full: bool = False,
    console_level: str | None = None,
) -> dg.ExecuteInProcessResult:
    """One sync: a backfill over [start, end] when given, else an incremental run like a tick.
    It runs the integration's share of its list's job (its assets and the list's).

    `quiet` keeps Dagster's console lines to warnings and errors; `console_level` sets their
    level ("DEBUG" prints every event). The run's own log in the instance is complete either way.

    First recovers runs of this host whose process died (they would hold the list's pool slot
    forever), and tags this run with this process so a later call can do the same for it.
    """
    recovery.recover(instance)
    if run_in_flight(instance, integration.list_key):
        raise RunInFlight(
            f"a run on list {integration.list_key} is queued or running; two syncs of one list "
            "never run at once: wait for it (or cancel it in the Dagster UI), then sync again"
        )
    tags = {naming.LIST_TAG: integration.list_key, naming.INTEGRATION_TAG: integration.name}
    tags.update(recovery.run_tags())
    job = defs.resolve_job_def(sync_job_name(defs, integration))
    partition_key = None
    if start and end:
        tags["dagster/asset_partition_range_start"] = start.isoformat()
        tags["dagster/asset_partition_range_end"] = end.isoformat()
    else:
        if not full:  # a full sync reads the members whole, like a run launched in the UI
            tags[naming.MODE_TAG] = naming.INCREMENTAL
        today = datetime.now(UTC).date()  # partitions are UTC days, like the sensor's
        partition_key = today.isoformat() if integration.tracking else None
    config = dict(run_config or {})
    level = console_level or ("WARNING" if quiet else None)
    if level:  # the run's own log stays complete in the instance; only the console changes
        config["loggers"] = {"console": {"config": {"log_level": level}}}
    return job.execute_in_process(
        instance=instance,
        asset_selection=integration_selection(job, integration),
        tags=tags,
        partition_key=partition_key,
        run_config=config,
        raise_on_error=False,
    )


def optional_entities_config(integration: Integration) -> dict[str, Any]:
    """Run config that makes every extract of the integration read its optional entities too."""
    from pipelines.webhook_sensor import extract_op_names

    config = {"config": {"include_optional": True}}
    return {"ops": {name: config for name in extract_op_names(integration)}}


@dataclass
class RunSummary:
    """Figures of one run, read back from its materialization metadata."""

    run_id: str
    success: bool
    assets: dict[str, dict[str, Any]] = field(default_factory=dict)

    def get(self, suffix: str, key: str, default: Any = 0) -> Any:
        for name, meta in self.assets.items():
            if name.endswith(suffix):
                return meta.get(key, default)
        return default

    def rows(self, suffix: str) -> int:
        """Rows an asset handled in this run, whether or not it ran over a partition range."""
        for name, meta in self.assets.items():
            if name.endswith(suffix):
                # run totals first: dagster/row_count is rows in the table (of one day, on a
                # day partition's event), not what this run handled
                for key in ("run_records_landed", "run_rows_staged", "dagster/row_count"):
                    if key in meta:
                        return int(meta[key] or 0)
                return 0
        return 0

    def total(self, suffix: str, key: str) -> int:
        return sum(
            int(meta.get(key, 0) or 0)
            for name, meta in self.assets.items()
            if name.endswith(suffix)
        )


def summarise(result: dg.ExecuteInProcessResult) -> RunSummary:
    summary = RunSummary(run_id=result.run_id, success=result.success)
    for event in result.get_asset_materialization_events():
        mat = getattr(event.event_specific_data, "materialization", None)
        if mat is None:
            continue
        values = {k: _plain(v) for k, v in mat.metadata.items()}
        # a range's run figures are on one of its days (naming.result_metadata): merge them all
        summary.assets.setdefault(mat.asset_key.to_user_string(), {}).update(values)
    return summary


def _plain(value: Any) -> Any:
    raw = getattr(value, "value", value)
    return raw


def failure_messages(result: dg.ExecuteInProcessResult) -> list[str]:
    messages = []
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cause is not None:  # the vendor's or the mapping check's own words
                error = error.cause
            messages.append(f"{event.step_key}: {error.message.strip()}")
    return messages


def warning_messages(instance: dg.DagsterInstance, run_id: str) -> list[str]:
    """The warnings and errors a run's steps logged (not Dagster's own events), as
    `<step>: <message>`, in order, each once: the lines a quiet console leaves out."""
    messages: list[str] = []
    for entry in instance.all_logs(run_id):
        if entry.dagster_event is not None or entry.level < logging.WARNING:
            continue
        step = (entry.step_key or "").split("__")[-1]
        message = f"{step}: {entry.user_message}" if step else entry.user_message
        if message not in messages:
            messages.append(message)
    return messages


def quarantine_reasons(summary: RunSummary, key: str = "quarantine_reasons") -> dict[str, int]:
    """This run's staging problems by `<entity>.<reason>`: rows withheld (`quarantine_reasons`)
    or, with `key="field_drop_reasons"`, fields dropped from rows that went on."""
    reasons: dict[str, int] = defaultdict(int)
    for name, meta in summary.assets.items():
        if name.endswith("_staged"):
            for reason, count in (meta.get(key) or {}).items():
                reasons[f"{name.split('/')[-1].removesuffix('_staged')}.{reason}"] += count
    return dict(reasons)
