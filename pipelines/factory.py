"""The one factory: integration files in, Dagster Definitions out. Nothing vendor-specific here.

Per integration: extract and stage assets (group = integration name), a `sync_<name>` job and a
sensor. Per target list (integrations sharing kind, account and list id): the model and deliver
assets (group = the list key), shared by every integration on the list (X6).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets import naming
from assets.deliver import build_deliver_assets
from assets.deliver_events import build_events_delivered_asset
from assets.extract import build_extract_asset
from assets.model import build_model_assets
from assets.stage import build_stage_asset
from assets.write_back import build_feedback_asset, wants_feedback_asset
from memberflow import landing, model
from memberflow.config import Integration, target_mapping_of
from memberflow.mapping import available_entities, load_mapping
from pipelines.executor import executor_for_deployment
from pipelines.feedback_sensor import feedback_sensors
from pipelines.schedules import build_segment_schedule
from pipelines.sensors import build_sensor
from pipelines.webhook_sensor import webhook_sensors
from resources.mailer import ErrorReportMailer


def feed_of(integration: Integration) -> model.Feed:
    """The member mapping, the tracked event mappings and the target's field names of an
    integration, overrides applied."""
    entities = available_entities(integration.source.kind)
    where = f"{integration.source_file}: mapping"

    def mapping(entity: str):
        return load_mapping(
            integration.source.kind, entity, integration.mapping.get(entity), where=where
        )

    (members_entity,) = sorted(entities.members)
    return model.Feed(
        integration=integration.name,
        members=mapping(members_entity),
        events=tuple(mapping(e) for e in integration.tracking),
        target=target_mapping_of(integration),
        member_events=integration.member_events,
        shared_match_keys=integration.shared_match_keys,
    )


def warehouse_path(list_key: str) -> Path:
    return landing.data_dir() / "warehouse" / f"{list_key}.duckdb"


def build_definitions(integrations: list[Integration]) -> dg.Definitions:
    by_list: dict[str, list[Integration]] = defaultdict(list)
    for integration in integrations:
        by_list[integration.list_key].append(integration)
    assets: list[dg.AssetsDefinition] = []
    jobs, sensors, schedules = [], [], []
    resources: dict[str, object] = {"mailer": ErrorReportMailer()}
    for list_key, members in sorted(by_list.items()):
        feeds = [feed_of(i) for i in members]
        list_assets = [
            *build_model_assets(list_key, members, feeds),
            *build_deliver_assets(list_key, members, feeds),
            build_events_delivered_asset(list_key, members, feeds),
        ]
        assets += list_assets
        path = warehouse_path(list_key)
        path.parent.mkdir(parents=True, exist_ok=True)
        resources[naming.warehouse_resource_key(list_key)] = DuckDBResource(database=str(path))
        resources[naming.target_resource_key(list_key)] = members[0].target.resource()
        for integration, feed in zip(members, feeds, strict=True):
            own = _integration_assets(integration, feed)
            feedback = (
                build_feedback_asset(integration, feed)
                if wants_feedback_asset(integration)
                else None
            )
            assets += own + ([feedback] if feedback else [])
            resources[naming.source_resource_key(integration)] = integration.source.resource()
            job = _sync_job(integration, own + ([feedback] if feedback else []), list_assets)
            jobs.append(job)
            feedback_job = _feedback_job(integration, feedback) if feedback else None
            jobs += [feedback_job] if feedback_job else []
            sensors.append(build_sensor(integration, job))
            sensors += webhook_sensors(integration, job)
            sensors += feedback_sensors(integration, feedback_job)
            if schedule := build_segment_schedule(integration, job):
                schedules.append(schedule)
    return dg.Definitions(
        assets=assets,
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        resources=resources,
        executor=executor_for_deployment(),
    )


def _integration_assets(integration: Integration, feed: model.Feed) -> list[dg.AssetsDefinition]:
    partitions = naming.daily_partitions(integration) if feed.events else None
    out: list[dg.AssetsDefinition] = []
    for mapping in (feed.members, *feed.events):
        out.append(build_extract_asset(integration, mapping, partitions))
        out.append(build_stage_asset(integration, mapping, partitions))
    return out


def _feedback_job(integration: Integration, feedback: dg.AssetsDefinition):
    """The feedback asset alone: what the feedback sensor runs when webhooks brought some."""
    return dg.define_asset_job(
        name=f"feedback_{integration.name}",
        selection=dg.AssetSelection.assets(feedback),
        description=f"Carry {integration.name}'s list feedback into the warehouse and source",
        tags={naming.LIST_TAG: integration.list_key, naming.INTEGRATION_TAG: integration.name},
        executor_def=executor_for_deployment(),
    )


def _sync_job(
    integration: Integration,
    own: list[dg.AssetsDefinition],
    list_assets: list[dg.AssetsDefinition],
):
    """Extract -> stage -> model -> deliver for one integration, on its list's assets.

    In-process executor: the steps share one DuckDB file, which takes one writer at a time.
    """
    partitions = naming.daily_partitions(integration) if integration.tracking else None
    return dg.define_asset_job(
        name=naming.job_name(integration),
        selection=dg.AssetSelection.assets(*own, *list_assets),
        partitions_def=partitions,
        description=integration.description or f"Sync {integration.name}",
        tags={naming.LIST_TAG: integration.list_key, naming.INTEGRATION_TAG: integration.name},
        executor_def=executor_for_deployment(),
    )
