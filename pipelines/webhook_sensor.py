"""The webhook sensor of an integration whose source pushes changes (TX3): stored events -> a run.

The receiver (`memberflow receiver`) stores each accepted delivery's events durably; this sensor
looks every 15 seconds for events no run has consumed yet and, while no run of the same list is
in flight, asks for one sync run whose member extract re-reads just the records those events
name (run config `webhook_through: <last seq>`; the extract marks them consumed once landed). The
run key is `webhook-<last seq>`, so one batch of events starts one run however often the sensor
ticks. A run that failed (before or after landing) is asked for again a few times, then left to
the regular sensor's full pass. The regular interval sensor is unchanged: it is the
fallback when webhooks are late, lost or off.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg

from assets import naming
from memberflow import landing
from memberflow.config import Integration
from memberflow.mapping import available_entities
from memberflow.webhook_store import WebhookStore, webhook_capability
from pipelines import switch
from pipelines.sensors import ClientFactory, run_in_flight, source_clients

MIN_INTERVAL_SECONDS = 15
WILL_RETRY_TAG = "dagster/will_retry"  # set by Dagster on a failed run it will re-execute
MAX_ATTEMPTS = 3  # runs asked for one batch of events before leaving it to the regular sensor
WEBHOOK_TAG = "memberflow/webhook_through"  # the last event seq a webhook run re-reads

log = logging.getLogger(__name__)


def webhook_sensors(
    integration: Integration,
    job: dg.JobDefinition | dg.UnresolvedAssetJobDefinition,
    asset_selection: list[dg.AssetKey] | None = None,
) -> list[dg.SensorDefinition]:
    """The integration's webhook sensor, or none when its source has no webhooks on; its runs
    are of `job` restricted to `asset_selection`."""
    try:
        capability = webhook_capability(integration)
    except Exception as exc:  # a broken webhook setting must not take the definitions down
        log.warning(f"{integration.name}: no webhook sensor, its webhook setting failed: {exc}")
        return []
    if capability is None:
        return []
    return [build_webhook_sensor(integration, job, asset_selection)]


def extract_op_names(integration: Integration) -> list[str]:
    """The ops of the integration's extract assets (member entity and tracked events), each of
    whose config takes `webhook_through`: each re-reads the records its entity's events name."""
    members = sorted(available_entities(integration.source.kind).members)
    return [
        naming.raw_key(integration, entity).to_python_identifier()
        for entity in [*members, *integration.tracking]
    ]


def webhook_run_config(integration: Integration, through: int) -> dict[str, Any]:
    config = {"config": {"webhook_through": through}}
    return {"ops": {name: config for name in extract_op_names(integration)}}


class WebhookSubscriptionDisabled(RuntimeError):
    """The source stopped delivering webhooks (a subscription it disabled): the sensor's tick
    fails with this, so the Dagster UI shows it (and alerting on sensor failures fires)."""


PROBLEMS_EVERY_SECONDS = 300  # how often the subscriptions are looked at while all is well
PROBLEMS_RECHECK_SECONDS = 60  # while a problem stands, per sensor process
_LAST_PROBLEMS: dict[str, tuple[datetime, list[str]]] = {}  # data dir:source -> when, what


def build_webhook_sensor(
    integration: Integration,
    job: dg.JobDefinition | dg.UnresolvedAssetJobDefinition,
    asset_selection: list[dg.AssetKey] | None = None,
) -> dg.SensorDefinition:
    source_key = naming.source_resource_key(integration)
    source = source_clients(integration)

    @dg.sensor(
        name=f"{integration.name}_webhook_sensor",
        job=job,
        minimum_interval_seconds=MIN_INTERVAL_SECONDS,
        default_status=switch.sensor_status(integration),
        description=(
            f"Every {MIN_INTERVAL_SECONDS} s: when the receiver stored {integration.source.kind} "
            f"webhook events no run has consumed, run {job.name} on {integration.name}'s assets, "
            "re-reading just those records."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext):
        cursor = json.loads(context.cursor) if context.cursor else {}
        problems = _problems(context, source, source_key, cursor)
        if run_in_flight(context.instance, integration.list_key):
            return _alert_or(problems, f"a run on list {integration.list_key} is still in flight")
        requested = int(cursor.get("requested", 0))
        last = WebhookStore.for_integration(integration.name).last_pending_seq()
        if last is None or last <= requested:
            # Nothing new. The last webhook run's events were consumed once landed; if that
            # run failed later (delivery), it is asked for again: its re-read finds nothing
            # new and delivery sends what it landed, so a card waits no longer than that.
            if not requested or not _failed(context.instance, integration, requested):
                return _alert_or(problems, "no pending webhook events")
            last = requested
        run_key, attempts = _next_attempt(last, cursor)
        if run_key is None:
            return _alert_or(
                problems,
                f"the run for events through seq {last} failed {MAX_ATTEMPTS} times; "
                f"the regular sensor's pass picks their records up",
            )
        for line in problems:  # the stored events still go first; the next tick fails
            context.log.error(f"webhooks: {line}")
        if problems:
            cursor.pop("problems_checked_at", None)  # look again on the next tick
        context.update_cursor(
            json.dumps({**cursor, "requested": last, "attempts": attempts}, sort_keys=True)
        )
        now = datetime.now(UTC)
        return dg.RunRequest(
            run_key=run_key,
            run_config=webhook_run_config(integration, last),
            partition_key=now.date().isoformat() if integration.tracking else None,
            asset_selection=asset_selection,
            tags={
                naming.MODE_TAG: naming.INCREMENTAL,
                naming.LIST_TAG: integration.list_key,
                naming.INTEGRATION_TAG: integration.name,
                "memberflow/changed": "webhook",
                WEBHOOK_TAG: str(last),
            },
        )

    return _sensor


def _problems(
    context: dg.SensorEvaluationContext,
    source: ClientFactory,
    source_key: str,
    cursor: dict[str, Any],
) -> list[str]:
    """What the source says is wrong with its subscriptions (e.g. one it disabled after failed
    deliveries), looked at every PROBLEMS_EVERY_SECONDS while all is well, every tick after a
    problem (a failed tick keeps no cursor; at most every PROBLEMS_RECHECK_SECONDS per sensor
    process). A failed look is logged, not raised."""
    checked = cursor.get("problems_checked_at")
    now = datetime.now(UTC)
    if checked and now - datetime.fromisoformat(checked) < timedelta(
        seconds=PROBLEMS_EVERY_SECONDS
    ):
        return []
    key = f"{landing.data_dir()}:{source_key}"  # one installation's integration
    known = _LAST_PROBLEMS.get(key)
    if (
        known is not None
        and known[1]
        and now - known[0] < timedelta(seconds=PROBLEMS_RECHECK_SECONDS)
    ):
        return known[1]  # a failing tick keeps no cursor: don't ask the vendor every 15 s
    cursor["problems_checked_at"] = now.isoformat()
    try:
        client = source.client()
    except Exception as exc:  # e.g. a credential missing: the webhook events still go through
        context.log.warning(f"webhooks: could not look at the subscriptions: {exc}")
        return []
    try:
        problems = client.webhook_problems()
    except Exception as exc:  # the vendor may be down: the events still go through
        context.log.warning(f"webhooks: could not read the subscriptions' status: {exc}")
        problems = []
    finally:
        client.close()
    _LAST_PROBLEMS[key] = (now, problems)
    if not problems:
        context.update_cursor(json.dumps(cursor, sort_keys=True))
    return problems


def _alert_or(problems: list[str], reason: str) -> dg.SkipReason:
    """Skip with `reason`, unless the source reported problems: then fail the tick with them."""
    if problems:
        raise WebhookSubscriptionDisabled(
            "; ".join(problems) + " — fix the receiver, then run "
            "`memberflow receiver --register-url <public URL>` to register again"
        )
    return dg.SkipReason(reason)


def _failed(instance: dg.DagsterInstance, integration: Integration, through: int) -> bool:
    """Did the latest run asked for the events through `through` fail (or get canceled)?"""
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            tags={naming.INTEGRATION_TAG: integration.name, WEBHOOK_TAG: str(through)}
        ),
        limit=1,
    )
    bad = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
    # a failed run the daemon will retry (run_retries, the production profile) is not given up:
    # asking again beside the daemon's retry would run the same events twice
    retried = bool(runs) and runs[0].tags.get(WILL_RETRY_TAG) == "true"
    return bool(runs) and runs[0].status in bad and not retried


def _next_attempt(last: int, cursor: dict[str, Any]) -> tuple[str | None, int]:
    """(run key, attempts so far) for pending events through `last`; no key when given up.

    New events past the last request start a new batch; the same events asked for again mean
    their run failed, so it is retried under a new key.
    """
    if last > int(cursor.get("requested", 0)):
        return f"webhook-{last}", 1
    attempts = int(cursor.get("attempts", 1))
    if attempts >= MAX_ATTEMPTS:
        return None, attempts
    return f"webhook-{last}-retry{attempts}", attempts + 1
