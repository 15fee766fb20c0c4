"""The one factory: integration files in, Dagster Definitions out. Nothing vendor-specific here.

Per integration: extract and stage assets (group = integration name) and its sensors. Per target
list (integrations sharing kind, account and list id): the model and deliver assets (group = the
list key), shared by every integration on the list (X6), and one sync job holding the list's
assets and all its integrations' (pipelines/list_jobs.py); each sensor run selects its own
integration's share of it.
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
from memberflow.warehouse import warehouse_config
from pipelines.executor import executor_for_deployment
from pipelines.feedback_sensor import feedback_sensors
from pipelines.list_jobs import INTEGRATIONS_METADATA, ListJob, plan_list_jobs
from pipelines.schedules import build_segment_schedule
from pipelines.sensors import build_sensor
from pipelines.watch import alert_sensors, freshness_checks
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
    mailer = ErrorReportMailer().get_resource_definition()  # one object: every list shares it
    for list_key, members in sorted(by_list.items()):
        feeds = [feed_of(i) for i in members]
        list_assets = [
            *build_model_assets(list_key, members, feeds),
            *build_deliver_assets(list_key, members, feeds),
            build_events_delivered_asset(list_key, members, feeds),
        ]
        own: dict[str, list[dg.AssetsDefinition]] = {}
        feedback: dict[str, dg.AssetsDefinition] = {}
        for integration, feed in zip(members, feeds, strict=True):
            own[integration.name] = _integration_assets(integration, feed)
            if wants_feedback_asset(integration):
                feedback[integration.name] = build_feedback_asset(integration, feed)
                own[integration.name].append(feedback[integration.name])
        bound = _with_list_resources(list_key, members, mailer, list_assets, own)
        list_assets, own = bound[: len(list_assets)], _regroup(own, bound[len(list_assets) :])
        assets += bound
        list_keys = [key for a in list_assets for key in a.keys]
        for plan in plan_list_jobs(list_key, members):
            job = _list_job(plan, [a for i in plan.integrations for a in own[i.name]], list_assets)
            jobs.append(job)
            for integration in plan.integrations:
                selection = [key for a in own[integration.name] for key in a.keys] + list_keys
                sensors.append(build_sensor(integration, job, selection))
                sensors += webhook_sensors(integration, job, selection)
                if integration.name in feedback:
                    feedback_keys = list(feedback[integration.name].keys)
                    sensors += feedback_sensors(integration, job, feedback_keys)
                if schedule := build_segment_schedule(integration, job, selection):
                    schedules.append(schedule)
    sensors += alert_sensors(by_list)
    return dg.Definitions(
        assets=assets,
        asset_checks=freshness_checks(by_list),
        jobs=jobs,
        sensors=sensors,
        schedules=schedules,
        executor=executor_for_deployment(),
    )


def _with_list_resources(
    list_key: str,
    members: list[Integration],
    mailer: dg.ResourceDefinition,
    list_assets: list[dg.AssetsDefinition],
    own: dict[str, list[dg.AssetsDefinition]],
) -> list[dg.AssetsDefinition]:
    """The list's assets, then its integrations' (in `own`'s order), each bound to the resources
    of its list: the warehouse, the target and the integrations' sources.

    Resources given to Definitions are merged into every asset, checking each against every
    resource: with 200 integrations (~1,600 assets, ~520 resources) that was about half of
    resolving the definitions (profiled, issue 12). Bound per list, an asset meets only its
    list's few. Sensors build their clients from the integration file (pipelines/sensors.py).
    """
    path = warehouse_path(list_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    resources: dict[str, object] = {
        "mailer": mailer,
        naming.warehouse_resource_key(list_key): DuckDBResource(
            database=str(path), connection_config=warehouse_config(path)
        ),
        naming.target_resource_key(list_key): members[0].target.resource(),
    }
    for integration in members:
        resources[naming.source_resource_key(integration)] = integration.source.resource()
    mine = [a for assets in own.values() for a in assets]
    return list(dg.with_resources([*list_assets, *mine], resources))


def _regroup(
    own: dict[str, list[dg.AssetsDefinition]], bound: list[dg.AssetsDefinition]
) -> dict[str, list[dg.AssetsDefinition]]:
    """`own` with its assets replaced by their bound copies (same order)."""
    out, at = {}, 0
    for name, assets in own.items():
        out[name], at = bound[at : at + len(assets)], at + len(assets)
    return out


def _integration_assets(integration: Integration, feed: model.Feed) -> list[dg.AssetsDefinition]:
    partitions = naming.daily_partitions(integration) if feed.events else None
    out: list[dg.AssetsDefinition] = []
    for mapping in (feed.members, *feed.events):
        out.append(build_extract_asset(integration, mapping, partitions))
        out.append(build_stage_asset(integration, mapping, partitions))
    return out


def _list_job(
    plan: ListJob,
    own: list[dg.AssetsDefinition],
    list_assets: list[dg.AssetsDefinition],
):
    """Extract -> stage -> model -> deliver for every integration of the job, on its list's
    assets. Sensors, schedules and `memberflow sync` run one integration's share of it
    (`asset_selection`); launched whole from the UI it syncs every integration of the job.

    The executor is the deployment's (pipelines/executor.py): in-process by default; on Celery
    every step that writes the list's DuckDB file holds the list's pool, one writer at a time.
    """
    names = [i.name for i in plan.integrations]
    described = [i.description or f"Sync {i.name}" for i in plan.integrations]
    return dg.define_asset_job(
        name=plan.name,
        selection=dg.AssetSelection.assets(*own, *list_assets),
        partitions_def=plan.partitions_def,
        description=f"List {plan.list_key}: " + "; ".join(described),
        tags={naming.LIST_TAG: plan.list_key},
        metadata={INTEGRATIONS_METADATA: names},
        executor_def=executor_for_deployment(),
    )
