"""Dagster's SQLite event log, writing a batch of events in one transaction per database.

Dagster's SQLite event log stores each event on its own: a new engine, a connection and a commit
on the run's database, and for an asset event the same again on the index database. A
single-run backfill over N days makes one materialization event per day and asset (and, without
DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS, one planned event per day and asset before its
first step), so a 1,000-day backfill of four day-partitioned assets spent minutes on these
commits alone. Dagster hands such events to `store_event_batch` when DAGSTER_EVENT_BATCH_SIZE is
set, but its SQLite storage (like every storage of Dagster's own) only loops over `store_event`.

This class writes the batch with the very statements `store_event` uses, in one transaction on
the run's database and one on the index database, so what is stored, and what the UI and
`get_materialized_partitions` read, is the same, event for event. Anything but a batch of one
run's asset events (the only kinds Dagster batches) goes through `store_event` unchanged.

`dagster.yaml` names this class as the instance's event log storage; `app.runner` sets the
batch size.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster._check as check
from dagster import Field, StringSource
from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage
from dagster._core.storage.sqlalchemy_compat import db_result
from dagster._serdes import ConfigurableClassData


def default_base_dir() -> str:
    """Where Dagster's default SQLite storage keeps the per-run event logs under DAGSTER_HOME."""
    home = os.environ.get("DAGSTER_HOME")
    check.invariant(home, "DAGSTER_HOME must be set for the event log's default base_dir")
    return str(Path(str(home)) / "history" / "runs")


class BatchedSqliteEventLogStorage(SqliteEventLogStorage):
    """SqliteEventLogStorage whose `store_event_batch` writes one transaction per database.

    Config: `base_dir` (optional): defaults to `$DAGSTER_HOME/history/runs`, where Dagster's
    default SQLite storage keeps the same files, so an existing instance keeps its history.
    """

    @classmethod
    def config_type(cls) -> Any:
        return {"base_dir": Field(StringSource, is_required=False)}

    @classmethod
    def from_config_value(  # ty: ignore[invalid-method-override]
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> BatchedSqliteEventLogStorage:
        base_dir = config_value.get("base_dir") or default_base_dir()
        return cls(base_dir=base_dir, inst_data=inst_data)

    def store_event_batch(self, events: Sequence[EventLogEntry]) -> None:
        events = list(events)
        if not events:
            return
        run_ids = {event.run_id for event in events}
        batchable = all(
            event.is_dagster_event and event.dagster_event_type in ASSET_EVENTS | ASSET_CHECK_EVENTS
            for event in events
        )
        if len(run_ids) != 1 or not batchable:
            for event in events:
                self.store_event(event)
            return
        (run_id,) = run_ids
        statements = [self.prepare_insert_event(event) for event in events]
        with self.run_connection(run_id) as conn:
            for statement in statements:
                conn.execute(statement)
        # mirrored in the cross-run index database, as store_event does, in one transaction
        asset_events: list[EventLogEntry] = []
        asset_ids: list[int] = []
        check_events: list[tuple[EventLogEntry, int]] = []
        with self.index_transaction() as conn:
            for event, statement in zip(events, statements, strict=True):
                with db_result(conn, statement) as result:
                    event_id = result.inserted_primary_key[0]
                check.invariant(event_id is not None, "Cannot store an event with a null id.")
                if event.dagster_event_type in ASSET_EVENTS:
                    asset_events.append(event)
                    asset_ids.append(event_id)
                else:
                    check_events.append((event, event_id))
            if asset_events:
                self._store_asset_event_tags(conn, asset_events, asset_ids)
                for event, event_id in _last_of_each_kind(asset_events, asset_ids):
                    self._store_asset_event(conn, event, event_id)
        for event, event_id in check_events:  # planned checks: one per check, not per day
            self.store_asset_check_event(event, event_id)


def _last_of_each_kind(
    events: Sequence[EventLogEntry], event_ids: Sequence[int]
) -> list[tuple[EventLogEntry, int]]:
    """The events whose asset-key row update survives the batch, in their order.

    `_store_asset_event` overwrites an asset's `last_*` columns (last materialization, last run,
    last event time) with what the event's kind sets, so applying, per asset, only the last event
    of each kind in the original order leaves every column as applying them all would: the last
    event to set a column is the last of its kind. A step's 1,000 day materializations then
    update the asset's row once instead of 1,000 times (each serialising the whole event again).
    """
    last: dict[tuple[str, str], int] = {}
    for index, event in enumerate(events):
        dagster_event = event.get_dagster_event()
        asset = dagster_event.asset_key.to_string() if dagster_event.asset_key else ""
        last[(asset, dagster_event.event_type_value)] = index
    return [(events[i], event_ids[i]) for i in sorted(last.values())]
