"""Dagster's bookkeeping for ranges (issue 10): the instance memberflow opens (the project's
dagster.yaml and the environment `app.runner.ensure_dagster_home` sets) writes a range run's
per-day events in batches and its planned events once per asset, and daily backfills stay what
the UI shows: every day of a range marked materialized, a single day's run as before."""

from __future__ import annotations

import time
from collections import Counter
from datetime import date, timedelta

import dagster as dg
import pytest
from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from app import runner
from memberflow.event_log import BatchedSqliteEventLogStorage
from tests.harness import Harness


@pytest.fixture
def books(harness: Harness, tmp_path, monkeypatch) -> Harness:
    """The harness on an instance opened as every memberflow command opens it."""
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster_home"))
    for name in runner.DAGSTER_BOOKKEEPING_ENV:
        monkeypatch.delenv(name, raising=False)  # ensure_dagster_home's defaults, undone after
    runner.ensure_dagster_home()
    instance = dg.DagsterInstance.get()
    harness.instance = instance
    yield harness
    instance.dispose()


def _partitioned_keys(harness: Harness) -> list[dg.AssetKey]:
    assert harness.defs is not None
    specs = harness.defs.resolve_all_asset_specs()
    return [s.key for s in specs if s.partitions_def is not None]


def _days(start: date, end: date) -> set[str]:
    return {(start + timedelta(days=i)).isoformat() for i in range((end - start).days + 1)}


def test_a_range_run_marks_every_day_materialized_with_one_planned_event_per_asset(books):
    assert isinstance(books.instance.event_log_storage, BatchedSqliteEventLogStorage)
    books.load("demo_flexpos")
    end = date.today()
    start = end - timedelta(days=59)
    run = books.backfill("demo_flexpos", days=59)
    assert run.success, run.failures

    keys = _partitioned_keys(books)
    assert len(keys) == 4  # journals and tickets, raw and staged
    for key in keys:
        marked = books.instance.get_materialized_partitions(key)
        assert _days(start, end) <= marked, key
        latest = books.instance.get_latest_materialization_event(key)
        assert latest is not None and latest.asset_materialization is not None
        assert latest.asset_materialization.partition == end.isoformat()  # the last one written
        middle = (start + timedelta(days=30)).isoformat()
        records = books.instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[middle]), limit=5
        ).records
        assert [r.run_id for r in records] == [run.run_id]  # found by its day (event tags)

    events = [e.dagster_event for e in books.instance.all_logs(run.run_id) if e.dagster_event]
    kinds = Counter(e.event_type for e in events)
    planned = Counter(
        e.asset_key
        for e in events
        if e.event_type == DagsterEventType.ASSET_MATERIALIZATION_PLANNED
    )
    # one planned event per asset (the range in it), not one per day and asset
    assert set(keys) <= set(planned) and set(planned.values()) == {1}
    assert kinds[DagsterEventType.ASSET_MATERIALIZATION] >= 4 * 60
    # the run summary still reads the run's figures
    assert run.get("journals_raw", "run_records_landed") > 0
    assert run.get("journals_staged", "run_rows_staged") > 0


def test_a_single_day_run_and_a_tick_still_work(books):
    books.load("demo_flexpos")
    day = date.today() - timedelta(days=3)
    result = runner.run_sync(
        books.defs, books.integration("demo_flexpos"), books.instance, start=day, end=day
    )
    assert result.success, runner.failure_messages(result)
    for key in _partitioned_keys(books):
        assert day.isoformat() in books.instance.get_materialized_partitions(key)
    tick = books.tick("demo_flexpos")
    assert tick.success, tick.failures


def _materializations(run_id: str, count: int, metadata: dict) -> list[EventLogEntry]:
    entries = []
    for i in range(count):
        key = dg.AssetKey(["a"]) if i % 2 else dg.AssetKey(["b"])
        mat = dg.AssetMaterialization(asset_key=key, partition=f"p{i}", metadata=metadata)
        event = DagsterEvent(
            DagsterEventType.ASSET_MATERIALIZATION.value,
            "job",
            event_specific_data=StepMaterializationData(mat),
        )
        entries.append(
            EventLogEntry(
                error_info=None,
                level=20,
                user_message="",
                run_id=run_id,
                timestamp=time.time() + i * 1e-3,
                dagster_event=event,
                job_name="job",
            )
        )
    return entries


def test_a_batch_is_stored_as_dagsters_one_by_one_writes_store_it(tmp_path):
    """Same rows either way: partitions, per-partition lookups, the asset's latest event."""
    plain = SqliteEventLogStorage(str(tmp_path / "plain"))
    batched = BatchedSqliteEventLogStorage(str(tmp_path / "batched"))
    events = _materializations("run1", 40, {"rows": 3, "day_total": 7})
    for event in events:
        plain.store_event(event)
    batched.store_event_batch(events)
    for key in (dg.AssetKey(["a"]), dg.AssetKey(["b"])):
        assert plain.get_materialized_partitions(key) == batched.get_materialized_partitions(key)
        assert len(batched.get_materialized_partitions(key)) == 20
        for storage in (plain, batched):
            (record,) = storage.fetch_materializations(
                dg.AssetRecordsFilter(
                    asset_key=key, asset_partitions=["p7" if key.path == ["a"] else "p8"]
                ),
                limit=5,
            ).records
            assert record.asset_materialization.metadata["rows"].value == 3
        (plain_record,) = plain.get_asset_records([key])
        (batched_record,) = batched.get_asset_records([key])
        assert (
            plain_record.asset_entry.last_materialization.asset_materialization.partition
            == batched_record.asset_entry.last_materialization.asset_materialization.partition
        )
        assert plain_record.asset_entry.last_run_id == batched_record.asset_entry.last_run_id
    assert len(plain.get_logs_for_run("run1")) == len(batched.get_logs_for_run("run1")) == 40
