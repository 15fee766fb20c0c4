"""The events_delivered asset of one target list: tracking events the list has not acknowledged,
sent in the target's bulk import (activity feed), in small batches booked before each send so a
lost answer never makes memberflow send an event twice.
"""

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets import metadata, naming
from assets.deliver import delivery_settings
from assets.run_config import config_of, schema_of
from memberflow import event_delivery, model, progress
from memberflow.config import Integration
from resources.target import TargetClient

UNCERTAIN_CHECK = "no_uncertain_event_batches"


class EventsDeliveredConfig(dg.Config):
    """Per-run override: send again the events held because an import answer was lost.

    Only after checking the list's activity feed: events the list did store are then duplicated.
    """

    resend_uncertain: bool = False


def build_events_delivered_asset(
    list_key: str, integrations: list[Integration], feeds: list[model.Feed]
) -> dg.AssetsDefinition:
    warehouse_key = naming.warehouse_resource_key(list_key)
    target_key = naming.target_resource_key(list_key)
    first = integrations[0]
    columns = model.event_columns(feeds)
    key = naming.list_asset_key(list_key, "events_delivered")

    @dg.asset(
        key=key,
        group_name=list_key,
        deps=[
            naming.list_asset_key(list_key, "tracking_events"),
            naming.list_asset_key(list_key, "members_delivered"),
        ],
        description=(
            "Tracking events not sent before, for members on the list, sent in the target's bulk "
            "import (activity feed) in small batches, each booked before it is sent; refused rows "
            "are quarantined with the target's reason. An import whose answer was lost is held, "
            "not resent: see the no_uncertain_event_batches check and resend_uncertain. "
            "dagster/row_count is every event the list acknowledged; *_this_run are this run's."
        ),
        required_resource_keys={warehouse_key, target_key},
        pool=naming.pool(list_key),
        kinds={first.target.kind},
        tags={"memberflow/stage": "deliver"},
        check_specs=[
            dg.AssetCheckSpec(
                UNCERTAIN_CHECK,
                asset=key,
                blocking=False,
                description=(
                    "Yellow: events are held because the list's answer to their import was "
                    "lost, so they may or may not be on it (held_events, held_sample). Check "
                    "the list's activity feed, then run with resend_uncertain: true to send "
                    "the ones missing."
                ),
            )
        ],
        config_schema=schema_of(EventsDeliveredConfig),
    )
    @progress.reported
    def _events_delivered(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        config = config_of(EventsDeliveredConfig, context)
        settings = delivery_settings(first, context.run_id)
        warehouse: DuckDBResource = getattr(context.resources, warehouse_key)
        client: TargetClient = getattr(context.resources, target_key).client()
        try:
            with warehouse.get_connection() as conn:
                report = event_delivery.deliver_events(
                    conn, client, settings, columns, resend_uncertain=config.resend_uncertain
                )
                shares = _sent_per_integration(conn, integrations, context.run_id)
        finally:
            client.close()
        for warning in report.warnings:
            context.log.warning(warning)
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": report.acknowledged,
                **report.metadata(),
                "sent": report.sent,  # kept for readers of earlier runs: the same as sent_this_run
                "target_has_activity_feed": client.capabilities.activity_feed,
                "api_calls": client.calls.total,
                "api_retries": client.calls.retries,
                "api_throttled": client.calls.throttled,
                **metadata.api_calls(client.calls.by_endpoint()),
                **shares,
                **client.calls.pacing(),  # throttled_waits, throttled_seconds
            },
            check_results=[
                dg.AssetCheckResult(
                    check_name=UNCERTAIN_CHECK,
                    passed=report.held == 0,
                    severity=dg.AssetCheckSeverity.WARN,
                    metadata={
                        "held_events": report.held,
                        "held_sample": ", ".join(report.held_sample),
                    },
                )
            ],
        )

    return _events_delivered


def _sent_per_integration(
    conn: object, integrations: list[Integration], run_id: str
) -> dict[str, int]:
    """`<integration>/events_sent_this_run` when several integrations feed the list."""
    if len(integrations) < 2:
        return {}
    sent = event_delivery.sent_by_integration(conn, run_id)  # type: ignore[arg-type]
    return metadata.per_integration(
        {i.name: {"events_sent_this_run": sent.get(i.name, 0)} for i in integrations}
    )
