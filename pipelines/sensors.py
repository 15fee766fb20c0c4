"""The five-minute sensor of an integration (C4): decides whether to run, never does the work.

Each tick makes one cheap probe per entity ("anything changed after the committed cursor?") and
one on the target list (unsubscribes, bounces). The cursors are the opaque strings the extract
assets committed after landing their pages, handed back to the source client as they are, so the
cursor never runs ahead of data on disk. A tick is skipped while a run on the same list is queued
or running (AF7); first, runs of this host whose process died are failed and their pool slots
freed (memberflow.recovery), so a killed run never blocks the list.
"""

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from assets import freshness, naming
from memberflow import landing, recovery
from memberflow.config import Integration
from memberflow.mapping import available_entities
from pipelines import switch
from resources.target import TargetClient

IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


def run_in_flight(instance: dg.DagsterInstance, list_key: str) -> bool:
    runs = instance.get_run_records(
        filters=dg.RunsFilter(statuses=IN_FLIGHT, tags={naming.LIST_TAG: list_key}), limit=1
    )
    return bool(runs)


class ClientFactory:
    """A vendor client per tick, from the integration file's resource, built on the first tick.

    Sensors take no Dagster resources: resources given to Definitions are merged into every
    asset (pipelines/factory.py binds them per list instead), and a tick needs only its own
    integration's clients. Env vars are read at each tick, like Dagster would for a resource.
    """

    def __init__(self, build: Callable[[], dg.ConfigurableResource]) -> None:
        self._build = build
        self._resource: dg.ConfigurableResource | None = None

    def client(self) -> Any:
        if self._resource is None:
            self._resource = self._build()
        return self._resource.process_config_and_initialize().client()


def source_clients(integration: Integration) -> ClientFactory:
    return ClientFactory(integration.source.resource)


def target_clients(integration: Integration) -> ClientFactory:
    return ClientFactory(integration.target.resource)


def build_sensor(
    integration: Integration,
    job: "dg.JobDefinition | dg.UnresolvedAssetJobDefinition",
    asset_selection: list[dg.AssetKey] | None = None,
) -> dg.SensorDefinition:
    """The integration's change sensor; its runs are of `job` restricted to `asset_selection`
    (the integration's assets and its list's, when the job is its list's)."""
    source, target_of = source_clients(integration), target_clients(integration)
    entities = sorted(available_entities(integration.source.kind).members) + list(
        integration.tracking
    )

    @dg.sensor(
        name=f"{integration.name}_sensor",
        job=job,
        minimum_interval_seconds=integration.schedule.interval_minutes * 60,
        default_status=switch.sensor_status(integration),
        description=(
            f"Every {integration.schedule.interval_minutes} min: probe {integration.source.kind} "
            f"for changes since the committed cursor and the list for unsubscribes; run "
            f"{job.name} on {integration.name}'s assets when anything changed."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext):
        recovered = recovery.recover(context.instance, sweep_landing=False, shared_instance=False)
        for line in recovered.lines():
            context.log.warning(f"recovered: {line}")
        if run_in_flight(context.instance, integration.list_key):
            return dg.SkipReason(f"a run on list {integration.list_key} is still in flight")
        target = target_of.client()  # one client for the tick
        try:
            if spent := _month_budget_spent(target):
                return dg.SkipReason(spent)
            cursor = json.loads(context.cursor) if context.cursor else {}
            marks = {e: landing.read_source_cursor(integration.name, e) for e in entities}
            now = datetime.now(UTC)
            changed = _probe_source(source, marks)
            checked = _latest(
                cursor.get("target_checked_at"), last_run_end(context.instance, integration)
            )
            if _probe_target(target, checked):
                changed.append("list")
        finally:
            target.close()
        new_cursor = {
            "high_water_marks": marks,
            "target_checked_at": now.isoformat(),
        }
        context.update_cursor(json.dumps(new_cursor, sort_keys=True))
        if not changed:  # the list is in sync: that keeps its freshness check green
            return dg.SensorResult(
                skip_reason="nothing changed since the last committed cursor",
                asset_events=freshness.in_sync_observations(
                    integration, f"{integration.name}_sensor"
                ),
            )
        return dg.RunRequest(
            run_key=f"{integration.name}:{now.isoformat()}",
            partition_key=now.date().isoformat() if integration.tracking else None,
            asset_selection=asset_selection,
            tags={
                naming.MODE_TAG: naming.INCREMENTAL,
                naming.LIST_TAG: integration.list_key,
                naming.INTEGRATION_TAG: integration.name,
                "memberflow/changed": ",".join(changed),
            },
        )

    return _sensor


def last_run_end(instance: dg.DagsterInstance, integration: Integration) -> datetime | None:
    """When the last finished run on the list ended: list changes before that are our own
    writes (or were pulled back by that run), so the probe need not look before it."""
    records = instance.get_run_records(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE],
            tags={naming.LIST_TAG: integration.list_key},
        ),
        limit=1,
    )
    if not records or records[0].end_time is None:
        return None
    return datetime.fromtimestamp(records[0].end_time, UTC)


def _latest(checked_at: str | None, run_end: datetime | None) -> str | None:
    if checked_at is None:
        return None  # first tick: always look at the list once
    marks = [datetime.fromisoformat(checked_at)] + ([run_end] if run_end else [])
    return max(marks).isoformat()


def _probe_source(source: ClientFactory, cursors: dict[str, str | None]) -> list[str]:
    """Entities without a cursor yet, or whose source says something changed after it (the
    client knows what its cursor means, and that what is at it is already landed)."""
    client = source.client()
    try:
        return [
            entity
            for entity, cursor in cursors.items()
            if cursor is None or client.has_changes(entity, cursor)
        ]
    finally:
        client.close()


def _probe_target(client: TargetClient, checked_at: str | None) -> bool:
    if checked_at is None:
        return True
    if client.capabilities.feedback != "polled":
        return False  # unsubscribes come back by push or not at all: nothing to probe
    return client.has_member_changes(_just_after(datetime.fromisoformat(checked_at)))


def _month_budget_spent(client: TargetClient) -> str | None:
    """Why no run may start: the list's monthly call budget is spent (AF8); None otherwise.
    Read from memberflow's own count (no API call)."""
    budget = client.rate_budget()
    if budget is None or budget.window != "month" or budget.left > 0:
        return None
    return (
        f"{client.label}: the monthly budget of {budget.limit} API calls is spent "
        f"({budget.used} this month); no run starts before the month turns"
    )


def _just_after(mark: datetime) -> datetime:
    """The probe asks for changes after the mark: the vendors' filters are inclusive and count
    whole seconds (FP-A3, TM-A2, HL-A5), and what happened at the mark is already handled. A
    change in that same second is picked up by the next run, whose reads overlap."""
    return mark + timedelta(seconds=1)
