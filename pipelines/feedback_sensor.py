"""The feedback sensor of an integration whose list pushes feedback (webhooks: unsubscribes,
clicks, bounces): stored feedback -> a run of the integration's feedback asset.

The receiver stores each accepted feedback delivery durably (memberflow/webhook_store.py); every
15 seconds this sensor looks for feedback no run has taken yet and, while no run of the same list
is in flight (AF7: never two syncs of one integration at once), asks for one run of the list's
sync job restricted to the integration's feedback asset, which carries it into the warehouse and,
for a two-way integration, into the source (assets/write_back.py). The run key is
`feedback-<last seq>`, so one batch starts one run however often the sensor ticks. The regular
sync run handles the same feedback too (it runs the same asset last), so a feedback run that
fails leaves nothing lost.
"""

from __future__ import annotations

import logging

import dagster as dg

from assets import naming
from memberflow.config import Integration
from memberflow.webhook_store import WebhookStore, feedback_webhook
from pipelines import switch
from pipelines.sensors import run_in_flight

MIN_INTERVAL_SECONDS = 15

log = logging.getLogger(__name__)


def feedback_sensors(
    integration: Integration,
    job: dg.JobDefinition | dg.UnresolvedAssetJobDefinition,
    feedback_keys: list[dg.AssetKey],
) -> list[dg.SensorDefinition]:
    """The integration's feedback sensor (running `job` on `feedback_keys` alone), or none when
    its list pushes no feedback."""
    try:
        hook = feedback_webhook(integration)
    except Exception as exc:  # a broken setting must not take the definitions down
        log.warning(f"{integration.name}: no feedback sensor, its webhook setting failed: {exc}")
        return []
    return [] if hook is None else [build_feedback_sensor(integration, job, feedback_keys)]


def build_feedback_sensor(
    integration: Integration,
    job: dg.JobDefinition | dg.UnresolvedAssetJobDefinition,
    feedback_keys: list[dg.AssetKey],
) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{integration.name}_feedback_sensor",
        job=job,
        minimum_interval_seconds=MIN_INTERVAL_SECONDS,
        default_status=switch.sensor_status(integration),
        description=(
            f"Every {MIN_INTERVAL_SECONDS} s: when the receiver stored {integration.target.kind} "
            f"feedback (unsubscribes, clicks, bounces) no run has taken, run {job.name} on "
            f"{integration.name}'s feedback asset alone."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext):
        if run_in_flight(context.instance, integration.list_key):
            return dg.SkipReason(f"a run on list {integration.list_key} is still in flight")
        last = WebhookStore.for_feedback(integration.name).last_pending_seq()
        if last is None:
            return dg.SkipReason("no pending feedback")
        return dg.RunRequest(
            run_key=f"feedback-{last}",
            asset_selection=feedback_keys,
            tags={
                naming.LIST_TAG: integration.list_key,
                naming.INTEGRATION_TAG: integration.name,
                "memberflow/changed": "feedback",
            },
        )

    return _sensor
