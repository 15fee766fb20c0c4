"""The events_delivered asset of one target list: tracking events the list has not acknowledged,
sent in the target's bulk import (activity feed).
"""

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets import naming
from assets.deliver import delivery_settings
from memberflow import event_delivery, model
from memberflow.config import Integration
from resources.base import TargetClient


def build_events_delivered_asset(
    list_key: str, integrations: list[Integration], feeds: list[model.Feed]
) -> dg.AssetsDefinition:
    warehouse_key = naming.warehouse_resource_key(list_key)
    target_key = naming.target_resource_key(list_key)
    first = integrations[0]
    columns = model.event_columns(feeds)

    @dg.asset(
        key=naming.list_asset_key(list_key, "events_delivered"),
        group_name=list_key,
        deps=[
            naming.list_asset_key(list_key, "tracking_events"),
            naming.list_asset_key(list_key, "members_delivered"),
        ],
        description=(
            "Tracking events not sent before, for members on the list, sent in the target's bulk "
            "import (activity feed); refused rows are quarantined with the target's reason."
        ),
        required_resource_keys={warehouse_key, target_key},
        pool=naming.pool(list_key),
        kinds={first.target.kind},
        tags={"memberflow/stage": "deliver"},
    )
    def _events_delivered(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        settings = delivery_settings(first, context.run_id)
        warehouse: DuckDBResource = getattr(context.resources, warehouse_key)
        client: TargetClient = getattr(context.resources, target_key).client()
        try:
            with warehouse.get_connection() as conn:
                counts = event_delivery.deliver_events(conn, client, settings, columns)
        finally:
            client.close()
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": counts["sent"],
                **counts,
                "api_calls": client.calls.total,
            }
        )

    return _events_delivered
